"""The gate between training and TF Serving: only a model that loads, answers and is no worse is
published. `python -m catdog.publish --candidate=DIR --model_base_path=DIR [--data_dir=DIR]`
runs it on any candidate; `python -m catdog.train` runs it after every training (--publish).

A candidate (`<export_dir>/candidates/<model_name>/<K>/`, catdog/versions.py) goes through:
1. infra validation (catdog/infra_validator.py): loaded, warmed and asked as the server would,
   in a process of its own; any failure refuses it (exit status 4) in one line;
2. blessing, on photos that chose nothing (catdog/evaluation.py; the selection photos only when
   a run kept none, said on screen, in gate.json and report.html). The candidate's answers come
   from the SavedModel that will be served; each version's answers are kept in its folder, so
   the baseline (the newest published version that loads) is evaluated once in its life. It
   passes when its accuracy is at least the baseline's minus --gate_tolerance (and at least
   --gate_min_accuracy); otherwise it is held back (exit status 3). --force skips the
   comparison, never the infra validation;
3. the push (`versions.push`): one rename into the base path, then the .h5.

The decision, both models' figures, the photos and the export's precision choice go to
`gate.json` in the candidate's folder, the reports to `<K>.evaluation/` (catdog/report.py).
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from catdog import atomic, evaluation, export, images, inference, report, versions
from catdog.errors import CatdogError
from catdog.infra_validator import reference_model, validated_answers

PUBLISHED, KEPT, HELD_BACK, REFUSED = "published", "kept", "held_back", "refused"
# Exit statuses: a CI/CD script tells "trained, not better" (3) and "does not load or answer"
# (4) from success (0) and from errors (2: bad flags, a folder in use...).
EXIT_STATUS = {PUBLISHED: 0, KEPT: 0, HELD_BACK: 3, REFUSED: 4}
HEAT_MAPS = 16  # Grad-CAM maps in the candidate's report (evaluate --max_explained draws more)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the gate decided for one candidate, and why (also written as gate.json)."""

    outcome: str  # PUBLISHED, KEPT (--publish=never), HELD_BACK or REFUSED
    reason: str  # one line, printed on screen
    candidate: str
    version: Path | None = None  # the version folder, when published
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        return report.finite({"decision": self.outcome, "reason": self.reason,
                              "candidate": self.candidate,
                              "published_version": str(self.version) if self.version else None,
                              **self.record})


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """How strict the gate is (the --gate_* flags, --force, --keep_versions)."""

    tolerance: float = 0.0
    min_accuracy: float = 0.0
    force: bool = False
    keep_versions: int = 0
    batch_size: int = 32
    max_image_pixels: int = images.MAX_IMAGE_PIXELS


def _bless(candidate: dict[str, Any], base: dict[str, Any] | None, base_name: str,
           tolerance: float, min_accuracy: float, force: bool) -> tuple[bool, str]:
    """(publish?, why) from the two models' figures."""
    accuracy = candidate["accuracy"]
    of = f"on {candidate['images']} images"
    if force:
        return True, f"accuracy {accuracy:.4f} {of}, not compared (--force)"
    if base is None:
        passed, why = True, f"accuracy {accuracy:.4f} {of}; no published version to compare with"
    else:
        floor = base["accuracy"] - tolerance
        passed = accuracy >= floor
        why = (f"accuracy {accuracy:.4f} {'>=' if passed else '<'} {base_name}'s "
               f"{base['accuracy']:.4f} - tolerance {tolerance:g} {of}")
    if min_accuracy and accuracy < min_accuracy:
        passed, why = False, f"{why}, below --gate_min_accuracy={min_accuracy:g}"
    return passed, why


def gate(candidate: export.Exports, layout: versions.Layout, photos: evaluation.Photos,
         reference: inference.Classifier, settings: GateSettings = GateSettings()) -> Decision:
    """Infra validation, blessing and the push (module docstring) of one candidate;
    `reference` is the candidate in-process (the trained Keras model, or its .h5)."""
    start = time.perf_counter()
    saved_model = Path(candidate.saved_model)
    if not (saved_model / "saved_model.pb").is_file():
        raise CatdogError(f"--candidate={saved_model} is not a SavedModel folder (one holding "
                          "saved_model.pb)")
    if saved_model.parent == layout.base:
        raise CatdogError(f"{saved_model} is already published under {layout.base}")
    if not len(photos.files):
        raise CatdogError(f"{photos.source} holds no usable photos to judge the model on")
    logging.info("the gate judges on %s", photos.describe())
    with layout.holding_lock(versions.WRITER_WAIT_SECONDS):
        versions.settle_h5(layout)
        atomic.remove_leftovers(saved_model)  # a gate record a killed gate left half-written
        record = {**{k: v for k, v in versions.gate_record(saved_model).items()
                     if k == "rolled_back"},
                  "candidate": str(saved_model), "h5": str(candidate.h5),
                  "base_path": str(layout.base), "photos": photos.source,
                  "photo_role": photos.role, "photo_count": len(photos.files),
                  "photos_described": photos.describe(),
                  "skipped_photos": [dataclasses.asdict(b) for b in photos.skipped],
                  "settings": dataclasses.asdict(settings), "time": versions.now(),
                  "export_precision": versions.source_of(saved_model).get("precision_choice")}
        failure, record["infra_validation"], answers = validated_answers(
            saved_model, photos, reference, settings.batch_size, settings.max_image_pixels)
        if failure:
            decision = Decision(REFUSED, f"refused {saved_model}: infra validation failed: "
                                f"{failure}", str(saved_model), record=record)
        else:
            decision = _blessed(candidate, layout, photos, answers, settings, record, reference)
        decision.record["seconds"] = round(time.perf_counter() - start, 2)
        if decision.outcome != PUBLISHED:
            versions.write_gate_record(saved_model, decision.to_dict())
            return decision
        version = versions.push(saved_model, layout, decision.to_dict())
        if settings.keep_versions:
            versions.prune(layout.base, settings.keep_versions)
        return dataclasses.replace(decision, version=version,
                                   reason=f"published {version} ({decision.reason})")


