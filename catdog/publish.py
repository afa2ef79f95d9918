"""The gate between training and TF Serving: only a model that loads, answers and is no worse is
published. `python -m catdog.publish --candidate=DIR --model_base_path=DIR [--data_dir=DIR]`
runs it on any candidate; `python -m catdog.train` runs it after every training (--publish).

A candidate (`<export_dir>/candidates/<model_name>/<K>/`, written by `export.export_candidate`)
goes through, in order:
1. infra validation, in a fresh process that imports no training code
   (`catdog.serving.infra_validation`): the signature contract, a load as the server loads a
   servable, its warm-up records, and one real image through `serving_default`, `predict_pixels`
   and `classify`, whose answers must equal the in-process model's to within 1e-5. Any failure
   refuses the candidate (exit status 4);
2. blessing: the candidate and the baseline (the newest published version that loads) are
   evaluated on the same photos with catdog's evaluator (`figures.compute_metrics`, the figures
   `catdog.evaluate` prints). The candidate passes when its accuracy is at least the baseline's
   minus --gate_tolerance and at least --gate_min_accuracy when that is set; otherwise it is held
   back (exit status 3). With no baseline, infra validation (and --gate_min_accuracy) decides;
   --force skips the comparison, never the infra validation;
3. publishing: one rename of the candidate folder to `<base>/<N>` (so a poll sees no version or
   the whole of it), then its .h5 copied over `<export_dir>/<model_name>.h5`.

The decision, both models' figures and the reason go to `gate.json` in the candidate's folder
(which becomes the version folder when published). Publishing and rolling back hold a lock on
the export folder, so a second publisher is refused in one line; a kill at any moment leaves the
base path as it was or with the whole new version, and the next publisher finishes a .h5 copy
that a kill interrupted.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import contextlib
import dataclasses
import datetime
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from catdog import atomic, data, evaluate, export, figures, images, inference
from catdog.errors import CatdogError

PUBLISHED, KEPT, HELD_BACK, REFUSED = "published", "kept", "held_back", "refused"
# What each outcome exits with, so a CI/CD script tells "trained, not better" (3) and "does
# not load or answer" (4) from success (0) and from errors (2: bad flags, a folder in use...).
EXIT_STATUS = {PUBLISHED: 0, KEPT: 0, HELD_BACK: 3, REFUSED: 4}
GATE_FILE = "gate.json"
ANSWER_TOLERANCE = 1e-5  # served answers against the in-process model's
VALIDATOR_TIMEOUT_SECONDS = 600


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
        return {"decision": self.outcome, "reason": self.reason, "candidate": self.candidate,
                "published_version": str(self.version) if self.version else None,
                **self.record}


@dataclasses.dataclass(frozen=True)
class Photos:
    """The photos both models are judged on, and where they came from."""

    files: data.ImageFiles
    source: str
    skipped: tuple[data.BadImage, ...] = ()


# --- 1. infra validation -----------------------------------------------------------------------

# The validator starts in the folder that holds the catdog package: started in the folder that
# holds a clone named catdog, `-m catdog.serving...` would find the clone's serving/ configs.
_PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def infra_validate(saved_model: Path, image_file: str,
                   reference: inference.Classifier) -> tuple[str | None, dict[str, Any]]:
    """Runs `catdog.serving.infra_validation` on the candidate in a fresh process and compares
    its answers for `image_file` with `reference`'s; (None, report) when it passes, else (one
    line naming what failed, report)."""
    start = time.perf_counter()
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}  # as the serve command runs
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        child = subprocess.run(
            [sys.executable, "-m", "catdog.serving.infra_validation",
             str(Path(saved_model).resolve()), str(Path(image_file).resolve())],
            capture_output=True, text=True, env=env, timeout=VALIDATOR_TIMEOUT_SECONDS,
            cwd=_PACKAGE_PARENT)
    except subprocess.TimeoutExpired:
        return f"it did not answer within {VALIDATOR_TIMEOUT_SECONDS} s", {}
    report = _last_json_line(child.stdout)
    report["seconds"] = round(time.perf_counter() - start, 2)
    if not report.get("ok"):
        last_words = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return report.get("failure") or (
            f"the validating process ended with status {child.returncode}: {last_words}"), report
    failure = _answer_problem(report, image_file, reference)
    return failure, report


def _last_json_line(text: str) -> dict[str, Any]:
    """The validator's report: the last line of its output that is a JSON object."""
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _answer_problem(report: dict[str, Any], image_file: str,
                    reference: inference.Classifier) -> str | None:
    """How the served answers differ from the in-process model's, or None."""
    if report["labels"] != list(reference.class_names):
        return (f"its labels asset names {report['labels']}, the model was trained on "
                f"{list(reference.class_names)}")
    pixels = tf.cast(images.load_image(tf.constant(str(image_file)), reference.image_size),
                     tf.float32).numpy()[None]
    expected = reference.predict(pixels)[0]
    label = reference.class_names[int(expected.argmax())]
    differences = {}
    for signature, answer in report["answers"].items():
        difference = float(np.max(np.abs(np.asarray(answer) - expected)))
        differences[signature] = difference
        if not difference <= ANSWER_TOLERANCE:
            return (f"{signature} answers {np.round(answer, 6).tolist()} for {image_file}, the "
                    f"in-process model {np.round(expected, 6).tolist()} (differing by "
                    f"{difference:.2g}, more than {ANSWER_TOLERANCE:g})")
    classes = report["classes"]
    for signature in ("serving_default", "predict_pixels"):
        if classes[signature] != label:
            return f"{signature} names the class {classes[signature]!r}, expected {label!r}"
    if classes["classify"] != list(reference.class_names):
        return f"classify names the classes {classes['classify']}"
    report["max_difference"] = max(differences.values())
    return None


