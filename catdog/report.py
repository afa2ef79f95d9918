"""report.html: one self-contained page a person reads before shipping a model.

Every plot is drawn by matplotlib and embedded as a PNG data URI, every photo too; the page has
no script, no external URL and no web font, so it opens offline, from a CI artifact or an
e-mail. `evaluate.py` computes what is shown (`figures.py` the numbers, `gradcam.py` the heat
maps); this module only draws and lays it out.

Sections (their ids, which the browser test checks): identity, data, headline, confusion,
curves, calibration, threshold, per-class, errors, and with a baseline, comparison.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from catdog import figures  # noqa: E402

SECTIONS = ("identity", "data", "headline", "confusion", "curves", "calibration", "threshold",
            "per-class", "errors")
COMPARISON = "comparison"
THRESHOLDS = np.linspace(0.0, 1.0, 101)
_FIGURE_NAMES = {"accuracy": "accuracy", "roc_auc": "ROC AUC", "log_loss": "log loss",
                 "expected_calibration_error": "expected calibration error"}
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ccc;
padding: .25em .6em; text-align: right; } th:first-child, td:first-child { text-align: left; }
img.plot { max-width: 100%; } .muted { color: #777; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; } .gallery figure { margin: 0;
width: 262px; font-size: .8em; } .gallery img { width: 128px; height: 128px; }
"""


@dataclasses.dataclass(frozen=True)
class ModelResult:
    """One model's answers on the evaluation photos, and what is known about the model."""

    label: str  # how the page names it: "model" or "baseline"
    identity: dict[str, Any]  # path, version, source run and epoch, image size, class names
    probabilities: np.ndarray  # [N, C]
    metrics: dict[str, Any]  # figures.compute_metrics
    intervals: dict[str, tuple[float, float]]  # figures.bootstrap_intervals


@dataclasses.dataclass(frozen=True)
class Photo:
    """One photo of a gallery: the photo, optionally its heat-map overlay, and a caption."""

    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    overlay: np.ndarray | None = None


def image_uri(image: np.ndarray) -> str:
    """A uint8 RGB image as a PNG data URI."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plot(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{html.escape(alt)}">'


# --- plots --------------------------------------------------------------------------------------

def confusion_plot(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    """Counts and row-normalised shares, side by side, each cell written in."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    for axis, values, title, form in ((axes[0], confusion, "counts", "{:d}"),
                                      (axes[1], shares, "share of each true class", "{:.2f}")):
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, form.format(value), ha="center", va="center",
                      color="white" if shares[row, column] > 0.5 else "black")
        axis.set_xticks(range(len(class_names)), class_names)
        axis.set_yticks(range(len(class_names)), class_names)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(title)
    return _figure_uri(figure)


def curves_plot(results: Sequence[ModelResult], labels: np.ndarray, positive: int,
                class_name: str) -> str:
    """ROC and precision-recall curves of P(`class_name`), one line per model."""
    figure, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.2))
    for result, style in zip(results, ("-", "--")):
        scores, truth = result.probabilities[:, positive], labels == positive
        fpr, tpr, _ = figures.roc_curve(scores, truth)
        roc.plot(fpr, tpr, style, label=f"{result.label} (AUC {figures.area(fpr, tpr):.3f})")
        precision, recall = figures.precision_recall_curve(scores, truth)
        pr.plot(recall, precision, style, label=result.label)
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(xlabel="false positive rate", ylabel="true positive rate",
            title=f"ROC, {class_name} as positive")
    pr.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02),
           title=f"precision-recall, {class_name} as positive")
    for axis in (roc, pr):
        axis.legend(loc="lower right" if axis is roc else "lower left")
        axis.grid(alpha=0.3)
    return _figure_uri(figure)


