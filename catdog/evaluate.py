"""Where the model fails:
`python -m catdog.evaluate --model=PATH --data_dir=DIR [--output_dir=OUT] [--baseline=PATH]`.

PATH is the exported `.h5` or a SavedModel version folder (the same numbers from both); DIR holds
one sub-folder per class, named as the model's classes. Writes to OUT:

    report.html         the page to look at (catdog/report.py): headline figures with bootstrap
                        intervals, confusion matrix, ROC and precision-recall curves,
                        calibration, the decision threshold, per-class figures, the
                        misclassified photos with Grad-CAM heat maps; with --baseline, both
                        models side by side (deltas, paired bootstrap, McNemar, disagreements)
    report.json         every figure (catdog/figures.py), the misclassified and skipped files
    report.md           the figures as tables
    misclassified.png   the wrongly classified images, captioned true → predicted (probability)
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import dataclasses
import functools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageDraw

from catdog import atomic, data, figures, gradcam, images, inference, report
from catdog.errors import CatdogError
from catdog.terminal import ProgressLine

GRID_COLUMNS = 8
THUMBNAIL = 128
CAPTION_HEIGHT = 30
MAX_GRID_IMAGES = 64
MAX_EXPLAINED = 64  # Grad-CAM heat maps in report.html (--max_explained)


def predict_files(classifier: inference.Classifier, files: data.ImageFiles, batch_size: int,
                  max_pixels: int = images.MAX_IMAGE_PIXELS,
                  test_time_flip: bool = False) -> np.ndarray:
    """Probabilities [N, C] for every file, in order, with a progress bar; with
    `test_time_flip`, the mean of the answers for each photo and its left-right mirror (a
    second forward pass per photo)."""
    decoded = data.decoded_images(files, classifier.image_size, max_pixels)
    probabilities = []
    with ProgressLine(len(files), "image") as progress:
        for pixels, _ in data.batches(decoded, batch_size):
            pixels = pixels.numpy()
            answers = classifier.predict(pixels)
            if test_time_flip:
                answers = (answers + classifier.predict(pixels[:, :, ::-1])) / 2
            probabilities.append(answers)
            progress.add(len(pixels))
    return np.concatenate(probabilities)


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
        grid.paste(Image.fromarray(_thumbnail(files.paths[index])), (x, y))
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


def checked_files(data_dir: str, class_names: Sequence[str],
                  max_pixels: int = images.MAX_IMAGE_PIXELS
                  ) -> tuple[data.ImageFiles, list[data.BadImage]]:
    """The decodable image files of a class-folder dataset whose classes are `class_names`, and
    the files left out, each logged with the reason."""
    folder_classes = data.class_names_in(data_dir)
    if list(folder_classes) != list(class_names):
        raise CatdogError(f"--data_dir={data_dir} has classes {list(folder_classes)} but the "
                          f"model knows {list(class_names)}")
    return without_bad_images(data.list_images(data_dir, class_names), max_pixels)


def without_bad_images(files: data.ImageFiles, max_pixels: int = images.MAX_IMAGE_PIXELS
                       ) -> tuple[data.ImageFiles, list[data.BadImage]]:
    """`files` less those that cannot be decoded (or were never readable), which are returned
    and logged with the reason."""
    bad = list(files.skipped) + data.check_images(files.paths, max_pixels)
    for item in bad:
        logging.warning("skipping %s: %s", item.path, item.reason)
    return files.without({item.path for item in bad}), bad


@dataclasses.dataclass(frozen=True)
class Answers:
    """One exported model and its probabilities for the evaluation photos."""

    path: str
    classifier: inference.Classifier
    probabilities: np.ndarray


def model_result(label: str, answers: Answers, labels: np.ndarray,
                 bootstrap_samples: int) -> report.ModelResult:
    """One model's figures, their bootstrap intervals and its identity, for the report."""
    classifier, probabilities = answers.classifier, answers.probabilities
    return report.ModelResult(
        label, {**inference.identity_of(answers.path), "image_size": classifier.image_size,
                "class_names": ", ".join(classifier.class_names)},
        probabilities, figures.compute_metrics(labels, probabilities, classifier.class_names),
        figures.bootstrap_intervals(labels, probabilities, bootstrap_samples))


@functools.lru_cache(maxsize=2 * MAX_GRID_IMAGES)  # the grid and the page show the same photos
def _thumbnail(path: str) -> np.ndarray:
    return images.load_image(tf.constant(path), THUMBNAIL).numpy()


