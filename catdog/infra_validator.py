"""The gate's infra validation, from the outside: runs `catdog.serving.infra_validation` on a
candidate (while the gate computes the candidate's answers beside it: `validated_answers`)
in a fresh process that imports no training code, in a scratch working folder and,
where Linux lets a user make one, a network namespace of its own with no network (as TFX's
InfraValidator runs the model server in a container beside the pipeline), and compares the
answers it reports with the in-process model's. Any difference is one line naming the signature
and the photo.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from catdog import data, evaluation, images, inference, versions
from catdog.errors import first_line
from catdog.serving.infra_validation import files_problem

# How far the served answers may be from the in-process model's, by the precision the candidate
# computes in: float32 computes the same sums; a bfloat16 (or float16) graph served without
# oneDNN rounds differently from the same graph with it (up to 0.019 measured on VGG16 at 150 px,
# about the distance between its bfloat16 and float32 answers), while a broken export (wrong
# weights, preprocessing or labels) is far further apart.
ANSWER_TOLERANCE = {"float32": 1e-5, "mixed_float16": 0.01, "mixed_bfloat16": 0.05}
VALIDATOR_TIMEOUT_SECONDS = 600
# The validator finds catdog where this process did (the folder holding the package comes first
# on its path): from a scratch folder, or one holding a clone named catdog, `-m catdog...`
# would otherwise find nothing, or the clone's serving/ configs.
_PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def reference_model(saved_model: Path, h5: Path
                    ) -> tuple[inference.Classifier | None, str | None]:
    """The in-process model a candidate's served answers are held against: its `.h5` when
    there is one, else its SavedModel loaded with TensorFlow; or, in one line, why there is
    none (damaged or outside files named before anything loads them)."""
    problem = files_problem(Path(saved_model))
    if problem:
        return None, problem
    try:
        return inference.load_classifier(h5 if Path(h5).is_file() else saved_model), None
    except Exception as error:  # whatever the loader raises: refused, in one line
        return None, (f"it cannot be loaded in-process ({type(error).__name__}: "
                      f"{first_line(error)[:300]})")


def validated_answers(saved_model: Path, photos: evaluation.Photos,
                      reference: inference.Classifier, batch_size: int, max_pixels: int
                      ) -> tuple[str | None, dict[str, Any], np.ndarray | None]:
    """The gate's two slow steps at once: infra validation in its child process and, beside
    it, the candidate's answers on `photos` from its SavedModel (the child mostly starts
    TensorFlow and loads while this process computes). (failure, report, answers), the
    answers None when infra validation refused the candidate."""
    with _validating(saved_model, photos, reference) as verdict:
        try:
            answers = evaluation.version_answers(saved_model, photos.files, batch_size,
                                                 max_pixels, "the candidate's SavedModel")
        except Exception:  # a candidate that does not load: the child says why, in words
            answers = None
        failure, report = verdict()
    if failure is None and answers is None:  # loads there, not here: the error, as it is
        answers = evaluation.version_answers(saved_model, photos.files, batch_size, max_pixels)
    return failure, report, None if failure else answers


@contextlib.contextmanager
def _validating(saved_model: Path, photos: evaluation.Photos, reference: inference.Classifier
                ) -> Iterator[Callable[[], tuple[str | None, dict[str, Any]]]]:
    """Infra validation started on one real photo of `photos`; the block runs beside it and
    calls the yielded function for the verdict."""
    logging.info("infra validation of %s", saved_model)
    with _one_real_image(photos.files, reference.image_size) as image_file:
        with _running(saved_model, image_file) as finish:
            yield lambda: _verdict(*finish(), saved_model, image_file, reference)


def validate_with(saved_model: Path, image_file: str,
                  reference: inference.Classifier) -> tuple[str | None, dict[str, Any]]:
    """Runs the validating process on `image_file` and compares its answers with
    `reference`'s."""
    with _running(saved_model, image_file) as finish:
        return _verdict(*finish(), saved_model, image_file, reference)


