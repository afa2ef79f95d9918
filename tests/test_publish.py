"""catdog.publish: the gate between training and TF Serving. A worse model is held back (exit 3),
a better one is published by one rename and served at the next poll, a model that does not load
or keep the signature contract is refused (exit 4) before any blessing, a damaged baseline does
not block, the baseline's answers are computed once in its life, and SIGKILL never leaves half a
version. The folders themselves (rollback, the lock, the .h5) are test_versions.py's."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from catdog import evaluation, export, inference, publish, train, versions

from conftest import CLASSES, copy_version, fast_config, leftovers, run_catdog


def layout_at(root: Path) -> versions.Layout:
    return versions.Layout(root / "export", "catdog")


def version_names(layout: versions.Layout) -> list[str]:
    return sorted((p.name for p in layout.base.iterdir()), key=lambda n: (len(n), n)) \
        if layout.base.is_dir() else []


# --- the blessing rule -----------------------------------------------------------------------

@pytest.mark.parametrize("accuracy, baseline, tolerance, floor, force, passes", [
    (0.80, 0.80, 0.0, 0.0, False, True),  # no worse
    (0.79, 0.80, 0.0, 0.0, False, False),  # worse
    (0.79, 0.80, 0.02, 0.0, False, True),  # worse, within the tolerance
    (0.50, None, 0.0, 0.0, False, True),  # the first version
    (0.50, None, 0.0, 0.6, False, False),  # the first version, below the floor
    (0.90, 0.80, 0.0, 0.95, False, False),  # better, below the floor
    (0.10, 0.80, 0.0, 0.95, True, True),  # --force skips the comparison
])
def test_the_blessing_rule(accuracy, baseline, tolerance, floor, force, passes):
    candidate = {"accuracy": accuracy, "images": 100}
    base = None if baseline is None else {"accuracy": baseline, "images": 100}
    passed, why = publish._bless(candidate, base, "version 1", tolerance, floor, force)
    assert passed is passes
    assert f"accuracy {accuracy:.4f}" in why and "on 100 images" in why
    if base and not force:
        assert f"version 1's {baseline:.4f}" in why


# --- the gate on real exports -----------------------------------------------------------------

def candidate_from(exported, layout: versions.Layout) -> export.Exports:
    """The `exported` model as a candidate of `layout`, with its .h5 beside it, as
    export_candidate writes one (copied rather than exported again)."""
    saved_model = copy_version(exported, layout.candidates)
    h5 = versions.candidate_h5(saved_model)
    shutil.copyfile(exported[1], h5)
    return export.Exports(h5=h5, saved_model=saved_model)


def photos_of(dataset_dir: Path) -> evaluation.Photos:
    """The dataset's evaluation photos: half of its validation photos, drawn with seed 0."""
    return evaluation.folder_photos(str(dataset_dir), CLASSES, 32, 0.5)


@pytest.mark.slow
def test_a_candidate_that_does_not_load_or_keep_the_contract_is_refused_before_blessing(
        exported, dataset_dir_module, tmp_path):
    layout = layout_at(tmp_path)
    candidate = candidate_from(exported, layout)
    reference = inference.load_classifier(candidate.h5)
    (data,) = (candidate.saved_model / "variables").glob("variables.data-*")
    data.write_bytes(data.read_bytes()[:-100])
    decision = publish.gate(candidate, layout, photos_of(dataset_dir_module), reference)
    assert decision.outcome == publish.REFUSED and decision.exit_status == 4
    assert decision.reason.startswith(
        f"refused {candidate.saved_model}: infra validation failed: "
        "variables/variables.data-00000-of-00001 is damaged or truncated (")
    record = json.loads((candidate.saved_model / versions.GATE_FILE).read_text())
    assert record["decision"] == "refused" and "candidate_figures" not in record  # no blessing
    assert not layout.base.exists() and not layout.h5.exists()

    # A wrong input signature: keras' plain export, with catdog's labels asset.
    wrong = layout.candidates / "9"
    exported[0].export(str(wrong), format="tf_saved_model", verbose=False)
    shutil.copytree(candidate.saved_model / "assets", wrong / "assets", dirs_exist_ok=True)
    decision = publish.gate(export.Exports(h5=candidate.h5, saved_model=wrong), layout,
                            photos_of(dataset_dir_module), reference)
    assert decision.outcome == publish.REFUSED
    assert "wrong signature contract: signature predict_pixels has no input pixels" in \
        decision.reason
    assert not layout.base.exists()


