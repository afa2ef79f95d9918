"""Where the model fails:
`python -m catdog.evaluate --model=PATH --data_dir=DIR [--output_dir=OUT]`.

PATH is the exported `.h5` or a SavedModel version folder (the same numbers from both); DIR holds
one sub-folder per class, named as the model's classes. Writes to OUT:

    report.json         accuracy, per-class precision/recall/F1, confusion matrix, ROC AUC,
                        log loss, expected calibration error, skipped files
    report.md           the same as tables
    misclassified.png   the wrongly classified images, captioned true → predicted (probability)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageDraw

from catdog import atomic, data, images, inference
from catdog.errors import CatdogError

CALIBRATION_BINS = 15
GRID_COLUMNS = 8
THUMBNAIL = 128
CAPTION_HEIGHT = 30
MAX_GRID_IMAGES = 64


def predict_files(classifier: inference.Classifier, files: data.ImageFiles, batch_size: int,
                  max_pixels: int = images.MAX_IMAGE_PIXELS) -> np.ndarray:
    """Probabilities [N, C] for every file, in order, with a progress bar."""
    decoded = data.decoded_images(files, classifier.image_size, max_pixels)
    progbar = keras.utils.Progbar(math.ceil(len(files) / batch_size), unit_name="batch")
    probabilities = []
    for step, (pixels, _) in enumerate(data.batches(decoded, batch_size), 1):
        probabilities.append(classifier.predict(pixels.numpy()))
        progbar.update(step)
    return np.concatenate(probabilities)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> float:
    """Σ over confidence bins of (bin share) × |accuracy − mean confidence| (Guo et al., 2017)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """One-vs-rest ROC AUC per class (keras.metrics.AUC), keyed by class index."""
    scores = {}
    for index in range(probabilities.shape[1]):
        metric = keras.metrics.AUC(num_thresholds=1000)
        metric.update_state((labels == index).astype("float32"), probabilities[:, index])
        scores[index] = float(metric.result())
    return scores


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray,
                    class_names: Sequence[str]) -> dict[str, Any]:
    """Every figure of the report, from true labels and predicted probabilities."""
    predicted = probabilities.argmax(axis=1)
    confusion = tf.math.confusion_matrix(labels, predicted,
                                         num_classes=len(class_names)).numpy()
    per_class = {}
    aucs = roc_auc(labels, probabilities)
    for i, name in enumerate(class_names):
        true_positives = confusion[i, i]
        precision = true_positives / max(confusion[:, i].sum(), 1)
        recall = true_positives / max(confusion[i, :].sum(), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall),
                           "f1": float(f1), "support": int(confusion[i, :].sum()),
                           "roc_auc": aucs[i]}
    log_loss = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    return {
        "images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "roc_auc": float(np.mean(list(aucs.values()))),
        "log_loss": float(log_loss),
        "expected_calibration_error": expected_calibration_error(labels, probabilities),
    }


