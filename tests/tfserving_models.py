"""The small models TF Serving's own tests serve, built here the way its generator builds them.

TF Serving tests its servers with `half_plus_two` (y = 0.5·x + 2) and `half_plus_three`
(y = 0.5·x + 3), written by servables/tensorflow/testdata/saved_model_half_plus_two.py as TF1
graphs: a placeholder of serialized tf.Examples parsed into `x` and `x2`, variables a, b, c, and
the signatures below. These builders write the same graph and signature defs (names, dtypes,
shapes, method names) into zero-padded version folders, as TF Serving's testdata does.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

tf1 = tf.compat.v1
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def _signature(inputs: dict, outputs: dict, method: str):
    return tf1.saved_model.signature_def_utils.build_signature_def(
        {k: tf1.saved_model.utils.build_tensor_info(v) for k, v in inputs.items()},
        {k: tf1.saved_model.utils.build_tensor_info(v) for k, v in outputs.items()}, method)


def write_half_plus(export_dir: Path, b: float = 2.0) -> Path:
    """One version of half_plus_two (b=2) or half_plus_three (b=3) at `export_dir`."""
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        a = tf1.Variable(0.5, name="a")
        b = tf1.Variable(b, name="b")
        c = tf1.Variable(3.0, name="c")
        # No shape: the recorded testdata models (and their metadata bodies) have none.
        serialized = tf1.placeholder(tf.string, name="tf_example")
        parsed = tf1.parse_example(serialized, {
            "x": tf1.FixedLenFeature([1], dtype=tf.float32),
            "x2": tf1.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0])})
        for name in ("x", "x2"):  # a batch of one value, as the recorded models declare
            parsed[name].set_shape([None, 1])
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(tf.add(tf.multiply(a, x), b), name="y")
        y2 = tf.identity(tf.add(tf.multiply(a, x), c), name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        a2 = tf1.Variable(0.5, name="a2")
        c2 = tf1.Variable(3.0, name="c2")
        y3 = tf.identity(tf.add(tf.multiply(a2, x2), c2), name="y3")
        signatures = {
            "serving_default": _signature({"x": x}, {"y": y}, PREDICT),
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, REGRESS),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, REGRESS),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, REGRESS),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, CLASSIFY),
            "classify_x2_to_y3": _signature({"inputs": x2}, {"scores": y3}, CLASSIFY),
        }
        session.run(tf1.global_variables_initializer())
        builder = tf1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(session, [tf1.saved_model.tag_constants.SERVING],
                                             signature_def_map=signatures)
        builder.save()
    return export_dir


def half_plus_two(base: Path, versions=(123,), b: float = 2.0) -> Path:
    """A model base path holding the given versions in zero-padded folders (`00000123`)."""
    for version in versions:
        write_half_plus(base / f"{version:08d}", b)
    return base


def _tensor(dtype, name, dims):
    shape = ({"dim": [], "unknown_rank": True} if dims is None else
             {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False})
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def recorded_metadata(model_name: str) -> dict:
    """TF Serving's REST metadata body for these models, written out field by field from its
    recorded servables/tensorflow/testdata/saved_model_half_plus_two_2_versions_metadata.json."""
    examples = _tensor("DT_STRING", "tf_example:0", None)
    float_col = (-1, 1)

    def sig(method, inputs, outputs):
        return {"inputs": inputs, "outputs": outputs, "method_name": method, "defaults": {}}

    return {
        "model_spec": {"name": model_name, "signature_name": "", "version": "123"},
        "metadata": {"signature_def": {"signature_def": {
            "regress_x2_to_y3": sig("tensorflow/serving/regress",
                                    {"inputs": _tensor("DT_FLOAT", "x2:0", float_col)},
                                    {"outputs": _tensor("DT_FLOAT", "y3:0", float_col)}),
            "serving_default": sig("tensorflow/serving/predict",
                                   {"x": _tensor("DT_FLOAT", "x:0", float_col)},
                                   {"y": _tensor("DT_FLOAT", "y:0", float_col)}),
            "classify_x_to_y": sig("tensorflow/serving/classify", {"inputs": examples},
                                   {"scores": _tensor("DT_FLOAT", "y:0", float_col)}),
            "classify_x2_to_y3": sig("tensorflow/serving/classify",
                                     {"inputs": _tensor("DT_FLOAT", "x2:0", float_col)},
                                     {"scores": _tensor("DT_FLOAT", "y3:0", float_col)}),
            "regress_x_to_y2": sig("tensorflow/serving/regress", {"inputs": examples},
                                   {"outputs": _tensor("DT_FLOAT", "y2:0", float_col)}),
            "regress_x_to_y": sig("tensorflow/serving/regress", {"inputs": examples},
                                  {"outputs": _tensor("DT_FLOAT", "y:0", float_col)}),
        }}}}


def write_models(root: Path) -> Path:
    """The models CONFIG names, under `root`."""
    half_plus_two(root / "two_versions", versions=(123, 124))
    half_plus_two(root / "half_plus_two", versions=(123,))
    half_plus_two(root / "half_plus_three", versions=(123,), b=3.0)
    return root


TWO_VERSIONS = "saved_model_half_plus_two_2_versions"  # H's model, policy specific {123}
# The model server config of TF Serving's tests, over the models written by `write_models`.
# `labels` is empty for the first config: like TF Serving's (http_rest_api_handler_test.cc's
# CreateServerCore), a server is started without labels, and the config with the label
# (LABELS) is loaded once version 123 is AVAILABLE.
LABELS = 'version_labels { key: "Version_Label" value: 123 }'
CONFIG = """
model_config_list {{
  config {{ name: "{two}" base_path: "{root}/two_versions" model_platform: "tensorflow"
           model_version_policy {{ specific {{ versions: 123 }} }}
           {labels} }}
  config {{ name: "default" base_path: "{root}/half_plus_two" model_platform: "tensorflow" }}
  config {{ name: "half_plus_two" base_path: "{root}/half_plus_two" model_platform: "tensorflow" }}
  config {{ name: "half_plus_three" base_path: "{root}/half_plus_three"
           model_platform: "tensorflow" }}
}}
"""


def rest(server, method: str, path: str, body: str | None = None) -> tuple[int, object]:
    """(HTTP status, parsed JSON body) of one REST call to a running `catdog.serve`."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}",
                                     data=None if body is None else body.encode(), method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def verify_spec(spec, name, signature, version=123):
    """S _VerifyModelSpec."""
    assert (spec.name, spec.signature_name, spec.version.value) == (name, signature, version)


def verify_predict(stub, model_name, expected, specify_output=True, batch_input=False,
                   signature_name="serving_default"):
    """S VerifyPredictRequest: typed float_val in, typed float_val out."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    result = stub.Predict(request, 20)
    assert "y" in result.outputs and result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert len(result.outputs["y"].float_val) == 1
    assert result.outputs["y"].float_val[0] == expected
    verify_spec(result.model_spec, model_name, signature_name)


def rest_port_answers(port: int, path: str) -> int:
    """The HTTP status of GET `path` on a REST port of this machine."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
