"""catdog.figures: the numbers behind report.html, against cases worked by hand and against
plain loops over the same bootstrap draws."""

import itertools

import numpy as np
import pytest

from catdog import figures

# Four photos: scores of the positive class and whether each is positive.
SCORES = np.array([0.9, 0.8, 0.7, 0.6])
POSITIVE = np.array([True, False, True, False])


def test_roc_curve_points_and_area_worked_by_hand():
    fpr, tpr, thresholds = figures.roc_curve(SCORES, POSITIVE)
    # Lowering the threshold past 0.9 (a positive), 0.8 (a negative), 0.7, 0.6:
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds[1:].tolist() == [0.9, 0.8, 0.7, 0.6]
    # Of the 4 (positive, negative) pairs, 3 rank the positive higher.
    assert figures.roc_auc(SCORES, POSITIVE) == pytest.approx(0.75)


def test_tied_scores_make_one_point_and_count_half():
    assert figures.roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    fpr, tpr, _ = figures.roc_curve(np.array([0.5, 0.5, 0.2]), np.array([True, False, False]))
    assert fpr.tolist() == [0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 1.0, 1.0]


def test_precision_recall_points_worked_by_hand():
    precision, recall = figures.precision_recall_curve(SCORES, POSITIVE)
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert recall.tolist() == [0.5, 0.5, 1.0, 1.0]


def test_threshold_sweep_worked_by_hand():
    sweep = figures.threshold_sweep(SCORES, POSITIVE, np.array([0.0, 0.75, 0.95]))
    assert sweep["accuracy"].tolist() == [0.5, 0.5, 0.5]
    assert sweep["recall"].tolist() == [1.0, 0.5, 0.0]
    assert sweep["precision"][:2].tolist() == [0.5, 0.5] and np.isnan(sweep["precision"][2])


