"""catdog.infra_validator: the gate's side of infra validation. The validating process's report
is read from its last JSON line, and its answers are held against the in-process model's: each
way they can differ is one line naming the signature or the asset (the process itself is
tests/serving/test_infra_validation.py's; a whole gate run, test_publish.py's)."""

from __future__ import annotations

import numpy as np
import pytest

from catdog import inference, infra_validator

from conftest import CLASSES

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
    (report(classes={"serving_default": "cats", "predict_pixels": "dogs",
                     "classify": list(CLASSES)}),
     "serving_default names the class 'cats', expected 'dogs'"),
    (report(classes={"serving_default": "dogs", "predict_pixels": "dogs",
                     "classify": ["dogs", "cats"]}), "classify names the classes ['dogs', 'cats']"),
], ids=["labels asset", "answers apart", "class name", "classify's classes"])
def test_each_difference_is_one_line_naming_what_differs(jpegs, found, problem):
    line = infra_validator._answer_problem(found, str(jpegs[0]), reference())
    assert line.startswith(problem) and "\n" not in line
