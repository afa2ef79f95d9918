"""catdog.serving.infra_validation: the publish gate's look at a candidate as the server sees it:
the signature contract clients rely on, a load as a servable, warm-up, one real image."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from catdog import contract
from catdog.serving import infra_validation
from catdog.serving.servable import Servable

from conftest import CLASSES, SERVED_IMAGE_SIZE, expected_probabilities, garble_warmup


@pytest.fixture(scope="module")
def version(exported):
    return next(exported[2].iterdir())


def signature_defs(path):
    servable = Servable("catdog", 1, path)
    try:
        return servable.signature_defs
    finally:
        servable.close()


def test_a_catdog_export_keeps_the_contract(version):
    assert infra_validation.contract_problems(signature_defs(version), list(CLASSES)) == []
    assert infra_validation.image_size_of(signature_defs(version)) == SERVED_IMAGE_SIZE


@pytest.mark.slow  # a second SavedModel export
def test_a_plain_keras_export_breaks_the_contract_in_named_ways(exported, tmp_path):
    """keras' own model.export: serving_default takes pixels under the input's name and answers
    `output_0`; no predict_pixels or classify signature."""
    model = exported[0]
    plain = tmp_path / "plain"
    model.export(str(plain), format="tf_saved_model", verbose=False)
    problems = infra_validation.contract_problems(signature_defs(plain), list(CLASSES))
    assert problems == [f"signature {contract.PREDICT_PIXELS} has no input pixels of shape "
                        "[-1, S, S, 3] (float32 RGB pixels)"]


def test_a_changed_input_dtype_or_missing_output_is_named(version):
    defs = {key: type(value).FromString(value.SerializeToString())
            for key, value in signature_defs(version).items()}
    defs[contract.SERVING_DEFAULT].inputs[contract.IMAGE_BYTES].dtype = 1  # DT_FLOAT
    del defs[contract.CLASSIFY].outputs[contract.SCORES]
    problems = infra_validation.contract_problems(defs, list(CLASSES))
    assert problems == [
        "signature serving_default input image_bytes is float32 None, expected string None",
        "signature classify has outputs ['classes'], expected ['classes', 'scores']"]


@pytest.mark.parametrize("labels", [["cats"], ["cats", "cats"], ["cats", ""]])
def test_a_labels_asset_that_does_not_name_the_classes_is_refused(version, labels):
    (problem,) = infra_validation.contract_problems(signature_defs(version), labels)
    assert problem.startswith("the labels asset assets/labels.txt holds")


def test_the_report_carries_each_signatures_answer_for_a_real_image(exported, version, jpegs):
    report = infra_validation.validate(version, jpegs[0])
    assert report["ok"] and report["labels"] == list(CLASSES)
    assert report["warmup_requests"] == 6  # two batches for each of the three signatures
    expected = expected_probabilities(exported[0], jpegs[:1])[0]
    for signature in (contract.SERVING_DEFAULT, contract.PREDICT_PIXELS, contract.CLASSIFY):
        np.testing.assert_allclose(report["answers"][signature], expected, atol=1e-5)
    label = CLASSES[int(expected.argmax())]
    assert report["classes"] == {"serving_default": label, "predict_pixels": label,
                                 "classify": list(CLASSES)}


DATA = "variables/variables.data-00000-of-00001"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def link_the_labels_to_a_secret(version: Path) -> None:
    """The labels asset as a link to a file outside the version: its content must not be read
    into any refusal or record."""
    secret = version.parent / "secret.txt"
    secret.write_text("cats\nTOP-SECRET\n")
    (version / "assets" / "labels.txt").unlink()
    (version / "assets" / "labels.txt").symlink_to(secret)


@pytest.mark.parametrize("damage, failure", [
    (lambda v: truncate(v / DATA), f"^{DATA} is damaged or truncated \\("),
    (lambda v: flip_a_byte(v / DATA), f"^{DATA} is damaged or truncated \\(.*[Cc]hecksum"),
    (lambda v: (v / DATA).unlink(), r"^variables/variables.data-\* is missing"),
    (lambda v: (v / "variables/variables.index").unlink(),
     r"^variables/variables.index is missing"),
    (lambda v: (v / "saved_model.pb").write_bytes(b"not a protobuf"),
     r"^saved_model.pb is not a SavedModel"),
    (lambda v: (v / "assets/labels.txt").unlink(), r"^assets/labels.txt is missing: the labels "
                                                   "asset names the classes"),
    (garble_warmup, r"^a warm-up request of assets.extra/tf_serving_warmup_requests failed: "),
    (link_the_labels_to_a_secret, r"^assets/labels.txt is a link to a file outside the version "
                                  r"folder; a version holds its own files \(refused unread\)$"),
], ids=["truncated variables", "a flipped byte", "no variables data", "no variables index",
        "saved_model.pb garbage", "no labels asset", "a failing warm-up request",
        "labels linked outside"])
def test_each_refusal_is_one_line_naming_the_file_and_what_is_wrong(version, tmp_path, jpegs,
                                                                     damage, failure):
    damaged = tmp_path / "1"
    shutil.copytree(version, damaged)
    damage(damaged)
    report = infra_validation.validate(damaged, jpegs[0])
    assert not report["ok"]
    assert re.search(failure, report["failure"]), report["failure"]
    assert "\n" not in report["failure"] and "Traceback" not in report["failure"]


@pytest.mark.slow  # a fresh process
def test_the_command_prints_one_json_object_and_loads_no_training_code(version, jpegs):
    code = ("import runpy, sys, json; sys.argv = ['x', sys.argv[1], sys.argv[2]]\n"
            "try:\n    runpy.run_module('catdog.serving.infra_validation', run_name='__main__')\n"
            "except SystemExit as e:\n    status = e.code\n"
            "print(json.dumps({'status': status, 'modules': sorted(m for m in sys.modules if "
            "m.startswith('catdog'))}))")
    result = subprocess.run([sys.executable, "-c", code, str(version), str(jpegs[0])],
                            capture_output=True, text=True, timeout=300)
    report, loaded = (json.loads(line) for line in result.stdout.splitlines()[-2:])
    assert report["ok"] and loaded["status"] == 0
    training = {"catdog.model", "catdog.data", "catdog.train", "catdog.export",
                "catdog.signatures", "catdog.config", "catdog.publish"}
    assert not training & set(loaded["modules"])