@pytest.mark.slow
def test_answers_that_differ_from_the_in_process_model_are_refused(exported, dataset_dir_module,
                                                                   tmp_path):
    layout = layout_at(tmp_path)
    candidate = candidate_from(exported, layout)
    honest = inference.load_classifier(candidate.h5)
    off = inference.Classifier(lambda pixels: honest.predict(pixels) * 0.999, honest.class_names,
                               honest.image_size)
    decision = publish.gate(candidate, layout, photos_of(dataset_dir_module), off)
    assert decision.outcome == publish.REFUSED
    assert re.search(r"serving_default answers \[.*\] for .*, the in-process model \[.*\] "
                     r"\(differing by .*, more than 1e-05 for a float32 export\)", decision.reason
                     ), decision.reason


@pytest.mark.slow
def test_a_damaged_baseline_is_reported_and_the_newest_that_loads_is_compared(
        exported, dataset_dir_module, tmp_path):
    layout = layout_at(tmp_path)
    copy_version(exported, layout.base)  # 1: loads
    damaged = copy_version(exported, layout.base)  # 2: does not
    (damaged / "saved_model.pb").write_bytes(b"not a SavedModel")
    candidate = candidate_from(exported, layout)
    decision = publish.gate(candidate, layout, photos_of(dataset_dir_module),
                            inference.load_classifier(candidate.h5))
    assert decision.outcome == publish.PUBLISHED, decision.reason
    assert "version 1's" in decision.reason and "version 2 cannot be loaded" in decision.reason
    assert decision.record["baseline"]["version"] == str(layout.base / "1")
    assert version_names(layout) == ["1", "2", "3"]