def explained_errors(model_path: str, files: data.ImageFiles, probabilities: np.ndarray,
                     class_names: Sequence[str], max_explained: int,
                     max_pixels: int = images.MAX_IMAGE_PIXELS) -> list[report.Photo]:
    """The misclassified photos, most confidently wrong first (at most MAX_GRID_IMAGES), the
    first `max_explained` with the Grad-CAM overlay of the class the model predicted."""
    labels = np.array(files.labels)
    predicted = probabilities.argmax(axis=1)
    wrong = most_confidently_wrong(labels, probabilities)[:MAX_GRID_IMAGES]
    explained = wrong[:max_explained]
    maps = np.zeros((0,))
    if len(explained):
        model, _ = inference.load_keras_model(model_path)
        size = model.input_shape[1]
        pixels = np.stack([tf.cast(images.load_image(tf.constant(files.paths[i]), size,
                                                     max_pixels), tf.float32).numpy()
                           for i in explained])
        maps = gradcam.heatmaps(model, pixels, predicted[explained])
    photos = []
    for slot, index in enumerate(wrong):
        thumbnail = _thumbnail(files.paths[index])
        photos.append(report.Photo(
            thumbnail, f"{Path(files.paths[index]).name}: {class_names[labels[index]]} → "
                       f"{class_names[predicted[index]]} "
                       f"(p={probabilities[index, predicted[index]]:.3f})",
            gradcam.overlay(thumbnail, maps[slot]) if slot < len(explained) else None))
    return photos


def comparison(model: report.ModelResult, baseline: report.ModelResult, files: data.ImageFiles,
               class_names: Sequence[str], bootstrap_samples: int) -> dict[str, Any]:
    """Both models on the same photos: figure deltas, a paired bootstrap interval on the
    accuracy difference, McNemar's test, and the photos on which their answers differ."""
    labels = np.array(files.labels)
    correct = [r.probabilities.argmax(axis=1) == labels for r in (model, baseline)]
    predicted = [r.probabilities.argmax(axis=1) for r in (model, baseline)]
    disagree = np.flatnonzero(predicted[0] != predicted[1])[:MAX_GRID_IMAGES]
    return {
        "figures": {name: {"model": model.metrics[name], "baseline": baseline.metrics[name]}
                    for name in ("accuracy", "roc_auc", "log_loss",
                                 "expected_calibration_error")},
        "accuracy_difference": figures.paired_accuracy_difference(
            correct[0], correct[1], bootstrap_samples),
        "mcnemar": figures.mcnemar(correct[0], correct[1]),
        "disagreements": [report.Photo(_thumbnail(files.paths[i]), (
            f"{Path(files.paths[i]).name}: {class_names[labels[i]]}; model "
            f"{class_names[predicted[0][i]]} ({model.probabilities[i].max():.3f}), baseline "
            f"{class_names[predicted[1][i]]} ({baseline.probabilities[i].max():.3f})"))
            for i in disagree],
    }


def write_reports(output_dir: str | Path, model: Answers, files: data.ImageFiles, folder: str,
                  skipped: Sequence[data.BadImage] = (), baseline: Answers | None = None,
                  max_explained: int = MAX_EXPLAINED,
                  bootstrap_samples: int = figures.BOOTSTRAP_SAMPLES,
                  max_pixels: int = images.MAX_IMAGE_PIXELS,
                  how: dict[str, Any] | None = None) -> dict[str, Any]:
    """The four report files for answers already computed (by `evaluate`, or by the publish
    gate, which has both models' answers on its photos); returns report.json's content, with
    `how` (how the answers were computed) in it."""
    _thumbnail.cache_clear()  # photos may have changed since an earlier report
    labels = np.array(files.labels)
    names = model.classifier.class_names
    results = [model_result("model", model, labels, bootstrap_samples)]
    compared = None
    if baseline is not None:
        results.append(model_result("baseline", baseline, labels, bootstrap_samples))
        compared = comparison(results[0], results[1], files, names, bootstrap_samples)
    errors = explained_errors(model.path, files, model.probabilities, names, max_explained,
                              max_pixels)
    content = {"model": str(model.path), "data_dir": str(folder),
               "precision": model.classifier.precision, **(how or {}),
               "class_names": list(names), **results[0].metrics, "intervals": results[0].intervals,
               "misclassified": misclassified_files(files, model.probabilities, names),
               "skipped": [{"path": item.path, "reason": item.reason} for item in skipped]}
    if compared:
        content["baseline"] = {"model": str(baseline.path), **results[1].metrics,
                               "intervals": results[1].intervals}
        content["comparison"] = {k: v for k, v in compared.items() if k != "disagreements"}
    page = report.render(results, labels, names, {
        "folder": folder, "images": len(files), "counts": files.class_counts(),
        "skipped": content["skipped"], "bootstrap": bootstrap_samples}, errors,
        min(max_explained, len(errors)), compared)
    _write_reports(Path(output_dir), content,
                   misclassified_grid(files, model.probabilities, names), page)
    return content