def markdown_report(report: dict[str, Any]) -> str:
    names = report["class_names"]
    lines = [
        f"# Evaluation of {report['model']}", "",
        f"{report['images']} images from {report['data_dir']}"
        f" ({len(report['skipped'])} unreadable files skipped).", "",
        "| metric | value |", "|---|---:|",
        f"| accuracy | {report['accuracy']:.4f} |",
        f"| ROC AUC (one-vs-rest, mean) | {report['roc_auc']:.4f} |",
        f"| log loss | {report['log_loss']:.4f} |",
        f"| expected calibration error | {report['expected_calibration_error']:.4f} |", "",
        "| class | precision | recall | F1 | ROC AUC | support |", "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        c = report["per_class"][name]
        lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | "
                     f"{c['roc_auc']:.4f} | {c['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", "",
              "| true \\ predicted | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    wrong = report["images"] - sum(row[i] for i, row in enumerate(report["confusion_matrix"]))
    lines += ["", f"{wrong} images are misclassified; misclassified.png shows the "
                  f"{min(wrong, MAX_GRID_IMAGES)} most confidently wrong:", ""]
    lines += [f"- {item['path']}: {item['label']}, predicted {item['predicted']} "
              f"(p={item['probability']:.3f})" for item in report.get("misclassified", [])]
    lines.append("")
    for item in report["skipped"]:
        lines.append(f"- skipped {item['path']}: {item['reason']}")
    return "\n".join(lines) + "\n"


def misclassified_grid(files: data.ImageFiles, probabilities: np.ndarray,
                       class_names: Sequence[str]) -> Image.Image:
    """A grid of the wrongly classified images (the 64 most confidently wrong first), each
    captioned 'true -> predicted' and the predicted class's probability."""
    labels = np.array(files.labels)
    predicted = probabilities.argmax(axis=1)
    wrong = most_confidently_wrong(labels, probabilities)[:MAX_GRID_IMAGES]
    rows = max(1, math.ceil(len(wrong) / GRID_COLUMNS))
    columns = GRID_COLUMNS if len(wrong) else 1
    grid = Image.new("RGB", (columns * THUMBNAIL, rows * (THUMBNAIL + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    if not len(wrong):
        draw.text((4, 4), "no misclassified images", fill="black")
    for slot, index in enumerate(wrong):
        x, y = (slot % GRID_COLUMNS) * THUMBNAIL, (slot // GRID_COLUMNS) * (
            THUMBNAIL + CAPTION_HEIGHT)
        pixels = images.load_image(tf.constant(files.paths[index]), THUMBNAIL).numpy()
        grid.paste(Image.fromarray(pixels), (x, y))
        draw.text((x + 3, y + THUMBNAIL + 2),
                  f"{class_names[labels[index]]} -> {class_names[predicted[index]]}",
                  fill="black")
        draw.text((x + 3, y + THUMBNAIL + 15), f"p={probabilities[index, predicted[index]]:.3f} "
                  f"{Path(files.paths[index]).name[:14]}", fill="firebrick")
    return grid


def most_confidently_wrong(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices of the misclassified images, the most confidently wrong first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")]


def misclassified_files(files: data.ImageFiles, probabilities: np.ndarray,
                        class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Each misclassified file with its true and predicted class, most confidently wrong first."""
    predicted = probabilities.argmax(axis=1)
    return [{"path": files.paths[i], "label": class_names[files.labels[i]],
             "predicted": class_names[predicted[i]],
             "probability": float(probabilities[i, predicted[i]])}
            for i in most_confidently_wrong(np.array(files.labels), probabilities)]


def evaluate(model_path: str, data_dir: str, output_dir: str, batch_size: int = 32,
             max_pixels: int = images.MAX_IMAGE_PIXELS,
             precision: str = "float32") -> dict[str, Any]:
    """Evaluates an exported model on a class-folder dataset and writes the three reports;
    a `.h5` model computes under the Keras policy `precision`."""
    classifier = inference.load_classifier(model_path, precision)
    folder_classes = data.class_names_in(data_dir)
    if list(folder_classes) != list(classifier.class_names):
        raise CatdogError(f"--data_dir={data_dir} has classes {list(folder_classes)} but the "
                          f"model knows {classifier.class_names}")
    files = data.list_images(data_dir, classifier.class_names)
    bad = list(files.skipped) + data.check_images(files.paths, max_pixels)
    for item in bad:
        logging.warning("skipping %s: %s", item.path, item.reason)
    files = files.without({item.path for item in bad})
    probabilities = predict_files(classifier, files, batch_size, max_pixels)
    report = {"model": str(model_path), "data_dir": str(data_dir),
              "precision": classifier.precision,
              "class_names": list(classifier.class_names),
              **compute_metrics(np.array(files.labels), probabilities, classifier.class_names),
              "misclassified": misclassified_files(files, probabilities, classifier.class_names),
              "skipped": [{"path": item.path, "reason": item.reason} for item in bad]}
    _write_reports(Path(output_dir), report,
                   misclassified_grid(files, probabilities, classifier.class_names))
    return report


def _write_reports(output_dir: Path, report: dict[str, Any], grid: Image.Image) -> None:
    """Writes the three files, each under a temporary name first, then renamed into place."""
    writers = {"report.json": lambda tmp: tmp.write_text(json.dumps(report, indent=2)),
               "report.md": lambda tmp: tmp.write_text(markdown_report(report)),
               "misclassified.png": lambda tmp: grid.save(tmp, format="PNG")}
    for name, write in writers.items():
        with atomic.atomic_file(output_dir / name) as tmp:
            write(tmp)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}")
    f = flags.FLAGS
    report = evaluate(f.model, f.data_dir, f.output_dir, f.batch_size, f.max_image_pixels,
                      inference.resolve_precision(f.mixed_precision))
    print(f"accuracy {report['accuracy']:.4f}, ROC AUC {report['roc_auc']:.4f}, log loss "
          f"{report['log_loss']:.4f}, ECE {report['expected_calibration_error']:.4f} on "
          f"{report['images']} images; reports in {f.output_dir}")


def run() -> None:
    """The `catdog-evaluate` console script (and `python -m catdog.evaluate`)."""
    from catdog import cli
    from catdog import flags as catdog_flags

    cli.run(main, catdog_flags.define_evaluate_flags)


if __name__ == "__main__":
    run()
