"""catdog.batch's Beam parts on the session's tiny export: the ModelHandler, the per-file check,
the record and PredictionLog formats, the options; the whole pipeline is in test_batch.py."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from catdog import bulk_inference
from catdog.errors import CatdogError

from conftest import CLASSES, expected_probabilities, png_bomb


@pytest.fixture(scope="module")
def version(exported) -> str:
    return str(exported[2] / "1")




def test_the_handler_answers_each_image_as_the_model_does(exported, version, jpegs):
    handler = bulk_inference.SavedModelHandler(version, batch_size=2, max_pixels=10**6)
    model = handler.load_model()
    weakref.ref(model)  # Beam's shared model cache holds it by weak reference
    assert model.class_names() == list(CLASSES)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 2}
    results = list(handler.run_inference([p.read_bytes() for p in jpegs], model))
    assert [r.example for r in results] == [p.read_bytes() for p in jpegs]
    assert all(r.model_id == version for r in results)
    got = np.stack([r.inference["probabilities"] for r in results])
    np.testing.assert_allclose(got, expected_probabilities(exported[0], jpegs), atol=1e-5)
    assert [r.inference["classes"] for r in results] == [
        CLASSES[i].encode() for i in got.argmax(1)]


def test_a_record_holds_predicts_fields_and_numbers(exported, version, jpegs):
    result = bulk_inference.SavedModelHandler(version, 4, 10**6).run_inference(
        [jpegs[0].read_bytes()], bulk_inference.ServedModel(version))[0]
    answer = bulk_inference.Answer(CLASSES, "catdog", as_prediction_log=False)
    answer.setup()
    (record,) = answer.process((str(jpegs[0]), result))
    expected = expected_probabilities(exported[0], jpegs[:1])[0]
    assert list(record) == ["path", "label", "probability", "probabilities"]
    assert record["path"] == str(jpegs[0])
    assert record["label"] == CLASSES[expected.argmax()]
    assert record["probability"] == pytest.approx(expected.max(), abs=1e-5)
    assert record["probabilities"] == pytest.approx(dict(zip(CLASSES, expected)), abs=1e-5)


def test_a_prediction_log_is_what_tf_serving_logs_for_a_predict(version, jpegs):
    result = bulk_inference.SavedModelHandler(version, 4, 10**6).run_inference(
        [jpegs[1].read_bytes()], bulk_inference.ServedModel(version))[0]
    answer = bulk_inference.Answer(CLASSES, "catdog", as_prediction_log=True)
    answer.setup()
    (serialized,) = answer.process((str(jpegs[1]), result))
    log = prediction_log_pb2.PredictionLog.FromString(serialized)
    request, response = log.predict_log.request, log.predict_log.response
    assert request.model_spec.name == "catdog"
    assert request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["image_bytes"]).tolist() == [jpegs[1].read_bytes()]
    assert response.model_spec.version.value == 1
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (1, 2)
    np.testing.assert_allclose(probabilities[0], result.inference["probabilities"])
    assert tf.make_ndarray(response.outputs["classes"]).shape == (1,)


def test_a_file_that_cannot_be_read_or_is_too_large_is_refused_before_batching(tmp_path,
                                                                              jpegs):
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    (tmp_path / "empty.jpg").write_bytes(b"")
    read = bulk_inference.ReadPhoto(max_pixels=10_000)
    (good,) = read.process(str(jpegs[0]))
    assert good == (str(jpegs[0]), jpegs[0].read_bytes())
    (empty,) = read.process(str(tmp_path / "empty.jpg"))  # the decoder's to refuse
    assert empty == (str(tmp_path / "empty.jpg"), b"")
    (bomb,) = read.process(str(tmp_path / "bomb.png"))
    assert bomb.tag == "failed" and bomb.value == {
        "path": str(tmp_path / "bomb.png"),
        "error": "image declares 529000000 pixels, more than the limit of 10000 "
                 "(--max_image_pixels)"}
    (gone,) = read.process(str(tmp_path / "gone.jpg"))
    assert gone.tag == "failed" and gone.value["error"].startswith("cannot read: ")


def test_a_broken_photo_costs_its_batch_no_answer(exported, version, jpegs):
    """The graph refuses the whole batch; each photo is then answered or refused alone."""
    handler = bulk_inference.SavedModelHandler(version, batch_size=5, max_pixels=10**6)
    batch = [jpegs[0].read_bytes(), b"", jpegs[1].read_bytes()[:200], jpegs[2].read_bytes()]
    results = handler.run_inference(batch, handler.load_model())
    assert [r.example for r in results] == batch
    assert results[1].inference == {"error": "Input is empty."}
    assert "Invalid JPEG data" in results[2].inference["error"]
    got = np.stack([results[i].inference["probabilities"] for i in (0, 3)])
    np.testing.assert_allclose(
        got, expected_probabilities(exported[0], [jpegs[0], jpegs[2]]), atol=1e-5)


def test_a_folder_means_every_file_under_it_and_globstar_spans_no_folder_too(tmp_path):
    assert bulk_inference.input_patterns(str(tmp_path)) == [f"{tmp_path}/**"]
    assert bulk_inference.input_patterns("gs://bucket/photos/") == ["gs://bucket/photos/**"]
    assert bulk_inference.input_patterns("photos/*.jpg") == ["photos/*.jpg"]
    assert bulk_inference.input_patterns("photos/**/*.jpg") == ["photos/**/*.jpg",
                                                                "photos/*.jpg"]
    assert len(bulk_inference.input_patterns("a/**/b/**/*.png")) == 4
    (tmp_path / "top.jpg").write_bytes(b"")
    bulk_inference.check_input("x", bulk_inference.input_patterns(f"{tmp_path}/**/*.jpg"))
    with pytest.raises(CatdogError, match=r"--input=.*/none/\*\* matches no files"):
        bulk_inference.check_input(f"{tmp_path}/none/**", [f"{tmp_path}/none/**"])


def test_the_model_is_a_version_folder_or_a_base_paths_newest(exported, tmp_path):
    assert bulk_inference.resolve_version(str(exported[2])) == str(exported[2] / "1")
    assert bulk_inference.resolve_version(f"{exported[2]}/1/") == str(exported[2] / "1")
    with pytest.raises(CatdogError, match="neither a SavedModel version folder"):
        bulk_inference.resolve_version(str(tmp_path))


def test_pipeline_options_run_locally_unless_told_and_refuse_unknown_ones():
    options = bulk_inference.pipeline_options([]).get_all_options()
    assert options["runner"] == "FnApiRunner"
    options = bulk_inference.pipeline_options(
        ["--runner=DataflowRunner", "--project=p", "--region=r"]).get_all_options()
    assert (options["runner"], options["project"]) == ("DataflowRunner", "p")
    with pytest.raises(CatdogError, match="--direct_num_wrkers"):
        bulk_inference.pipeline_options(["--direct_num_wrkers=2"])
    with pytest.raises(CatdogError, match="unexpected argument 'photos'"):
        bulk_inference.pipeline_options(["photos"])


def test_parquet_columns_are_predicts_fields():
    schema = bulk_inference.parquet_schema(CLASSES)
    assert schema.names == ["path", "label", "probability", "probabilities", "error"]
    assert [f.name for f in schema.field("probabilities").type] == list(CLASSES)


def test_without_beam_the_command_says_how_to_install_it(monkeypatch):
    import sys

    import catdog
    from catdog import batch

    monkeypatch.setitem(sys.modules, "apache_beam", None)
    monkeypatch.delitem(sys.modules, "catdog.bulk_inference")
    monkeypatch.delattr(catdog, "bulk_inference")
    with pytest.raises(CatdogError, match=r"pip install 'catdog\[beam\]'"):
        batch.main(["catdog.batch"])