# --- 2. blessing -------------------------------------------------------------------------------

def gate_photos(data_dir: str, class_names: Sequence[str], image_size: int,
                max_pixels: int = images.MAX_IMAGE_PIXELS) -> Photos:
    """The photos of `data_dir` to judge on: its validation split when it is a dataset folder
    (train/ and validation/, or prepared shards), else its class sub-folders themselves."""
    folder = Path(data_dir)
    if data.is_prepared(folder):
        return Photos(data.prepared_splits(folder, image_size)[1], f"{folder} (validation)")
    if (folder / "train").is_dir() and (folder / "validation").is_dir():
        folder = folder / "validation"
    files, bad = evaluate.checked_files(str(folder), class_names, max_pixels)
    return Photos(files, str(folder), tuple(bad))


def run_photos(source: dict[str, Any], max_pixels: int = images.MAX_IMAGE_PIXELS) -> Photos:
    """The validation photos of the run a candidate came from (its recorded data settings)."""
    try:
        _, validation = data.find_splits(source["data_dir"], source["validation_split"],
                                         source["seed"])
    except KeyError:
        raise CatdogError("the candidate does not record the photos its run validated on; "
                          "pass --data_dir") from None
    files, bad = evaluate.without_bad_images(validation, max_pixels)
    return Photos(files, f"{source['data_dir']} (the run's validation split)", tuple(bad))


def figures_on(photos: Photos, probabilities: np.ndarray,
               class_names: Sequence[str]) -> dict[str, Any]:
    """The evaluator's figures (what `catdog.evaluate` reports) for these probabilities."""
    return figures.compute_metrics(np.array(photos.files.labels), probabilities, class_names)


def baseline(layout: export.Layout) -> tuple[Path | None, inference.Classifier | None,
                                             list[dict[str, str]]]:
    """The newest published version that loads (what TF Serving keeps serving when a newer one
    fails to load), and the newer ones that do not, each with the reason."""
    damaged = []
    for version in export.versions(layout.base):
        try:
            return version, inference.load_classifier(version), damaged
        except Exception as error:  # any loader failure makes the version unusable
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            logging.warning("published version %s cannot be loaded (%s); comparing with the "
                            "next older one", version, reason)
            damaged.append({"version": version.name, "reason": reason})
    return None, None, damaged


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


# --- 3. publishing and rolling back ------------------------------------------------------------