@contextlib.contextmanager
def _running(saved_model: Path, image_file: str
             ) -> Iterator[Callable[[], tuple[subprocess.CompletedProcess | None, float]]]:
    """The validating process, started in a scratch folder without network; the yielded
    function waits for it: (its result, or None past the timeout; seconds since its start)."""
    start = time.perf_counter()
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0",  # as the serve command runs
           "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_PARENT),
                                                       os.environ.get("PYTHONPATH")]))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [*without_network(), sys.executable, "-m", "catdog.serving.infra_validation",
               str(Path(saved_model).resolve()), str(Path(image_file).resolve())]
    with tempfile.TemporaryDirectory(prefix="catdog-infra-validation-") as scratch:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env, cwd=scratch)

        def finish() -> tuple[subprocess.CompletedProcess | None, float]:
            try:
                out, err = child.communicate(timeout=VALIDATOR_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                return None, time.perf_counter() - start
            return (subprocess.CompletedProcess(command, child.returncode, out, err),
                    time.perf_counter() - start)

        try:
            yield finish
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()


def _verdict(child: subprocess.CompletedProcess | None, seconds: float, saved_model: Path,
             image_file: str, reference: inference.Classifier
             ) -> tuple[str | None, dict[str, Any]]:
    """The validating process's report held against the in-process model's answers."""
    if child is None:
        return f"it did not answer within {VALIDATOR_TIMEOUT_SECONDS} s", {}
    report = _last_json_line(child.stdout)
    report["seconds"] = round(seconds, 2)
    if not report.get("ok"):
        last_words = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return report.get("failure") or (
            f"the validating process ended with status {child.returncode}: {last_words}"), report
    precision = versions.source_of(Path(saved_model)).get("precision", "float32")
    return _answer_problem(report, image_file, reference, precision), report


@functools.cache
def without_network() -> tuple[str, ...]:
    """The command prefix that runs a child in a network namespace of its own (`unshare --net`,
    as an unprivileged user through a user namespace), where it has no network; empty, with
    one line saying so, where this machine does not allow it."""
    command = ("unshare", "--net", "--map-root-user")
    if shutil.which("unshare"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([*command, "true"], capture_output=True, timeout=10).returncode == 0:
                return command
    logging.warning("this machine lets no user make a network namespace (unshare --net "
                    "--map-root-user failed): infra validation runs with the network")
    return ()


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


def _answer_problem(report: dict[str, Any], image_file: str, reference: inference.Classifier,
                    precision: str = "float32") -> str | None:
    """How the served answers differ from the in-process model's (by more than the candidate's
    precision allows), or how a served class name differs from its own answer's; None when
    they agree."""
    if report["labels"] != list(reference.class_names):
        return (f"its labels asset names {report['labels']}, the model was trained on "
                f"{list(reference.class_names)}")
    pixels = tf.cast(images.load_image(tf.constant(str(image_file)), reference.image_size),
                     tf.float32).numpy()[None]
    expected = reference.predict(pixels)[0]
    tolerance = ANSWER_TOLERANCE.get(precision, ANSWER_TOLERANCE["float32"])
    differences = {}
    for signature, answer in report["answers"].items():
        difference = float(np.max(np.abs(np.asarray(answer) - expected)))
        differences[signature] = difference
        if not difference <= tolerance:
            return (f"{signature} answers {np.round(answer, 6).tolist()} for {image_file}, the "
                    f"in-process model {np.round(expected, 6).tolist()} (differing by "
                    f"{difference:.2g}, more than {tolerance:g} for a {precision} export)")
    classes = report["classes"]
    for signature in ("serving_default", "predict_pixels"):
        label = reference.class_names[int(np.argmax(report["answers"][signature]))]
        if classes[signature] != label:
            return f"{signature} names the class {classes[signature]!r}, expected {label!r}"
    if classes["classify"] != list(reference.class_names):
        return f"classify names the classes {classes['classify']}"
    report["max_difference"] = max(differences.values())
    return None


@contextlib.contextmanager
def _one_real_image(files: data.ImageFiles, image_size: int) -> Iterator[str]:
    """A photo file to send through the signatures: the first that exists (prepared shards name
    their source files, which may be gone: then their first image, written as a PNG)."""
    found = next((path for path in files.paths if Path(path).is_file()), None)
    if found:
        yield found
        return
    pixels, _ = next(iter(data.decoded_images(files, image_size)))
    with tempfile.TemporaryDirectory(prefix="catdog-gate-") as folder:
        path = Path(folder) / "photo.png"
        path.write_bytes(tf.io.encode_png(pixels).numpy())
        yield str(path)
