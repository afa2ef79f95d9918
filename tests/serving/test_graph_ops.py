"""catdog.serving.graph_ops: a SavedModel's graph is read before anything of it runs. An op
catdog's exporter never writes (file I/O, Python) is one line naming the op and its function;
catdog's own export passes; the gate's validator and `catdog.serve` refuse such a version before
loading it, so none of its ops ever runs."""

from __future__ import annotations

import pytest
import tensorflow as tf

from catdog.errors import CatdogError
from catdog.serving import graph_ops, infra_validation
from catdog.serving.servable import Servable
from catdog.serving.server import start_server

from conftest import save_module, writes


def test_catdogs_own_export_holds_only_ops_it_writes(exported, tmp_path):
    from catdog import export

    assert graph_ops.op_problem(exported[2] / "1") is None
    flipping = export.export_saved_model(exported[0], ["cats", "dogs"], tmp_path / "catdog",
                                         source={"test_time_flip": True})
    assert graph_ops.op_problem(flipping) is None


@pytest.mark.parametrize("body, op, why", [
    (lambda target: writes(target), "WriteFile", "it reads or writes files"),
    (lambda target: lambda image_bytes: tf.io.read_file(str(target)), "ReadFile",
     "it reads or writes files"),
    (lambda target: lambda image_bytes: tf.io.matching_files("/etc/*"), "MatchingFiles",
     "it reads or writes files"),
    (lambda target: lambda image_bytes: tf.py_function(len, [image_bytes], tf.int64),
     "EagerPyFunc", "it runs Python code"),
    (lambda target: lambda image_bytes: tf.strings.upper(image_bytes), "StringUpper",
     "catdog's exports never use it"),
], ids=["WriteFile", "ReadFile", "MatchingFiles", "py_function", "an op catdog never writes"])
def test_an_op_catdog_never_writes_is_one_line_naming_it_and_its_function(tmp_path, body, op,
                                                                          why):
    problem = graph_ops.op_problem(save_module(tmp_path / "model", body(tmp_path / "x")))
    assert problem.startswith(f"the graph holds op {op} in function __inference_serve_")
    assert f"reached from a signature ({why})" in problem and "\n" not in problem


def test_the_saver_may_restore_variables_but_a_signature_may_not(exported):
    """The same op is allowed to the saver's function and refused in a signature's."""
    assert "RestoreV2" in graph_ops.FILE_OPS_OF[graph_ops.SAVER]
    assert "RestoreV2" not in graph_ops.SERVING_OPS | graph_ops.FILE_OPS_OF[graph_ops.SIGNATURE]
    assert graph_ops._stricter(graph_ops.SAVER, graph_ops.SIGNATURE) == graph_ops.SIGNATURE
    assert graph_ops._stricter(graph_ops.SAVER, graph_ops.INITIALIZER) == graph_ops.SIGNATURE
    assert graph_ops._stricter(graph_ops.SAVER, graph_ops.SAVER) == graph_ops.SAVER


def test_no_graph_to_read_is_left_to_the_loader(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\xff not a protobuf")
    assert graph_ops.op_problem(tmp_path) is None
    assert graph_ops.op_problem(tmp_path / "missing") is None


def test_the_gates_validator_refuses_it_before_running_anything(tmp_path, jpegs):
    target = tmp_path / "written-by-the-candidate"
    candidate = save_module(tmp_path / "candidate", writes(target))
    report = infra_validation.validate(candidate, jpegs[0])
    assert not report["ok"] and report["failure"].startswith("the graph holds op WriteFile")
    assert not target.exists()


def test_serve_refuses_such_a_version_unless_told_not_to_verify(tmp_path):
    target = tmp_path / "written-by-the-model"
    save_module(tmp_path / "base" / "1", writes(target))
    with pytest.raises(CatdogError, match=r"version 1 did not load: refused "
                                          r"\(--verify_graph_ops\): the graph holds op WriteFile"):
        start_server("m", tmp_path / "base", port=0, rest_api_port=None)
    assert not target.exists()
    servable = Servable("m", 1, tmp_path / "base" / "1", verify_graph_ops=False)
    servable.close()  # loaded: an operator's own model, served as TF Serving would