def test_calibration_bins_worked_by_hand():
    probabilities = np.array([[0.95, 0.05], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    bins = figures.calibration_bins(probabilities, labels, bins=5)  # (0, .2], ..., (.8, 1]
    assert bins["count"].tolist() == [0, 0, 1, 1, 2]
    assert bins["accuracy"][2:].tolist() == [1.0, 1.0, 0.5]
    assert bins["confidence"][2:] == pytest.approx([0.6, 0.7, 0.925])
    # ECE: (1/4)·|1 − .6| + (1/4)·|1 − .7| + (2/4)·|.5 − .925|
    assert figures.expected_calibration_error(labels, probabilities, bins=5) == pytest.approx(
        0.25 * 0.4 + 0.25 * 0.3 + 0.5 * 0.425)


def test_metrics_on_a_case_worked_by_hand():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    metrics = figures.compute_metrics(labels, probabilities, ("cats", "dogs"))
    assert metrics["accuracy"] == 0.5
    assert metrics["confusion_matrix"] == [[1, 1], [1, 1]]
    assert metrics["per_class"]["cats"]["precision"] == 0.5
    assert metrics["per_class"]["dogs"]["recall"] == 0.5
    assert metrics["per_class"]["dogs"]["f1"] == 0.5
    # Of the 4 (dog, cat) pairs, 3 rank the dog's "dogs" score higher.
    assert metrics["per_class"]["dogs"]["roc_auc"] == pytest.approx(0.75)
    assert metrics["log_loss"] == pytest.approx(-np.log([0.9, 0.4, 0.8, 0.3]).mean())
    # One image per confidence bin: (|1-.9| + |0-.6| + |1-.8| + |0-.7|) / 4.
    assert metrics["expected_calibration_error"] == pytest.approx(0.4)


def pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(positive scores above negative), ties half, by enumerating every pair."""
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_the_vectorised_bootstrap_equals_a_loop_over_the_same_draws():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 40)
    dog = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 40), 0, 1).round(2)  # some ties
    probabilities = np.stack([1 - dog, dog], axis=1)
    samples, seed = 200, 9
    resampled = figures._statistics(figures.resample_counts(40, samples, seed), labels,
                                    probabilities)

    draws = np.random.default_rng(seed).integers(0, 40, (samples, 40))  # as resample_counts
    correct = probabilities.argmax(axis=1) == labels
    by_loop = {"accuracy": [], "roc_auc": [], "log_loss": []}
    for rows in draws:
        by_loop["accuracy"].append(correct[rows].mean())
        if len(set(labels[rows])) == 2:
            by_loop["roc_auc"].append(pairwise_auc(dog[rows], labels[rows] == 1))
        by_loop["log_loss"].append(-np.log(probabilities[rows, labels[rows]]).mean())
    for name, values in by_loop.items():
        computed = resampled[name][np.isfinite(resampled[name])]
        assert computed == pytest.approx(np.array(values)), name
    loop_ece = [figures.expected_calibration_error(labels[rows], probabilities[rows])
                for rows in draws]
    assert resampled["expected_calibration_error"] == pytest.approx(np.array(loop_ece))


GRID = np.linspace(0, 1, 1001)  # resamples whose q-quantile is q itself
SYMMETRIC = np.array([0.4, 0.5, 0.6])  # jackknife values without skew: no acceleration


def test_bca_without_bias_or_acceleration_is_the_percentile_interval():
    assert figures.bca_interval(0.5, GRID, SYMMETRIC) == pytest.approx((0.025, 0.975))


def test_bca_moves_the_percentiles_by_the_bias_worked_by_hand():
    # 692 of the 1001 resamples lie below 0.6915: z0 = Φ⁻¹(0.69131) = 0.4995, so the levels are
    # Φ(2·z0 − 1.96) = Φ(−0.961) = 0.1683 and Φ(2·z0 + 1.96) = Φ(2.959) = 0.99846.
    low, high = figures.bca_interval(0.6915, GRID, SYMMETRIC)
    assert (low, high) == pytest.approx((0.1683, 0.99846), abs=5e-4)


def test_bca_moves_the_percentiles_by_the_acceleration_worked_by_hand():
    # Jackknife [0, 0, 0, 1]: d = mean − θᵢ = [.25, .25, .25, −.75], Σd³ = −0.375,
    # Σd² = 0.75, a = −0.375 / (6 · 0.75^1.5) = −0.096225. With z0 = 0 the levels are
    # Φ(−1.96 / (1 − a·(−1.96))) = Φ(−2.4156) = 0.00786 and Φ(1.96 / 1.18860) = Φ(1.6490) = 0.9504.
    low, high = figures.bca_interval(0.5, GRID, np.array([0.0, 0.0, 0.0, 1.0]))
    assert (low, high) == pytest.approx((0.00786, 0.9504), abs=5e-4)


def test_an_interval_always_holds_its_estimate_even_for_the_biased_ece():
    # Well-calibrated answers on 200 photos: resampling inflates the ECE, so most resamples lie
    # above the estimate and the plain percentile interval excludes it (seen in report.html).
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 200)
    labels = (rng.uniform(size=200) < 0.5).astype(int)
    predicted = np.where(rng.uniform(size=200) < confidence, labels, 1 - labels)
    probabilities = np.where(predicted[:, None] == np.arange(2), confidence[:, None],
                             1 - confidence[:, None])
    estimate = figures.expected_calibration_error(labels, probabilities)
    resampled = figures._statistics(figures.resample_counts(200), labels, probabilities)
    assert np.percentile(resampled["expected_calibration_error"], 2.5) > estimate
    intervals = figures.bootstrap_intervals(labels, probabilities)
    metrics = figures.compute_metrics(labels, probabilities, ("cats", "dogs"))
    for name, (low, high) in intervals.items():
        assert low <= metrics[name] <= high, name
    assert intervals["expected_calibration_error"][0] < estimate  # moved down, not only widened


def test_an_undefined_figure_has_an_undefined_interval():
    labels = np.zeros(10, int)  # one class only: ROC AUC is undefined
    probabilities = np.tile([0.8, 0.2], (10, 1))
    assert all(np.isnan(figures.bootstrap_intervals(labels, probabilities)["roc_auc"]))
    metrics = figures.compute_metrics(labels, probabilities, ("cats", "dogs"))
    assert np.isnan(metrics["roc_auc"]) and np.isnan(metrics["per_class"]["dogs"]["roc_auc"])
    assert metrics["accuracy"] == 1.0


def test_the_bootstrap_interval_holds_the_estimate_and_narrows_with_more_photos():
    rng = np.random.default_rng(0)

    def width(n: int) -> float:
        labels = rng.integers(0, 2, n)
        correct = rng.uniform(size=n) < 0.8
        predicted = np.where(correct, labels, 1 - labels)
        probabilities = np.eye(2)[predicted] * 0.8 + 0.1
        low, high = figures.bootstrap_intervals(labels, probabilities, 500)["accuracy"]
        assert low <= correct.mean() <= high
        return high - low

    assert width(1000) < width(100) / 2


def test_paired_difference_and_mcnemar_worked_by_hand():
    a = np.array([1, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 0, 0, 1], bool)
    difference = figures.paired_accuracy_difference(a, b, samples=500)
    assert difference["difference"] == pytest.approx(0.4)
    assert 0 <= difference["low"] <= 0.4 <= difference["high"] <= 1
    # 2 photos only A gets right, 0 only B: p = 2 · C(2,0)/2² = 0.5.
    assert figures.mcnemar(a, b) == {"a_only": 2, "b_only": 0, "p_value": 0.5}
    # 10 against 2: p = 2 · (C(12,0) + C(12,1) + C(12,2)) / 2¹² = 158/4096.
    a = np.array([True] * 10 + [False] * 2)
    assert figures.mcnemar(a, ~a)["p_value"] == pytest.approx(158 / 4096)
    assert figures.mcnemar(a, a) == {"a_only": 0, "b_only": 0, "p_value": 1.0}