def _read_record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / GATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _next_version(layout: export.Layout) -> int:
    """One more than any version the base path holds or ever held (a rolled-back version's
    number is not given to another model: TF Serving may still hold it)."""
    held = [int(p.name) for p in export.versions(layout.base)]
    candidates = layout.candidates.iterdir() if layout.candidates.is_dir() else []
    for record in map(_read_record, candidates):
        held += [int(Path(v).name) for v in (record.get("published_version"),
                                             record.get("rolled_back", {}).get("from")) if v]
    return max(held, default=0) + 1


def _settle_h5(layout: export.Layout) -> None:
    """Makes the published .h5 that of the newest published version, as its gate record names
    it (finishing a publish or rollback killed between its rename and its .h5 copy, whose
    temporary is removed)."""
    atomic.remove_leftovers(layout.export_dir)
    newest = next(iter(export.versions(layout.base)), None)
    h5 = Path(_read_record(newest).get("h5", "")) if newest else None
    if not h5 or not h5.is_file():
        return
    if layout.h5.is_file() and filecmp.cmp(h5, layout.h5, shallow=False):
        return
    with atomic.atomic_file(layout.h5) as tmp:
        shutil.copyfile(h5, tmp)
    logging.info("%s is now version %s's .h5", layout.h5, newest.name)


