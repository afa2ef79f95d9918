"""catdog.export: .h5 and SavedModel versions written atomically, pruned, readable by other
users, each weight stored once, and the .h5 loadable by plain Keras."""

import os
import shutil
import time

import keras
import numpy as np
import pytest

from catdog import export, versions
from catdog.errors import CatdogError

from conftest import CLASSES, lock_held_by_another_process


def test_versions_count_up_and_no_temporary_folder_remains(classifier, tmp_path):
    base = tmp_path / "catdog"
    for name in ("7", "8", "notes"):
        (base / name).mkdir(parents=True)
    assert export.export_saved_model(classifier, CLASSES, base, keep_versions=2).name == "9"
    assert sorted(p.name for p in base.iterdir()) == ["8", "9", "notes"]


def test_failed_export_leaves_earlier_exports_untouched(classifier, exported, tmp_path,
                                                        monkeypatch):
    _, h5, saved_model = exported  # an earlier run's exports, as export_all lays them out
    shutil.copy(h5, tmp_path / "catdog.h5")
    shutil.copytree(saved_model, tmp_path / "catdog")
    before = (tmp_path / "catdog.h5").read_bytes()

    def save_half_then_fail(path, **kwargs):
        path.write_bytes(b"half")
        raise OSError("disk full")

    def write_half_then_fail(self, path, **kwargs):
        (tmp_path / "catdog").joinpath(path, "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(classifier, "save", save_half_then_fail)
    archive_class = type(keras.export.ExportArchive())  # its __new__ picks a backend class
    monkeypatch.setattr(archive_class, "write_out", write_half_then_fail)
    with pytest.raises(CatdogError, match="cannot write .*catdog.h5: disk full"):
        export.export_h5(classifier, CLASSES, tmp_path / "catdog.h5")
    with pytest.raises(CatdogError, match="cannot write .*catdog/2: disk full"):
        export.export_saved_model(classifier, CLASSES, tmp_path / "catdog")
    assert (tmp_path / "catdog.h5").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catdog", "catdog.h5"]
    assert sorted(p.name for p in (tmp_path / "catdog").iterdir()) == ["1"]


PLAIN_KERAS = """
import sys, numpy as np, keras
model = keras.models.load_model(sys.argv[1], compile=False)
assert not [m for m in sys.modules if m.startswith("catdog")]
np.save(sys.argv[3], model(np.load(sys.argv[2]), training=False))
"""


@pytest.mark.slow
def test_h5_opens_with_plain_keras_in_a_process_without_catdog(classifier, tmp_path):
    from conftest import run_python

    exports = export.export_all(classifier, CLASSES, tmp_path, "catdog")
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    run_python(PLAIN_KERAS, str(exports.h5), str(tmp_path / "pixels.npy"),
               str(tmp_path / "out.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               classifier(pixels, training=False).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def exported_under_umask_022(classifier, tmp_path_factory) -> export.Exports:
    umask = os.umask(0o022)
    try:
        return export.export_all(classifier, CLASSES, tmp_path_factory.mktemp("umask"), "catdog")
    finally:
        os.umask(umask)


def test_exports_are_readable_by_other_users(exported_under_umask_022):
    """0644 files and 0755 folders under umask 022, so TF Serving running as another user reads
    them (mkstemp and mkdtemp alone would give 0600 and 0700)."""
    exports = exported_under_umask_022
    assert exports.h5.stat().st_mode & 0o777 == 0o644
    for path in [exports.saved_model, *exports.saved_model.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_the_saved_model_stores_each_weight_once(classifier, exported_under_umask_022):
    """The SavedModel's variables are no bigger than the model's weights (116 MB for a 58 MB
    VGG16 when the export archive tracked the model besides its endpoints)."""
    exports = exported_under_umask_022
    weights = sum(int(np.prod(v.shape)) * 4 for v in classifier.weights)
    stored = sum(p.stat().st_size for p in (exports.saved_model / "variables").iterdir())
    assert weights <= stored < 1.05 * weights


def test_no_candidate_is_written_while_another_process_holds_the_export_folder(
        classifier, tmp_path, monkeypatch):
    """A run's export waits its turn, bounded: past the wait it is refused in one line."""
    monkeypatch.setattr(versions, "WRITER_WAIT_SECONDS", 0.3)
    layout = versions.Layout(tmp_path / "export", "catdog")
    with lock_held_by_another_process(layout.lock) as pid:
        with pytest.raises(CatdogError, match=f"export folder .* in use by process {pid} "
                                              r"\(it holds .*\) \(waited 0.3 s\); wait"):
            export.export_candidate(classifier, CLASSES, layout)
    assert not layout.candidates.exists() or not any(layout.candidates.iterdir())
    assert export.export_candidate(classifier, CLASSES, layout).saved_model.name == "1"


def test_two_runs_finishing_together_take_turns_at_the_export_folder(classifier, tmp_path,
                                                                    caplog):
    """The second run's export says it waits, then writes its candidate once the first run
    lets go, instead of failing after its whole training."""
    import threading

    caplog.set_level("INFO", logger="absl")
    layout = versions.Layout(tmp_path / "export", "catdog")
    exported = []
    with lock_held_by_another_process(layout.lock) as pid:
        second = threading.Thread(target=lambda: exported.append(
            export.export_candidate(classifier, CLASSES, layout)))
        second.start()
        deadline = time.monotonic() + 60
        while not any("waiting up to" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline and second.is_alive()
            time.sleep(0.05)
        assert not exported  # still waiting while the first holds the folder
    second.join(timeout=120)
    assert [e.saved_model.name for e in exported] == ["1"]
    (line,) = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    assert line.startswith(f"the export folder {layout.export_dir} is in use by process {pid} ")


def test_a_test_time_flip_export_answers_the_mean_of_each_image_and_its_mirror(
        classifier, pixels, tmp_path):
    """--test_time_flip: every signature, and catdog's loading of either file, answers
    (model(x) + model(x mirrored left-right)) / 2; the plain export answers model(x)."""
    import tensorflow as tf

    from catdog import inference
    from catdog.images import image_example

    source = {"run_dir": "r", "epoch": 1, "test_time_flip": True}
    version = export.export_saved_model(classifier, CLASSES, tmp_path / "catdog", source=source)
    h5 = export.export_h5(classifier, CLASSES, tmp_path / "catdog.h5", source)
    plain = classifier(pixels).numpy()
    expected = (plain + classifier(pixels[:, :, ::-1].copy()).numpy()) / 2
    assert np.abs(expected - plain).max() > 1e-4  # the mirror changes the answers
    signatures = tf.saved_model.load(str(version)).signatures
    np.testing.assert_allclose(signatures["predict_pixels"](pixels=tf.constant(pixels))[
        "probabilities"], expected, atol=1e-5)
    encoded = [tf.io.encode_png(tf.cast(p, tf.uint8)).numpy() for p in pixels]
    np.testing.assert_allclose(signatures["serving_default"](image_bytes=tf.constant(encoded))[
        "probabilities"], expected, atol=1e-4)
    examples = [image_example(e).SerializeToString() for e in encoded]
    np.testing.assert_allclose(signatures["classify"](inputs=tf.constant(examples))["scores"],
                               expected, atol=1e-4)
    for path in (h5, version):
        np.testing.assert_allclose(inference.load_classifier(path).predict(pixels), expected,
                                   atol=1e-5)
    plain_h5 = export.export_h5(classifier, CLASSES, tmp_path / "plain.h5")
    np.testing.assert_allclose(inference.load_classifier(plain_h5).predict(pixels), plain,
                               atol=1e-5)
