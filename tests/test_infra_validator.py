"""catdog.infra_validator: the gate's side of infra validation. The validating process's report
is read from its last JSON line, and its answers are held against the in-process model's: each
way they can differ is one line naming the signature or the asset (the process itself is
tests/serving/test_infra_validation.py's; a whole gate run, test_publish.py's)."""

from __future__ import annotations

import numpy as np
import pytest

from catdog import inference, infra_validator

from conftest import CLASSES, save_module, writes

ANSWER = [0.25, 0.75]


def reference(answer=ANSWER) -> inference.Classifier:
    return inference.Classifier(lambda pixels: np.array([answer] * len(pixels)), list(CLASSES),
                                32)


def report(answer=ANSWER, labels=CLASSES, classes=None) -> dict:
    return {"labels": list(labels),
            "answers": {s: list(answer) for s in ("serving_default", "predict_pixels",
                                                  "classify")},
            "classes": classes or {"serving_default": "dogs", "predict_pixels": "dogs",
                                   "classify": list(CLASSES)}}


def test_the_report_is_the_last_json_object_printed():
    text = 'W0000 a log line\n{"ok": false}\nnot json\n{"ok": true, "labels": []}\n[1, 2]\n'
    assert infra_validator._last_json_line(text) == {"ok": True, "labels": []}
    assert infra_validator._last_json_line("no json at all") == {}


def test_equal_answers_pass_and_record_the_largest_difference(jpegs):
    found = report([0.25, 0.75 + 5e-6])
    assert infra_validator._answer_problem(found, str(jpegs[0]), reference()) is None
    assert found["max_difference"] == pytest.approx(5e-6)


@pytest.mark.parametrize("found, problem", [
    (report(labels=["dogs", "cats"]), "its labels asset names ['dogs', 'cats'], the model was "
                                      "trained on ['cats', 'dogs']"),
    (report([0.3, 0.7]), r"serving_default answers [0.3, 0.7] for "),
    (report([0.251, 0.749]), r"serving_default answers [0.251, 0.749] for "),
    (report(classes={"serving_default": "cats", "predict_pixels": "dogs",
                     "classify": list(CLASSES)}),
     "serving_default names the class 'cats', expected 'dogs'"),
    (report(classes={"serving_default": "dogs", "predict_pixels": "dogs",
                     "classify": ["dogs", "cats"]}), "classify names the classes ['dogs', 'cats']"),
], ids=["labels asset", "answers apart", "float32 answers 0.001 apart", "class name",
        "classify's classes"])
def test_each_difference_is_one_line_naming_what_differs(jpegs, found, problem):
    line = infra_validator._answer_problem(found, str(jpegs[0]), reference())
    assert line.startswith(problem) and "\n" not in line


def test_a_bfloat16_export_may_round_its_answers_but_not_misname_them(jpegs):
    """Served without oneDNN, a bfloat16 graph rounds differently from the same graph in-process
    (0.019 apart measured on VGG16 at 150 px); a near tie may then tip, and the served class
    must be the served answer's own."""
    rounded = report([0.26, 0.74])
    assert infra_validator._answer_problem(rounded, str(jpegs[0]), reference(),
                                           "mixed_bfloat16") is None
    assert rounded["max_difference"] == pytest.approx(0.01)
    tipped = report([0.51, 0.49], classes={"serving_default": "cats", "predict_pixels": "cats",
                                           "classify": list(CLASSES)})
    assert infra_validator._answer_problem(tipped, str(jpegs[0]), reference([0.49, 0.51]),
                                           "mixed_bfloat16") is None
    apart = infra_validator._answer_problem(report([0.4, 0.6]), str(jpegs[0]), reference(),
                                            "mixed_bfloat16")
    assert apart.endswith("(differing by 0.15, more than 0.05 for a mixed_bfloat16 export)")


def test_a_candidate_that_writes_files_is_refused_and_writes_nothing(tmp_path, jpegs):
    """The whole gate side: the validating process reads the graph, refuses it in one line
    naming the op, and none of its ops runs."""
    target = tmp_path / "written-by-the-candidate"
    candidate = save_module(tmp_path / "candidate", writes(target))
    problem, _ = infra_validator.validate_with(candidate, str(jpegs[0]), reference())
    assert problem.startswith("the graph holds op WriteFile in function __inference_serve_")
    assert "\n" not in problem and not target.exists()


def test_the_validating_process_has_no_network(tmp_path):
    """Where this machine lets a user make a network namespace, the child cannot reach even a
    port listening on this host's loopback."""
    import socket
    import subprocess
    import sys

    prefix = infra_validator.without_network()
    if not prefix:
        pytest.skip("this machine lets no user make a network namespace")
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        reach = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), 2)\n"
                 " print('reached')\nexcept OSError as e:\n print('unreachable')")
        child = subprocess.run([*prefix, sys.executable, "-c", reach], capture_output=True,
                               text=True, timeout=60)
        here = subprocess.run([sys.executable, "-c", reach], capture_output=True, text=True,
                              timeout=60)
    assert (child.stdout.strip(), here.stdout.strip()) == ("unreachable", "reached")
