"""The numbers of an evaluation, from true labels and predicted probabilities: numpy only.

`compute_metrics` gives the figures `catdog.evaluate` prints and the publish gate compares; the
other functions give what the report draws (curves, calibration bins, the threshold sweep) and
how sure each figure is (bootstrap intervals, a paired bootstrap and McNemar's test between two
models on the same photos). Every resampling is vectorised: B resamples of N images are one
[B, N] array of counts, not a Python loop.

Intervals are BCa bootstrap intervals (bias-corrected and accelerated; Efron, 1987): the
percentiles taken are moved by how far the resamples sit from the estimate (bias) and by how
fast the figure's spread changes with it (acceleration, from the jackknife). A plain percentile
interval of the expected calibration error can exclude its own estimate, since resampling makes
that figure larger on average.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

CALIBRATION_BINS = 15
BOOTSTRAP_SAMPLES = 1000
JACKKNIFE_GROUPS = 400  # leave-one-group-out jackknife for the acceleration beyond this many photos
INTERVAL_METHOD = (
    "Intervals: 95% BCa bootstrap (bias-corrected and accelerated, Efron 1987) over resamples "
    "of the photos; where one would still exclude its estimate (a figure biased under "
    "resampling, as the expected calibration error is biased upward), it is widened to reach it.")
LOG_EPSILON = 1e-7  # probabilities are clipped here before the log, as Keras' cross-entropy does


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """(false positive rates, true positive rates, thresholds), one point per distinct score
    from the highest down, starting at (0, 0): a positive is predicted when score >= threshold."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order].astype(bool)
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(positive)[last_of_each]
    false_positives = (last_of_each + 1) - true_positives
    tpr = np.r_[0.0, true_positives / max(positive.sum(), 1)]
    fpr = np.r_[0.0, false_positives / max((~positive).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, scores[last_of_each]]


def precision_recall_curve(scores: np.ndarray, positive: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at each distinct score threshold, from the highest down."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order].astype(bool)
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(positive)[last_of_each]
    return true_positives / (last_of_each + 1), true_positives / max(positive.sum(), 1)


def area(x: np.ndarray, y: np.ndarray) -> float:
    """The trapezoid area under y(x)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The area under the ROC curve: P(a positive scores above a negative), ties counting half;
    NaN (undefined) when the photos hold no positive or no negative."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return math.nan
    fpr, tpr, _ = roc_curve(scores, positive)
    return area(fpr, tpr)


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray,
                     bins: int = CALIBRATION_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin (equal widths over (0, 1]): image count, accuracy and mean confidence
    of the top class (NaN where a bin is empty)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = _bin_of(confidence, bins)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        accuracy = np.bincount(index, correct, bins) / count
        mean_confidence = np.bincount(index, confidence, bins) / count
    return {"edges": np.linspace(0, 1, bins + 1), "count": count, "accuracy": accuracy,
            "confidence": mean_confidence}


def _bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The bin (low, high] holding each confidence."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> float:
    """Σ over confidence bins of (bin share) × |accuracy − mean confidence| (Guo et al., 2017)."""
    return float(_bootstrapped_ece(_counts_of_all(len(labels)), labels, probabilities, bins)[0])


def threshold_sweep(positive_probability: np.ndarray, positive: np.ndarray,
                    thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, precision and recall of 'positive when P(positive) >= t' for each t."""
    predicted = positive_probability[None, :] >= thresholds[:, None]
    positive = positive.astype(bool)[None, :]
    true_positives = (predicted & positive).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted.sum(axis=1) > 0,
                             true_positives / predicted.sum(axis=1), np.nan)
    return {"threshold": thresholds, "accuracy": (predicted == positive).mean(axis=1),
            "precision": precision, "recall": true_positives / max(positive.sum(), 1)}


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray,
                    class_names: Sequence[str]) -> dict[str, Any]:
    """Every headline figure of the report, from true labels and predicted probabilities."""
    labels = np.asarray(labels)
    predicted = probabilities.argmax(axis=1)
    count = len(class_names)
    confusion = np.bincount(labels * count + predicted, minlength=count * count).reshape(
        count, count)
    per_class = {}
    for i, name in enumerate(class_names):
        true_positives = confusion[i, i]
        precision = true_positives / max(confusion[:, i].sum(), 1)
        recall = true_positives / max(confusion[i, :].sum(), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall),
                           "f1": float(f1), "support": int(confusion[i, :].sum()),
                           "roc_auc": roc_auc(probabilities[:, i], labels == i)}
    return {
        "images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "roc_auc": float(np.mean([c["roc_auc"] for c in per_class.values()])),
        "log_loss": float(_log_losses(labels, probabilities).mean()),
        "expected_calibration_error": expected_calibration_error(labels, probabilities),
    }