def _blessed(candidate: export.Exports, layout: versions.Layout, photos: evaluation.Photos,
             answers: np.ndarray, settings: GateSettings, record: dict[str, Any],
             reference: inference.Classifier) -> Decision:
    names, labels, saved_model = reference.class_names, np.array(photos.files.labels), \
        Path(candidate.saved_model)
    model = evaluation.model_result("model", saved_model, names, answers, labels)
    record["candidate_figures"], record["baseline"] = model.metrics, None
    base_version, base_answers, record["damaged_versions"] = (
        (None, None, []) if settings.force else evaluation.baseline_answers(
            layout.base, photos.files, settings.batch_size, settings.max_image_pixels))
    held = f"it stays a candidate (to publish it anyway: python -m catdog.publish " \
           f"--candidate={saved_model} --model_base_path={layout.base} --force)"
    base_names = inference.labels_of(base_version) if base_version is not None else names
    if list(base_names) != list(names):
        return Decision(HELD_BACK, (
            f"held back {saved_model}: the published version {base_version} knows classes "
            f"{base_names}, the candidate {list(names)}; {held}"), str(saved_model), record=record)
    base = None
    if base_version is not None:
        base = evaluation.model_result("baseline", base_version, names, base_answers, labels)
        record["baseline"] = {"version": str(base_version), **base.metrics}
    folder = saved_model.parent / f"{saved_model.name}.evaluation"
    maps = evaluation.heat_maps(candidate.h5 if candidate.h5.is_file() else saved_model,
                                photos.files, answers, HEAT_MAPS, settings.max_image_pixels)
    report.write_reports(folder, model, photos, base, maps)
    record["evaluation"] = str(folder)
    passed, why = _bless(model.metrics, base.metrics if base else None,
                         f"version {base_version.name}" if base_version else "",
                         settings.tolerance, settings.min_accuracy, settings.force)
    why += "".join(f"; version {d['version']} cannot be loaded ({d['reason']})"
                   for d in record["damaged_versions"])
    if photos.role != evaluation.EVALUATION:
        why += "; judged on the SELECTION photos, which also chose the model"
    if passed:
        return Decision(PUBLISHED, why, str(saved_model), record=record)
    return Decision(HELD_BACK, f"held back {saved_model}: {why}; {held}", str(saved_model),
                    record=record)


def already_published(candidate: export.Exports) -> Decision:
    """A rerun of a run whose model an earlier start published."""
    return Decision(PUBLISHED, f"{candidate.saved_model} already holds this run's model",
                    str(candidate.saved_model), version=Path(candidate.saved_model))


def kept(candidate: export.Exports) -> Decision:
    """--publish=never: the candidate stays where it is, ungated."""
    return Decision(KEPT, f"kept candidate {candidate.saved_model} unpublished (--publish=never; "
                    "python -m catdog.publish gates it)", str(candidate.saved_model))


def publish_candidate(candidate_dir: str, base_path: str, data_dir: str = "",
                      settings: GateSettings = GateSettings()) -> Decision:
    """Gates an existing candidate folder: its .h5 beside it (`<K>.h5`) is the in-process model
    when there is one, else the SavedModel itself, loaded in-process with TensorFlow. It is
    judged on the evaluation photos of its run (`--data_dir`: of that folder instead)."""
    saved_model = Path(candidate_dir).absolute()
    layout = versions.Layout.of_base_path(base_path)
    if published := versions.finish_publish(layout, saved_model):  # a killed publish, rerun
        return already_published(export.Exports(h5=layout.h5, saved_model=published))
    if not (saved_model / "saved_model.pb").is_file():
        raise CatdogError(f"--candidate={candidate_dir} is not a SavedModel folder (one holding "
                          "saved_model.pb)")
    h5 = versions.candidate_h5(saved_model)
    reference, problem = reference_model(saved_model, h5)
    if problem:
        decision = Decision(REFUSED, f"refused {saved_model}: {problem}", str(saved_model))
        versions.write_gate_record(saved_model, decision.to_dict())
        return decision
    photos = evaluation.photos_to_judge(versions.source_of(saved_model), data_dir,
                                        reference.class_names, reference.image_size,
                                        settings.max_image_pixels)
    return gate(export.Exports(h5=h5, saved_model=saved_model), layout, photos, reference,
                settings)


def main(argv: Sequence[str]) -> int:
    from absl import flags

    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}")
    f = flags.FLAGS
    layout = versions.Layout.of_base_path(f.model_base_path)
    if f.rollback:
        version, moved, newest = versions.rollback(layout)
        print(f"rolled back version {version.name}: it is now the candidate {moved}; "
              f"{newest} is the newest version")
        return 0
    if not f.candidate:
        raise CatdogError("--candidate is required (a candidate SavedModel folder), or pass "
                          "--rollback")
    decision = publish_candidate(f.candidate, f.model_base_path, f.data_dir, GateSettings(
        f.gate_tolerance, f.gate_min_accuracy, f.force, f.keep_versions, f.batch_size,
        f.max_image_pixels))
    print(decision.reason)
    return decision.exit_status


def run() -> None:
    """The `catdog-publish` console script (and `python -m catdog.publish`)."""
    from catdog import cli

    cli.run_command("publish", main)


if __name__ == "__main__":
    run()
