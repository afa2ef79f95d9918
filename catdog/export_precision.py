"""Which precision a run's exports compute in (--export_precision).

    float32   always (the default): runs well on any CPU, and TF Serving may run on another
              CPU than the one that trained;
    compute   the policy training computed in (e.g. mixed_bfloat16), unmeasured;
    auto      bfloat16 when the run trained in mixed_bfloat16 (on a CPU where the start-up
              probe measured it faster) and, on a sample of the evaluation photos, the bfloat16
              model answers as the float32 one up to bfloat16's rounding (every probability
              within BFLOAT16_ROUNDING, the distance infra validation allows a bfloat16
              export) and at least MIN_BFLOAT16_SPEEDUP times faster; else float32. Accuracy
              on so few photos is not the test (one near-tie that tips is 3 points of 32):
              the gate then judges the bfloat16 graph itself on every evaluation photo, as it
              judges any candidate. The measurement is kept in the candidate's record, so
              gate.json carries it.

The sample is answered by the trained weights under both policies in this process, with
TensorFlow's kernels as this process has them (oneDNN where it is on, TensorFlow's default on
x86 Linux): what `catdog.evaluate` and the gate run. A server without oneDNN (`catdog.serve`;
TF Serving started with TF_ENABLE_ONEDNN_OPTS=0) runs a bfloat16 export slower than float32.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from catdog import data, distribute, evaluation
from catdog import model as model_lib
from catdog.infra_validator import ANSWER_TOLERANCE

# Evaluation photos both policies answer under --export_precision=auto: one batch, enough to
# bound how far the answers are apart and to time both (64 cost 12 s of a 190 s quickstart run
# on a 2-core EPYC; the verdict does not rest on accuracy, which 64 photos could not tell).
SAMPLE_PHOTOS = 32
WARM_UP_PHOTOS = 4  # traced and warmed on these before the timed pass
BFLOAT16 = "mixed_bfloat16"
BFLOAT16_ROUNDING = ANSWER_TOLERANCE[BFLOAT16]  # the same model, rounded (infra_validator.py)


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """The Keras policy the exports compute in, why, and (auto) what was measured."""

    policy: str
    reason: str
    measured: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "reason": self.reason, **self.measured}


def choose(requested: str, trained_in: str, model: keras.Model, photos: evaluation.Photos,
           max_pixels: int, batch_size: int = 32) -> PrecisionChoice:
    """--export_precision for a model trained under the Keras policy `trained_in` (module
    docstring); `photos` are the run's evaluation photos."""
    if requested == "float32":
        return PrecisionChoice("float32", "--export_precision=float32")
    if requested == "compute":
        return PrecisionChoice(trained_in, "--export_precision=compute: the training policy")
    if trained_in != BFLOAT16:
        return PrecisionChoice("float32", f"auto: the run trained in {trained_in}")
    return decide(compare(model, photos, max_pixels, batch_size))


def decide(measured: dict[str, Any]) -> PrecisionChoice:
    """auto's verdict on `compare`'s measurement: bfloat16 when its answers are float32's up
    to BFLOAT16_ROUNDING and it is at least MIN_BFLOAT16_SPEEDUP times faster."""
    rounded = measured["max_probability_difference"] <= BFLOAT16_ROUNDING
    faster = measured["speedup"] >= distribute.MIN_BFLOAT16_SPEEDUP
    words = (f"on {measured['photos']} evaluation photos bfloat16's answers were at most "
             f"{measured['max_probability_difference']:.4f} from float32's "
             f"({measured['labels_differing']} labels differ; accuracy "
             f"{measured['bfloat16_accuracy']:.4f} against {measured['float32_accuracy']:.4f}) "
             f"at {measured['speedup']:.2f}x float32's speed")
    if rounded and faster:
        return PrecisionChoice(BFLOAT16, f"auto: {words}", measured)
    why = (f"further than bfloat16's rounding ({BFLOAT16_ROUNDING:g})" if not rounded
           else f"below {distribute.MIN_BFLOAT16_SPEEDUP}x")
    return PrecisionChoice("float32", f"auto: {words}: {why}, so float32", measured)


def compare(model: keras.Model, photos: evaluation.Photos, max_pixels: int,
            batch_size: int = 32) -> dict[str, Any]:
    """The trained weights under float32 and under mixed_bfloat16 on the first SAMPLE_PHOTOS
    evaluation photos: each one's accuracy and images/s, how many labels differ, and the
    largest difference in a probability."""
    pixels, labels = _sample(photos, model.input_shape[1], max_pixels)
    answers, speed = {}, {}
    for policy in ("float32", BFLOAT16):
        answers[policy], speed[policy] = _answer(model_lib.in_policy(model, policy), pixels,
                                                 batch_size)
    f32, bf16 = answers["float32"], answers[BFLOAT16]
    return {"photos": len(labels),
            "float32_accuracy": float(np.mean(f32.argmax(1) == labels)),
            "bfloat16_accuracy": float(np.mean(bf16.argmax(1) == labels)),
            "labels_differing": int(np.sum(f32.argmax(1) != bf16.argmax(1))),
            "max_probability_difference": float(np.max(np.abs(f32 - bf16))),
            "float32_images_per_second": round(speed["float32"], 2),
            "bfloat16_images_per_second": round(speed[BFLOAT16], 2),
            "speedup": round(speed[BFLOAT16] / speed["float32"], 3),
            "onednn": _onednn_on()}


def _onednn_on() -> bool:
    """Whether this process computes with oneDNN's kernels (TF_ENABLE_ONEDNN_OPTS; TensorFlow's
    default on x86 Linux): bfloat16 is fast with them and slow without."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def _sample(photos: evaluation.Photos, image_size: int, max_pixels: int
            ) -> tuple[np.ndarray, np.ndarray]:
    decoded = data.decoded_images(photos.files, image_size, max_pixels).take(SAMPLE_PHOTOS)
    pixels, labels = zip(*((p.numpy(), int(label)) for p, label in decoded))
    return np.stack(pixels).astype(np.float32), np.asarray(labels)


def _answer(model: keras.Model, pixels: np.ndarray, batch_size: int
            ) -> tuple[np.ndarray, float]:
    """Probabilities for `pixels` and images/s, timed after warming up on WARM_UP_PHOTOS of
    them (one trace serves every batch size). One pass: auto's threshold is 1.1x, where CPUs
    with native bfloat16 measure 0.55x to 6x."""
    spec = tf.TensorSpec([None, *pixels.shape[1:]], tf.float32)
    forward = tf.function(lambda batch: tf.cast(model(batch, training=False), tf.float32),
                          input_signature=[spec])
    batches = [tf.constant(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    forward(tf.constant(pixels[:WARM_UP_PHOTOS]))
    start = time.perf_counter()
    answers = np.concatenate([forward(b).numpy() for b in batches])
    return answers, len(pixels) / (time.perf_counter() - start)