def calibration_plot(result: ModelResult, labels: np.ndarray) -> str:
    """Reliability diagram (accuracy against mean confidence per bin) over the histogram of the
    top-class confidence."""
    bins = figures.calibration_bins(result.probabilities, labels)
    figure, (diagram, histogram) = plt.subplots(
        2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centres = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    width = np.diff(bins["edges"])
    diagram.bar(centres, np.nan_to_num(bins["accuracy"]), width=width, edgecolor="black",
                alpha=0.7, label="accuracy in bin")
    diagram.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    filled = bins["count"] > 0
    diagram.plot(bins["confidence"][filled], bins["accuracy"][filled], "o-", color="firebrick",
                 label="mean confidence → accuracy")
    diagram.set(ylabel="accuracy", ylim=(0, 1), title=(
        f"reliability (ECE {result.metrics['expected_calibration_error']:.3f})"))
    diagram.legend(loc="upper left")
    histogram.bar(centres, bins["count"], width=width, edgecolor="black", color="grey")
    histogram.set(xlabel="confidence of the predicted class", ylabel="images", xlim=(0, 1))
    return _figure_uri(figure)


def threshold_plot(result: ModelResult, labels: np.ndarray, positive: int,
                   class_name: str) -> str:
    """Accuracy, precision and recall of 'predict `class_name` when P >= t' against t."""
    sweep = figures.threshold_sweep(result.probabilities[:, positive], labels == positive,
                                    THRESHOLDS)
    figure, axis = plt.subplots(figsize=(7, 3.8))
    for name in ("accuracy", "precision", "recall"):
        axis.plot(sweep["threshold"], sweep[name], label=name)
    axis.axvline(0.5, linestyle=":", color="grey")
    axis.set(xlabel=f"threshold on P({class_name})", ylim=(0, 1.02),
             title=f"predicting {class_name} when P({class_name}) >= threshold")
    axis.legend(loc="lower center")
    axis.grid(alpha=0.3)
    return _figure_uri(figure)


# --- the page -----------------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _interval(result: ModelResult, name: str) -> str:
    low, high = result.intervals[name]
    return f"{result.metrics[name]:.4f} [{low:.4f}, {high:.4f}]"


def _gallery(photos: Sequence[Photo]) -> str:
    if not photos:
        return '<p class="muted">none</p>'
    items = []
    for photo in photos:
        images = f'<img src="{image_uri(photo.image)}" alt="photo">'
        if photo.overlay is not None:
            images += f'<img src="{image_uri(photo.overlay)}" alt="Grad-CAM heat map">'
        items.append(f"<figure>{images}<figcaption>{html.escape(photo.caption)}"
                     "</figcaption></figure>")
    return f'<div class="gallery">{"".join(items)}</div>'


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{body}</section>'


def render(results: Sequence[ModelResult], labels: np.ndarray, class_names: Sequence[str],
           data: dict[str, Any], errors: Sequence[Photo], explained: int,
           comparison: dict[str, Any] | None = None) -> str:
    """The whole page: `results[0]` is the model evaluated, `results[1]` its baseline if any;
    `errors` the misclassified photos (most confident first), the first `explained` with a
    heat map; `comparison` the paired figures and the photos the two models disagree on."""
    model = results[0]
    positive = len(class_names) - 1  # P(dog) for catdog's two classes
    identity_rows = [(result.label, *(result.identity.get(k, "") for k in (
        "path", "version", "source", "image_size", "class_names"))) for result in results]
    headline_rows = [(name, *(_interval(r, key) for r in results))
                     for key, name in _FIGURE_NAMES.items()]
    per_class_rows = [(name, *(f"{model.metrics['per_class'][name][k]:.4f}" for k in (
        "precision", "recall", "f1", "roc_auc")), model.metrics["per_class"][name]["support"])
        for name in class_names]
    skipped = "".join(f"<li>{html.escape(s['path'])}: {html.escape(s['reason'])}</li>"
                      for s in data["skipped"])
    parts = [
        _section("identity", "Model", _table(
            ("", "path", "version", "source run and epoch", "image size", "classes"),
            identity_rows)),
        _section("data", "Data", f"<p>{html.escape(str(data['folder']))}: {data['images']} "
                 f"images {html.escape(str(data['counts']))}; {len(data['skipped'])} files "
                 f"skipped</p><ul>{skipped}</ul>"),
        _section("headline", "Headline figures", _table(
            ("figure", *(f"{r.label} (95% bootstrap interval, {data['bootstrap']} resamples)"
                         for r in results)), headline_rows)),
        _section("confusion", "Confusion matrix", _plot(confusion_plot(
            np.array(model.metrics["confusion_matrix"]), class_names), "confusion matrix")),
        _section("curves", "ROC and precision-recall", _plot(curves_plot(
            results, labels, positive, class_names[positive]), "ROC and PR curves")),
        _section("calibration", "Calibration", _plot(calibration_plot(model, labels),
                                                     "reliability diagram")),
        _section("threshold", "Decision threshold", _plot(threshold_plot(
            model, labels, positive, class_names[positive]), "metrics against threshold")),
        _section("per-class", "Per class", _table(
            ("class", "precision", "recall", "F1", "ROC AUC", "support"), per_class_rows)),
        _section("errors", "Misclassified photos", (
            f"<p>{len(errors)} shown, most confidently wrong first; the first {explained} with "
            "the Grad-CAM heat map of the predicted class (block5_conv3) beside the photo.</p>"
            + _gallery(errors))),
    ]
    if comparison:
        parts.append(_section(COMPARISON, "Comparison with the baseline",
                              _comparison_body(comparison)))
    title = f"Evaluation of {model.identity.get('path', '')}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n")


def _comparison_body(comparison: dict[str, Any]) -> str:
    difference, test = comparison["accuracy_difference"], comparison["mcnemar"]
    rows = [(_FIGURE_NAMES[name], f"{values['model']:.4f}", f"{values['baseline']:.4f}",
             f"{values['model'] - values['baseline']:+.4f}")
            for name, values in comparison["figures"].items()]
    return (
        _table(("figure", "model", "baseline", "model − baseline"), rows)
        + f"<p>Accuracy difference {difference['difference']:+.4f}, paired bootstrap 95% "
          f"interval [{difference['low']:+.4f}, {difference['high']:+.4f}]. McNemar's exact "
          f"test: {test['a_only']} photos only the model gets right, {test['b_only']} only the "
          f"baseline; p = {test['p_value']:.4g}.</p>"
        + f"<h3>Photos the two disagree on ({len(comparison['disagreements'])})</h3>"
        + _gallery(comparison["disagreements"]))