def evaluate(model_path: str, data_dir: str, output_dir: str, batch_size: int = 32,
             max_pixels: int = images.MAX_IMAGE_PIXELS, precision: str = "float32",
             baseline: str = "", max_explained: int = MAX_EXPLAINED,
             bootstrap_samples: int = figures.BOOTSTRAP_SAMPLES,
             test_time_flip: bool = False) -> dict[str, Any]:
    """Evaluates an exported model (and `baseline`, on the same photos) on a class-folder
    dataset and writes the four reports; a `.h5` model computes under the Keras policy
    `precision`. `test_time_flip` averages each photo's answers with its mirror's, for both
    models; report.json records it and the seconds the answers took."""
    classifier = inference.load_classifier(model_path, precision)
    files, bad = checked_files(data_dir, classifier.class_names, max_pixels)
    start = time.perf_counter()
    model = Answers(model_path, classifier,
                    predict_files(classifier, files, batch_size, max_pixels, test_time_flip))
    answer_seconds = time.perf_counter() - start
    logging.info("%s answered %d photos in %.1f s%s", model_path, len(files), answer_seconds,
                 " (each also mirrored)" if test_time_flip else "")
    other = None
    if baseline:
        other_classifier = inference.load_classifier(baseline, precision)
        if list(other_classifier.class_names) != list(classifier.class_names):
            raise CatdogError(f"--baseline={baseline} knows classes "
                              f"{other_classifier.class_names}, --model={model_path} "
                              f"{classifier.class_names}")
        other = Answers(baseline, other_classifier, predict_files(
            other_classifier, files, batch_size, max_pixels, test_time_flip))
    start = time.perf_counter()
    content = write_reports(output_dir, model, files, data_dir, bad, other, max_explained,
                            bootstrap_samples, max_pixels,
                            {"test_time_flip": test_time_flip,
                             "answer_seconds": round(answer_seconds, 3)})
    logging.info("the reports took %.1f s (bootstrap, plots, %d Grad-CAM heat maps)",
                 time.perf_counter() - start, min(max_explained, len(content["misclassified"])))
    return content


def _write_reports(output_dir: Path, content: dict[str, Any], grid: Image.Image,
                   page: str) -> None:
    """Writes the four files, each under a temporary name first, then renamed into place
    (after clearing what an earlier, killed writer left there)."""
    atomic.remove_leftovers(output_dir)
    writers = {"report.json": lambda tmp: tmp.write_text(json.dumps(content, indent=2)),
               "report.md": lambda tmp: tmp.write_text(markdown_report(content)),
               "misclassified.png": lambda tmp: grid.save(tmp, format="PNG"),
               "report.html": lambda tmp: tmp.write_text(page)}
    for name, write in writers.items():
        with atomic.atomic_file(output_dir / name) as tmp:
            write(tmp)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}")
    f = flags.FLAGS
    content = evaluate(f.model, f.data_dir, f.output_dir, f.batch_size, f.max_image_pixels,
                       inference.resolve_precision(f.mixed_precision), f.baseline,
                       f.max_explained, f.bootstrap_samples, f.test_time_flip)
    print(f"accuracy {content['accuracy']:.4f}, ROC AUC {content['roc_auc']:.4f}, log loss "
          f"{content['log_loss']:.4f}, ECE {content['expected_calibration_error']:.4f} on "
          f"{content['images']} images{' (each also mirrored)' if f.test_time_flip else ''}; "
          f"reports in {f.output_dir} (report.html)")
    if f.baseline:
        difference = content["comparison"]["accuracy_difference"]
        print(f"baseline {f.baseline}: accuracy {content['baseline']['accuracy']:.4f}; "
              f"difference {difference['difference']:+.4f} [{difference['low']:+.4f}, "
              f"{difference['high']:+.4f}], McNemar p = "
              f"{content['comparison']['mcnemar']['p_value']:.4g}")


def run() -> None:
    """The `catdog-evaluate` console script (and `python -m catdog.evaluate`)."""
    from catdog import cli
    from catdog import flags as catdog_flags

    cli.run(main, catdog_flags.define_evaluate_flags)


if __name__ == "__main__":
    run()