def _log_losses(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    true = probabilities[np.arange(len(labels)), labels]
    return -np.log(np.clip(true, LOG_EPSILON, 1.0))


# --- how sure: the bootstrap ------------------------------------------------------------------

def resample_counts(size: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """[samples, size]: how often each image is drawn in each bootstrap resample."""
    draws = np.random.default_rng(seed).integers(0, size, (samples, size))
    rows = np.repeat(np.arange(samples), size)
    return np.bincount(rows * size + draws.ravel(), minlength=samples * size).reshape(
        samples, size).astype(np.float64)


def _counts_of_all(size: int) -> np.ndarray:
    return np.ones((1, size))


def _bootstrapped_ece(counts: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                      bins: int) -> np.ndarray:
    """ECE under each row of counts: (1/N) Σ_bins |Σ_{i in bin} (correct_i − confidence_i)|."""
    confidence = probabilities.max(axis=1)
    gap = (probabilities.argmax(axis=1) == labels) - confidence
    one_hot = np.eye(bins)[_bin_of(confidence, bins)]  # [N, bins]
    return np.abs((counts * gap) @ one_hot).sum(axis=1) / counts.sum(axis=1)


def _bootstrapped_auc(counts: np.ndarray, scores: np.ndarray, positive: np.ndarray
                      ) -> np.ndarray:
    """ROC AUC under each row of counts: Σ over positives i of the weight of negatives scoring
    below i (ties counting half), over (weight of positives × weight of negatives)."""
    values, group = np.unique(scores, return_inverse=True)
    one_hot = np.eye(len(values))[group]  # [N, distinct scores]
    positives = (counts * positive) @ one_hot  # [B, distinct]
    negatives = (counts * ~positive) @ one_hot
    below = np.cumsum(negatives, axis=1) - negatives
    wins = (positives * (below + negatives / 2)).sum(axis=1)
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)  # 0 in a one-class resample: NaN
    return np.divide(wins, pairs, out=np.full(len(wins), np.nan), where=pairs > 0)


def jackknife_counts(size: int, groups: int = JACKKNIFE_GROUPS) -> np.ndarray:
    """[G, size]: each row leaves out one photo (or, past `groups` photos, one of `groups`
    interleaved groups of them)."""
    groups = min(size, groups)
    counts = np.ones((groups, size))
    counts[np.arange(size) % groups, np.arange(size)] = 0
    return counts


def bca_interval(estimate: float, resampled: np.ndarray, jackknife: np.ndarray,
                 confidence: float = 0.95) -> tuple[float, float]:
    """The BCa interval of a figure from its estimate, its values over bootstrap resamples and
    over jackknife rows (NaN values, from resamples where it is undefined, left out), widened
    to hold the estimate when it would not; (NaN, NaN) when the figure is undefined."""
    resampled = resampled[np.isfinite(resampled)]
    jackknife = jackknife[np.isfinite(jackknife)]
    if not (math.isfinite(estimate) and len(resampled)):
        return math.nan, math.nan
    normal = NormalDist()
    below = (np.sum(resampled < estimate) + np.sum(resampled == estimate) / 2) / len(resampled)
    half_step = 0.5 / len(resampled)
    bias = normal.inv_cdf(min(max(below, half_step), 1 - half_step))
    spread = jackknife.mean() - jackknife
    denominator = 6 * np.sum(spread ** 2) ** 1.5
    acceleration = float(np.sum(spread ** 3) / denominator) if denominator > 0 else 0.0
    tail = (1 - confidence) / 2
    levels = []
    for z in (normal.inv_cdf(tail), normal.inv_cdf(1 - tail)):
        shifted = bias + (bias + z) / (1 - acceleration * (bias + z))
        levels.append(normal.cdf(shifted))
    low, high = np.quantile(resampled, levels)
    return float(min(low, estimate)), float(max(high, estimate))


def _statistics(counts: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
                ) -> dict[str, np.ndarray]:
    """Accuracy, ROC AUC (mean one-vs-rest), log loss and ECE under each row of image counts."""
    totals = counts.sum(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # With two classes both one-vs-rest AUCs are the same number: one is computed.
    classes = [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1])
    aucs = [_bootstrapped_auc(counts, probabilities[:, i], labels == i) for i in classes]
    return {
        "accuracy": counts @ correct / totals,
        "roc_auc": np.mean(aucs, axis=0),  # NaN where a resample lacks a class: left out
        "log_loss": counts @ _log_losses(labels, probabilities) / totals,
        "expected_calibration_error": _bootstrapped_ece(counts, labels, probabilities,
                                                        CALIBRATION_BINS),
    }


def _intervals(statistics: Callable[[np.ndarray], dict[str, np.ndarray]], size: int,
               samples: int, seed: int, confidence: float) -> dict[str, tuple[float, float]]:
    """BCa intervals of every figure that `statistics` computes under rows of image counts."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a row without photos: NaN, left out
        estimates = statistics(_counts_of_all(size))
        resampled = statistics(resample_counts(size, samples, seed))
        jackknife = statistics(jackknife_counts(size))
    return {name: bca_interval(float(estimates[name][0]), resampled[name], jackknife[name],
                               confidence) for name in estimates}


def bootstrap_intervals(labels: np.ndarray, probabilities: np.ndarray,
                        samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """BCa intervals of accuracy, ROC AUC (mean one-vs-rest), log loss and ECE over `samples`
    resamples of the images, all from one [samples, N] count array."""
    labels = np.asarray(labels)
    return _intervals(lambda counts: _statistics(counts, labels, probabilities), len(labels),
                      samples, seed, confidence)


def paired_accuracy_difference(correct_a: np.ndarray, correct_b: np.ndarray,
                               samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                               confidence: float = 0.95) -> dict[str, float]:
    """Accuracy of A minus accuracy of B on the same images, with a paired BCa bootstrap
    interval (each resample draws images, and both models' answers for them)."""
    difference = correct_a.astype(float) - correct_b.astype(float)
    low, high = _intervals(lambda counts: {"d": counts @ difference / counts.sum(axis=1)},
                           len(difference), samples, seed, confidence)["d"]
    return {"difference": float(difference.mean()), "low": low, "high": high}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test on the disagreements: `a_only` images only A gets right, `b_only`
    only B; the two-sided p-value of so uneven a split under Binomial(a_only + b_only, 1/2)."""
    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2 * tail)}