def kill_at(args: list[str], seconds: float) -> int:
    """Starts `python -m catdog.publish args`, SIGKILLs it after `seconds`; its exit status."""
    process = subprocess.Popen([sys.executable, "-m", "catdog.publish", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    return process.wait()


@pytest.mark.slow
def test_sigkill_at_a_random_moment_never_leaves_half_a_version(exported, dataset_dir_module,
                                                                tmp_path):
    """The push's crash points are each killed once in tests/test_versions.py; this one kill of
    the whole command at a seeded random moment checks that they are all there is."""
    layout = layout_at(tmp_path)
    copy_version(exported, layout.base)  # version 1
    shutil.copyfile(exported[1], layout.h5)
    pristine = tmp_path / "pristine"
    shutil.copytree(candidate_from(exported, layout).saved_model, pristine)
    files = sorted(str(p.relative_to(pristine)) for p in pristine.rglob("*"))

    def attempt(seconds: float) -> int:
        candidate = layout.candidates / "1"
        shutil.rmtree(candidate, ignore_errors=True)
        shutil.copytree(pristine, candidate)
        args = [f"--candidate={candidate}", f"--model_base_path={layout.base}",
                f"--data_dir={dataset_dir_module}", "--force"]
        return kill_at(args, seconds)

    start = time.perf_counter()
    assert attempt(300) == 0  # uncut, to learn how long a publish takes
    duration = time.perf_counter() - start
    shutil.rmtree(layout.base / "2")
    moment = random.Random(11).uniform(0, duration)
    attempt(moment)
    names = version_names(layout)
    assert names in (["1"], ["1", "2"]), (moment, names)
    if names == ["1", "2"]:  # published: whole, every file the candidate had
        published = sorted(str(p.relative_to(layout.base / "2"))
                           for p in (layout.base / "2").rglob("*"))
        made_by_the_gate = (versions.GATE_FILE, versions.ANSWERS_DIR)  # record, answers
        assert [f for f in published if not f.startswith(made_by_the_gate)] == files, moment
        shutil.rmtree(layout.base / "2")
    assert not leftovers(layout.base), moment
    assert attempt(300) == 0  # the next publisher clears what the kill left
    assert not leftovers(layout.export_dir)
    assert layout.h5.read_bytes() == versions.candidate_h5(layout.candidates / "1").read_bytes()


# --- training runs through the gate ----------------------------------------------------------

@pytest.mark.slow
def test_a_worse_run_is_held_back_and_a_better_one_is_served_at_the_next_poll(
        dataset_dir_module, tmp_path, jpegs):
    from catdog.serving.client import Client
    from catdog.serving.server import start_server

    export_dir = tmp_path / "export"
    layout = versions.Layout(export_dir, "catdog")
    weak = train.train(fast_config(dataset_dir_module, tmp_path / "weak", epochs=1,
                                   learning_rate=1.0, export_dir=str(export_dir),
                                   publish="if_better"))
    assert weak.decision.outcome == publish.PUBLISHED  # the first version: nothing to beat
    server = start_server("catdog", layout.base, port=0, rest_api_port=None,
                          file_system_poll_wait_seconds=60)
    try:
        client = Client(f"grpc://127.0.0.1:{server.grpc_port}", "catdog")
        assert [s["version"] for s in client.status()] == [1]
        good_config = fast_config(dataset_dir_module, tmp_path / "good", epochs=3,
                                  learning_rate=0.01, export_dir=str(export_dir),
                                  publish="if_better")
        good = train.train(good_config)
        assert good.decision.outcome == publish.PUBLISHED, good.decision.reason
        assert good.decision.version == layout.base / "2"
        gate = json.loads((tmp_path / "good" / "run" / "summary.json").read_text())["gate"]
        assert gate["candidate_figures"]["accuracy"] >= gate["baseline"]["accuracy"]
        # Judged on the 6 evaluation photos, none of the 6 that chose the best epoch.
        assert gate["photo_role"] == "evaluation" and gate["photo_count"] == 6
        assert good.summary["validation_images"] == 6
        server.core.refresh()  # what the poller does every --file_system_poll_wait_seconds
        assert client.status()[0]["version"] == 2
        assert client.predict(jpegs[:1])[0].label in CLASSES
    finally:
        server.stop()
    again = train.train(good_config)  # a finished run started again: nothing done, as decided
    assert again.finished_before and again.decision.reason == good.decision.reason
    assert again.exports.saved_model == layout.base / "2"
    assert version_names(layout) == ["1", "2"]
    published_h5 = layout.h5.read_bytes()
    assert published_h5 == Path(good.decision.record["h5"]).read_bytes()

    worse = run_catdog(
        "train", f"--data_dir={dataset_dir_module}", "--weights=none", "--image_size=32",
        "--batch_size=8", "--epochs=1", "--learning_rate=1.0", "--flip=none", "--zoom=0",
        "--cache_features", "--seed=3", f"--run_dir={tmp_path / 'worse'}",
        f"--export_dir={export_dir}")
    assert worse.returncode == 3, worse.stderr[-2000:]
    # The baseline's answers were computed when it was published, never again.
    assert "version 2's answers for these 6 photos: kept in" in worse.stderr
    assert "evaluating version 2" not in worse.stderr
    (line,) = [x for x in worse.stdout.splitlines() if "held back" in x]
    match = re.search(r"accuracy (\d\.\d{4}) < version 2's (\d\.\d{4}) - tolerance 0 on 6 "
                      "images", line)
    assert match and float(match[1]) < float(match[2]), line
    assert version_names(layout) == ["1", "2"]
    assert layout.h5.read_bytes() == published_h5
    held = Path(re.search(r"held back (\S+):", line)[1])
    assert held.parent == layout.candidates and (held / "gate.json").is_file()
    assert versions.candidate_h5(held).is_file()  # its .h5 stays beside it
    summary = json.loads((tmp_path / "worse" / "summary.json").read_text())
    assert summary["gate"]["decision"] == "held_back"
    assert summary["exports"]["saved_model"] == str(held)
    assert np.isclose(summary["gate"]["baseline"]["accuracy"], float(match[2]), atol=1e-4)


@pytest.mark.slow
def test_after_a_rollback_the_server_serves_what_serving_readme_says(exported, tmp_path):
    """docs/serving.md's rollback table, on catdog.serve: `latest` serves the previous
    version; `latest { num_versions: 2 }` with a label on the rolled-back version serves the two
    before it, and the label answers NOT_FOUND until the config moves it."""
    from tensorflow_serving.apis import model_pb2

    from catdog.serving.options import ServerOptions
    from catdog.serving.server import start_server
    from catdog.serving.status import ServingError

    layout = layout_at(tmp_path)
    for _ in range(3):
        copy_version(exported, layout.base)
    shutil.copyfile(exported[1], layout.h5)
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "catdog" base_path: "{layout.base}" '
        'model_platform: "tensorflow" model_version_policy { latest { num_versions: 2 } } '
        'version_labels { key: "stable" value: 2 } version_labels { key: "canary" value: 3 } '
        "} }")
    latest = start_server("catdog", layout.base, port=0, rest_api_port=None)
    labelled = start_server(options=ServerOptions(
        port=0, rest_api_port=None, model_config_file=str(config),
        allow_version_labels_for_unavailable_models=True))
    try:
        assert latest.core.manager("catdog").loaded_versions() == {3}
        assert labelled.core.manager("catdog").loaded_versions() == {2, 3}
        versions.rollback(layout)
        for server in (latest, labelled):
            server.core.refresh()  # the next poll
        assert latest.core.manager("catdog").loaded_versions() == {2}
        assert labelled.core.manager("catdog").loaded_versions() == {1, 2}
        manager = labelled.core.manager("catdog")
        assert manager.servable(model_pb2.ModelSpec(name="catdog", version_label="stable")
                                ).version == 2
        with pytest.raises(ServingError, match=r"Servable not found for request: "
                                               r"Specific\(catdog, 3\)"):
            manager.servable(model_pb2.ModelSpec(name="catdog", version_label="canary"))
    finally:
        latest.stop()
        labelled.stop()


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "variables/variables.data-00000-of-00001 is damaged or truncated (IndexError: "),
    ("labels linked outside", "assets/labels.txt is a link to a file outside the version folder; "
                              "a version holds its own files (refused unread)"),
])
def test_a_damaged_candidate_without_its_h5_is_refused_naming_the_file(exported, tmp_path,
                                                                       damage, reason):
    """`python -m catdog.publish --candidate=...` on a candidate with no .h5 beside it: the
    files are checked before TensorFlow loads anything, the refusal is one line naming the
    file (exit status 4), and nothing from a file outside the folder is echoed or recorded."""
    candidate = tmp_path / "export" / "candidates" / "catdog" / "1"
    shutil.copytree(exported[2] / "1", candidate)
    if damage == "truncated":
        (data,) = (candidate / "variables").glob("variables.data-*")
        data.write_bytes(data.read_bytes()[:-100])
    else:
        secret = tmp_path / "secret.txt"
        secret.write_text("TOP-SECRET\n")
        (candidate / "assets" / "labels.txt").unlink()
        (candidate / "assets" / "labels.txt").symlink_to(secret)
    decision = publish.publish_candidate(str(candidate), str(tmp_path / "export" / "catdog"))
    assert decision.outcome == publish.REFUSED and decision.exit_status == 4
    assert decision.reason.startswith(f"refused {candidate}: {reason}")
    assert "TOP-SECRET" not in (candidate / versions.GATE_FILE).read_text()
