"""Every artefact of an evaluation, rendered from the evaluator's figures and written whole:

    report.html         the page to look at: headline figures with bootstrap intervals,
                        confusion matrix, ROC and precision-recall curves, calibration, the
                        decision threshold, per-class figures, the misclassified photos with
                        Grad-CAM heat maps; with a baseline, both models side by side
    report.json         every figure, the photos and their role, the misclassified and skipped
                        files
    report.md           the figures as tables
    misclassified.png   the wrongly classified images, captioned true → predicted (probability)

`evaluation.py` computes what is shown (`figures.py` the numbers, `gradcam.py` the heat maps);
this module only draws, lays out and writes (each file through `atomic`). The page has no
script, no external URL and no web font, so it opens offline, from a CI artifact or an e-mail.

Sections (their ids, which the browser test checks): identity, data, headline, with a baseline
comparison, then confusion, curves, calibration, threshold, per-class, errors.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
# Class names are folder names, drawn as they are: "$...$" is not mathtext here (a name that is
# not valid mathtext would otherwise stop the report, and with it the gate).
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from catdog import atomic, contract, data, evaluation, figures, gradcam, images  # noqa: E402
from catdog.evaluation import ModelResult  # noqa: E402

SECTIONS = ("identity", "data", "headline", "confusion", "curves", "calibration", "threshold",
            "per-class", "errors")
COMPARISON = "comparison"  # right after the headline, when there is a baseline
THRESHOLDS = np.linspace(0.0, 1.0, 101)
GRID_COLUMNS = 8
THUMBNAIL = 128
CAPTION_HEIGHT = 30
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
    """A figure with its interval, or "undefined" (ROC AUC with one class among the photos)."""
    low, high = result.intervals[name]
    if not math.isfinite(result.metrics[name]):
        return "undefined (a class is missing from the photos)"
    return f"{result.metrics[name]:.4f} [{figure_text(low)}, {figure_text(high)}]"


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


def _shown(identity: dict[str, Any], key: str) -> str:
    """An identity field as the page shows it: a model by its place in the export folder
    (`catdog/1`, `candidates/catdog/3`, `catdog.h5`) and its run by the run folder's name, so a
    page mailed to a colleague carries no local folder names (report.json keeps them whole)."""
    value = str(identity.get(key, ""))
    if key == "path" and value:
        path = Path(value)
        return str(Path(*path.parts[-3:]) if path.parent.parent.name == contract.CANDIDATES_DIR
                   else Path(*path.parts[-2:]) if path.name.isdigit() else path.name)
    if key == "source" and ", epoch " in value:
        run, epoch = value.split(", epoch ", 1)
        return f"run {Path(run).name}, epoch {epoch}"
    return value


def _relative(path: str, folder: str) -> str:
    """`path` from the data folder `folder` when it lies in it (else as it is)."""
    inside = folder and Path(path).is_relative_to(folder)
    return str(Path(path).relative_to(folder)) if inside else path


def _shown_photos(photos: evaluation.Photos) -> str:
    """`photos.describe()` with the data folder named by its own name."""
    if not photos.folder:
        return photos.describe()
    return photos.describe().replace(photos.folder, Path(photos.folder).name or photos.folder, 1)


def _signed(value: float) -> str:
    """A difference to 4 decimals, with no '-0.0000'."""
    text = f"{value:+.4f}"
    return "+0.0000" if text == "-0.0000" else text


def render(results: Sequence[ModelResult], labels: np.ndarray, class_names: Sequence[str],
           photos: evaluation.Photos, errors: Sequence[Photo], explained: int, wrong: int,
           comparison: dict[str, Any] | None = None,
           bootstrap: int = figures.BOOTSTRAP_SAMPLES) -> str:
    """The whole page: `results[0]` is the model evaluated, `results[1]` its baseline if any;
    `errors` the misclassified photos shown (most confident first; `wrong` in all), the first
    `explained` with a heat map; `comparison` the paired figures and the photos the two models
    disagree on, right under the headline."""
    model = results[0]
    positive = len(class_names) - 1  # P(dog) for catdog's two classes
    identity_rows = [(result.label, *(_shown(result.identity, k) for k in (
        "path", "version", "source", "precision", "image_size", "class_names")))
        for result in results]
    headline_rows = [(name, *(_interval(r, key) for r in results))
                     for key, name in _FIGURE_NAMES.items()]
    per_class_rows = [(name, *(figure_text(model.metrics['per_class'][name][k]) for k in (
        "precision", "recall", "f1", "roc_auc")), model.metrics["per_class"][name]["support"])
        for name in class_names]
    skipped = "".join(f"<li>{html.escape(_relative(s.path, photos.folder))}: "
                      f"{html.escape(s.reason)}"
                      "</li>" for s in photos.skipped)
    counts = ", ".join(f"{count} {name}" for name, count in photos.files.class_counts().items())
    warning = ("" if photos.role == evaluation.EVALUATION else
               '<p><strong>These photos also chose the model (its best epoch), so every figure '
               "below is optimistic.</strong></p>")
    parts = [
        _section("identity", "Model", _table(
            ("", "path", "version", "source run and epoch", "computed in", "image size",
             "classes"), identity_rows)),
        _section("data", "Data", f"<p>{html.escape(_shown_photos(photos))}: {counts}; "
                 f"{len(photos.skipped)} files skipped</p>{warning}<ul>{skipped}</ul>"),
        _section("headline", "Headline figures", _table(
            ("figure", *(f"{r.label} (95% BCa bootstrap interval, {bootstrap} resamples)"
                         for r in results)), headline_rows)
            + f'<p class="muted">{html.escape(figures.INTERVAL_METHOD)}</p>'),
    ]
    if comparison:
        parts.append(_section(COMPARISON, "Comparison with the baseline",
                              _comparison_body(comparison)))
    parts += [
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
            f"<p>{wrong} of {len(labels)} photos are misclassified; the {len(errors)} most "
            f"confidently wrong are shown, the first {explained} with the Grad-CAM heat map of "
            "the predicted class (block5_conv3) beside the photo.</p>" + _gallery(errors))),
    ]
    title = f"Evaluation of {_shown(model.identity, 'path')}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n")


def _comparison_body(comparison: dict[str, Any]) -> str:
    difference, test = comparison["accuracy_difference"], comparison["mcnemar"]
    rows = [(_FIGURE_NAMES[name], f"{values['model']:.4f}", f"{values['baseline']:.4f}",
             _signed(values["model"] - values["baseline"]))
            for name, values in comparison["figures"].items()]
    return (
        _table(("figure", "model", "baseline", "model − baseline"), rows)
        + f"<p>Accuracy difference {_signed(difference['difference'])}, paired bootstrap 95% "
          f"interval [{_signed(difference['low'])}, {_signed(difference['high'])}]. McNemar's "
          f"exact test: {test['a_only']} photos only the model gets right, {test['b_only']} "
          f"only the baseline; p = {test['p_value']:.4g}.</p>"
        + f"<h3>Photos the two disagree on ({len(comparison['disagreements'])} in all, at most "
          f"{evaluation.MAX_SHOWN} shown)</h3>"
        + _gallery(comparison["photos"]))


# --- photos -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2 * evaluation.MAX_SHOWN)  # the grid and the page show the same
def thumbnail(path: str) -> np.ndarray:
    return images.load_image(tf.constant(path), THUMBNAIL).numpy()


def error_photos(files: data.ImageFiles, probabilities: np.ndarray,
                 class_names: Sequence[str], maps: np.ndarray) -> list[Photo]:
    """The misclassified photos, most confidently wrong first (at most MAX_SHOWN), the first
    `len(maps)` with their Grad-CAM overlay."""
    labels = np.array(files.labels)
    predicted = probabilities.argmax(axis=1)
    wrong = evaluation.most_confidently_wrong(labels, probabilities)[:evaluation.MAX_SHOWN]
    photos = []
    for slot, index in enumerate(wrong):
        image = thumbnail(files.paths[index])
        photos.append(Photo(
            image, f"{Path(files.paths[index]).name}: {class_names[labels[index]]} → "
                   f"{class_names[predicted[index]]} "
                   f"(p={probabilities[index, predicted[index]]:.3f})",
            gradcam.overlay(image, maps[slot]) if slot < len(maps) else None))
    return photos


def disagreement_photos(files: data.ImageFiles, indices: Sequence[int], model: ModelResult,
                        baseline: ModelResult, class_names: Sequence[str]) -> list[Photo]:
    labels = np.array(files.labels)
    predicted = [r.probabilities.argmax(axis=1) for r in (model, baseline)]
    return [Photo(thumbnail(files.paths[i]), (
        f"{Path(files.paths[i]).name}: {class_names[labels[i]]}; model "
        f"{class_names[predicted[0][i]]} ({model.probabilities[i].max():.3f}), baseline "
        f"{class_names[predicted[1][i]]} ({baseline.probabilities[i].max():.3f})"))
        for i in indices[:evaluation.MAX_SHOWN]]


def misclassified_grid(files: data.ImageFiles, probabilities: np.ndarray,
                       class_names: Sequence[str]) -> Image.Image:
    """A grid of the wrongly classified images (the MAX_SHOWN most confidently wrong first),
    each captioned 'true -> predicted' and the predicted class's probability."""
    labels = np.array(files.labels)
    predicted = probabilities.argmax(axis=1)
    wrong = evaluation.most_confidently_wrong(labels, probabilities)[:evaluation.MAX_SHOWN]
    rows = max(1, math.ceil(len(wrong) / GRID_COLUMNS))
    columns = GRID_COLUMNS if len(wrong) else 1
    grid = Image.new("RGB", (columns * THUMBNAIL, rows * (THUMBNAIL + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    if not len(wrong):
        draw.text((4, 4), "no misclassified images", fill="black")
    for slot, index in enumerate(wrong):
        x, y = (slot % GRID_COLUMNS) * THUMBNAIL, (slot // GRID_COLUMNS) * (
            THUMBNAIL + CAPTION_HEIGHT)
        grid.paste(Image.fromarray(thumbnail(files.paths[index])), (x, y))
        draw.text((x + 3, y + THUMBNAIL + 2),
                  f"{class_names[labels[index]]} -> {class_names[predicted[index]]}",
                  fill="black")
        draw.text((x + 3, y + THUMBNAIL + 15), f"p={probabilities[index, predicted[index]]:.3f} "
                  f"{Path(files.paths[index]).name[:14]}", fill="firebrick")
    return grid


# --- report.md and report.json ------------------------------------------------------------------

def figure_text(value: float | None) -> str:
    return "undefined" if value is None or not math.isfinite(value) else f"{value:.4f}"


def markdown_report(content: dict[str, Any]) -> str:
    names = content["class_names"]
    lines = [
        f"# Evaluation of {content['model']}", "",
        f"{content['images']} images from {content['data_dir']}, {content['role']} photos"
        f" ({len(content['skipped'])} unreadable files skipped); computed in "
        f"{content['precision']}.", "",
        "| metric | value |", "|---|---:|",
        f"| accuracy | {figure_text(content['accuracy'])} |",
        f"| ROC AUC (one-vs-rest, mean) | {figure_text(content['roc_auc'])} |",
        f"| log loss | {figure_text(content['log_loss'])} |",
        f"| expected calibration error | {figure_text(content['expected_calibration_error'])} |",
        "", "| class | precision | recall | F1 | ROC AUC | support |",
        "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        c = content["per_class"][name]
        lines.append(f"| {name} | {figure_text(c['precision'])} | {figure_text(c['recall'])} | "
                     f"{figure_text(c['f1'])} | {figure_text(c['roc_auc'])} | {c['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", "",
              "| true \\ predicted | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for name, row in zip(names, content["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    wrong = len(content["misclassified"])
    lines += ["", f"{wrong} images are misclassified; misclassified.png shows the "
                  f"{min(wrong, evaluation.MAX_SHOWN)} most confidently wrong:", ""]
    lines += [f"- {item['path']}: {item['label']}, predicted {item['predicted']} "
              f"(p={item['probability']:.3f})" for item in content["misclassified"]]
    lines.append("")
    for item in content["skipped"]:
        lines.append(f"- skipped {item['path']}: {item['reason']}")
    return "\n".join(lines) + "\n"


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def json_content(model: ModelResult, photos: evaluation.Photos,
                 baseline: ModelResult | None = None, compared: dict[str, Any] | None = None,
                 how: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json's content: every figure, the photos and their role, how the answers were
    computed (`how`)."""
    names = photos.files.class_names
    content = {"model": str(model.identity["path"]), "data_dir": photos.source,
               "role": photos.role, "photos": photos.describe(),
               "precision": model.identity["precision"], **(how or {}),
               "class_names": list(names), **model.metrics, "intervals": model.intervals,
               "interval_method": figures.INTERVAL_METHOD,
               "misclassified": evaluation.misclassified_files(photos.files,
                                                               model.probabilities, names),
               "skipped": [{"path": item.path, "reason": item.reason} for item in photos.skipped]}
    if baseline is not None and compared is not None:
        content["baseline"] = {"model": str(baseline.identity["path"]),
                               "precision": baseline.identity["precision"], **baseline.metrics,
                               "intervals": baseline.intervals}
        content["comparison"] = compared
    return finite(content)


def write_reports(output_dir: str | Path, model: ModelResult, photos: evaluation.Photos,
                  baseline: ModelResult | None = None, maps: np.ndarray | None = None,
                  bootstrap_samples: int = figures.BOOTSTRAP_SAMPLES,
                  how: dict[str, Any] | None = None) -> dict[str, Any]:
    """Renders and writes the four reports of `model` (and `baseline`, on the same photos) with
    the heat maps `maps` of its most confidently wrong photos; returns report.json's content."""
    thumbnail.cache_clear()  # photos may have changed since an earlier report
    maps = np.zeros((0,)) if maps is None else maps
    files, names = photos.files, list(photos.files.class_names)
    labels = np.array(files.labels)
    results = [model] + ([baseline] if baseline is not None else [])
    compared = (evaluation.comparison(model, baseline, labels, bootstrap_samples)
                if baseline is not None else None)
    content = json_content(model, photos, baseline, compared, how)
    errors = error_photos(files, model.probabilities, names, maps)
    if compared:
        compared = {**compared, "photos": disagreement_photos(
            files, compared["disagreements"], model, baseline, names)}
    page = render(results, labels, names, photos, errors, len(maps),
                  len(content["misclassified"]), compared, bootstrap_samples)
    grid = misclassified_grid(files, model.probabilities, names)
    output_dir = Path(output_dir)
    atomic.remove_leftovers(output_dir)
    writers = {"report.json": lambda tmp: tmp.write_text(json.dumps(content, indent=2,
                                                                    allow_nan=False)),
               "report.md": lambda tmp: tmp.write_text(markdown_report(content)),
               "misclassified.png": lambda tmp: grid.save(tmp, format="PNG"),
               "report.html": lambda tmp: tmp.write_text(page)}
    for name, write in writers.items():
        with atomic.atomic_file(output_dir / name) as tmp:
            write(tmp)
    return content