def _move(source: Path, target: Path) -> None:
    """One rename, flushed: the folder is at `source` or whole at `target`, never between."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise FileExistsError(f"{target} exists")
        os.rename(source, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise atomic.write_error(target, error) from None


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    atomic.write_text(folder / GATE_FILE, json.dumps(record, indent=2) + "\n")


def rollback(layout: export.Layout) -> tuple[Path, Path, Path]:
    """Moves the newest published version back among the candidates, so that the previous one
    is the newest again (TF Serving's `latest` policy serves it at its next poll), and makes the
    published .h5 that version's. Returns (the version rolled back, the candidate folder it is
    now, the newest version)."""
    with atomic.exclusive(layout.lock, f"the export folder {layout.export_dir}"):
        versions = export.versions(layout.base)
        if len(versions) < 2:
            raise CatdogError(
                f"{layout.base} holds {len(versions)} version(s) "
                f"{[v.name for v in versions]}; rolling back needs two (TF Serving would "
                "have nothing left to serve)")
        newest, previous = versions[:2]
        record = _read_record(newest)
        target = Path(record["candidate"]) if record.get("candidate") else None
        if target is None or target.parent != layout.candidates or target.exists():
            # not published through the gate, or its candidate number was taken since
            target = layout.candidates / str(export.next_version(layout.candidates))
        _move(newest, target)
        _write_record(target, {**record, "candidate": str(target), "rolled_back": {
            "from": str(newest), "time": _now(), "newest_now": str(previous)}})
        _settle_h5(layout)
        return newest, target, previous


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --- the gate ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GateSettings:
    """How strict the gate is (the --gate_* flags, --force, --keep_versions)."""

    tolerance: float = 0.0
    min_accuracy: float = 0.0
    force: bool = False
    keep_versions: int = 0
    batch_size: int = 32
    max_image_pixels: int = images.MAX_IMAGE_PIXELS


def gate(candidate: export.Exports, layout: export.Layout, photos: Photos,
         reference: inference.Classifier, settings: GateSettings = GateSettings(),
         candidate_probabilities: np.ndarray | None = None) -> Decision:
    """Infra validation, blessing and publishing (module docstring) of one candidate.

    `reference` is the candidate in-process (the trained Keras model, or its .h5);
    `candidate_probabilities` its answers for `photos`, when the caller has them already (a
    training run's own validation predictions), else they are computed here."""
    start = time.perf_counter()
    saved_model = Path(candidate.saved_model)
    if not (saved_model / "saved_model.pb").is_file():
        raise CatdogError(f"--candidate={saved_model} is not a SavedModel folder (one holding "
                          "saved_model.pb)")
    if saved_model.parent == layout.base:
        raise CatdogError(f"{saved_model} is already published under {layout.base}")
    if not len(photos.files):
        raise CatdogError(f"{photos.source} holds no usable photos to judge the model on")
    with atomic.exclusive(layout.lock, f"the export folder {layout.export_dir}"):
        _settle_h5(layout)
        atomic.remove_leftovers(saved_model)  # a gate record a killed gate left half-written
        record = {**{k: v for k, v in _read_record(saved_model).items() if k == "rolled_back"},
                  "candidate": str(saved_model), "h5": str(candidate.h5),
                  "base_path": str(layout.base), "photos": photos.source,
                  "skipped_photos": [dataclasses.asdict(b) for b in photos.skipped],
                  "settings": dataclasses.asdict(settings), "time": _now()}
        logging.info("infra validation of %s", saved_model)
        with _one_real_image(photos, reference.image_size) as image_file:
            failure, record["infra_validation"] = infra_validate(saved_model, image_file,
                                                                 reference)
        if failure:
            decision = Decision(REFUSED, f"refused {saved_model}: infra validation failed: "
                                f"{failure}", str(saved_model), record=record)
        else:
            decision = _blessed(candidate, layout, photos, reference, settings,
                                candidate_probabilities, record)
        decision.record["seconds"] = round(time.perf_counter() - start, 2)
        if decision.outcome == PUBLISHED:
            return _publish(candidate, layout, decision, settings.keep_versions)
        _write_record(saved_model, decision.to_dict())
        return decision


@contextlib.contextmanager
def _one_real_image(photos: Photos, image_size: int) -> Iterator[str]:
    """A photo file to send through the signatures: the first that exists (prepared shards name
    their source files, which may be gone: then their first image, written as a PNG)."""
    found = next((path for path in photos.files.paths if Path(path).is_file()), None)
    if found:
        yield found
        return
    pixels, _ = next(iter(data.decoded_images(photos.files, image_size)))
    with tempfile.TemporaryDirectory(prefix="catdog-gate-") as folder:
        path = Path(folder) / "photo.png"
        path.write_bytes(tf.io.encode_png(pixels).numpy())
        yield str(path)


def _blessed(candidate: export.Exports, layout: export.Layout, photos: Photos,
             reference: inference.Classifier, settings: GateSettings,
             candidate_probabilities: np.ndarray | None, record: dict[str, Any]) -> Decision:
    names = reference.class_names
    base_version, base_model, record["damaged_versions"] = (
        (None, None, []) if settings.force else baseline(layout))
    if candidate_probabilities is None or len(candidate_probabilities) != len(photos.files):
        logging.info("evaluating the candidate on %d photos", len(photos.files))
        candidate_probabilities = evaluate.predict_files(
            reference, photos.files, settings.batch_size, settings.max_image_pixels)
    record["candidate_figures"] = figures_on(photos, candidate_probabilities, names)
    record["baseline"] = None
    base_figures = base_probabilities = None
    if base_model is not None and list(base_model.class_names) != list(names):
        return Decision(HELD_BACK, (
            f"held back {candidate.saved_model}: the published version {base_version} knows "
            f"classes {base_model.class_names}, the candidate {list(names)}; publish it with "
            f"python -m catdog.publish --candidate={candidate.saved_model} "
            f"--model_base_path={layout.base} --force"), str(candidate.saved_model),
            record=record)
    if base_model is not None:
        logging.info("evaluating the baseline %s on %d photos", base_version, len(photos.files))
        base_probabilities = evaluate.predict_files(
            base_model, photos.files, settings.batch_size, settings.max_image_pixels)
        base_figures = figures_on(photos, base_probabilities, names)
        record["baseline"] = {"version": str(base_version), **base_figures}
    record["evaluation"] = str(_write_evaluation(
        candidate, reference, photos, candidate_probabilities, base_version, base_model,
        base_probabilities, settings))
    passed, why = _bless(record["candidate_figures"], base_figures,
                         f"version {base_version.name}" if base_version else "",
                         settings.tolerance, settings.min_accuracy, settings.force)
    damaged = "".join(f"; version {d['version']} cannot be loaded ({d['reason']})"
                      for d in record["damaged_versions"])
    if passed:
        return Decision(PUBLISHED, why + damaged, str(candidate.saved_model), record=record)
    return Decision(HELD_BACK, (
        f"held back {candidate.saved_model}: {why}{damaged}; it stays a candidate (to publish "
        f"it anyway: python -m catdog.publish --candidate={candidate.saved_model} "
        f"--model_base_path={layout.base} --force)"), str(candidate.saved_model), record=record)


def _write_evaluation(candidate: export.Exports, reference: inference.Classifier,
                      photos: Photos, probabilities: np.ndarray, base_version: Path | None,
                      base_model: inference.Classifier | None,
                      base_probabilities: np.ndarray | None, settings: GateSettings) -> Path:
    """`catdog.evaluate --model=<candidate> --baseline=<published>`'s reports, from the answers
    the gate already has, in `<K>.evaluation/` beside the candidate."""
    folder = candidate.saved_model.parent / f"{candidate.saved_model.name}.evaluation"
    baseline = (evaluate.Answers(str(base_version), base_model, base_probabilities)
                if base_model is not None else None)
    evaluate.write_reports(
        folder, evaluate.Answers(str(candidate.saved_model), reference, probabilities),
        photos.files, photos.source, photos.skipped, baseline,
        max_pixels=settings.max_image_pixels)
    return folder


def _publish(candidate: export.Exports, layout: export.Layout, decision: Decision,
             keep_versions: int) -> Decision:
    """Step 3: the rename into the base path, then the .h5."""
    version = layout.base / str(_next_version(layout))
    published = dataclasses.replace(
        decision, version=version,
        reason=f"published {version} ({decision.reason})")
    _write_record(Path(candidate.saved_model), published.to_dict())
    _move(Path(candidate.saved_model), version)
    _settle_h5(layout)
    if keep_versions:
        export.prune_versions(layout.base, keep_versions)
    return published


def already_published(candidate: export.Exports) -> Decision:
    """A rerun of a run whose model an earlier start published."""
    return Decision(PUBLISHED, f"{candidate.saved_model} already holds this run's model",
                    str(candidate.saved_model), version=Path(candidate.saved_model))


def kept(candidate: export.Exports) -> Decision:
    """--publish=never: the candidate stays where it is, ungated."""
    return Decision(KEPT, f"kept candidate {candidate.saved_model} unpublished (--publish=never; "
                    "python -m catdog.publish gates it)", str(candidate.saved_model))


# --- python -m catdog.publish ------------------------------------------------------------------

def publish_candidate(candidate_dir: str, base_path: str, data_dir: str = "",
                      settings: GateSettings = GateSettings()) -> Decision:
    """Gates an existing candidate folder: its .h5 beside it (`<K>.h5`) is the in-process model
    when there is one, else the SavedModel itself, loaded in-process with TensorFlow."""
    saved_model = Path(candidate_dir).absolute()
    if not (saved_model / "saved_model.pb").is_file():
        raise CatdogError(f"--candidate={candidate_dir} is not a SavedModel folder (one holding "
                          "saved_model.pb)")
    h5 = export.candidate_h5(saved_model)
    reference = inference.load_classifier(h5 if h5.is_file() else saved_model)
    layout = export.Layout.of_base_path(base_path)
    if data_dir:
        photos = gate_photos(data_dir, reference.class_names, reference.image_size,
                             settings.max_image_pixels)
    else:
        photos = run_photos(export.source_of(saved_model), settings.max_image_pixels)
    if list(photos.files.class_names) != list(reference.class_names):
        raise CatdogError(f"{photos.source} has classes {list(photos.files.class_names)} but the "
                          f"candidate knows {list(reference.class_names)}")
    return gate(export.Exports(h5=h5, saved_model=saved_model), layout, photos, reference,
                settings)


def main(argv: Sequence[str]) -> int:
    from absl import flags

    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}")
    f = flags.FLAGS
    layout = export.Layout.of_base_path(f.model_base_path)
    if f.rollback:
        version, moved, newest = rollback(layout)
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
    from catdog import flags as catdog_flags

    cli.run(main, catdog_flags.define_publish_flags)


if __name__ == "__main__":
    run()
