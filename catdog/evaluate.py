"""Where the model fails:
`python -m catdog.evaluate --model=PATH --data_dir=DIR [--output_dir=OUT] [--baseline=PATH]`.

PATH is the exported `.h5` or a SavedModel version folder (the same numbers from both); DIR is a
dataset folder (train/ and validation/, or prepared shards: its evaluation photos are judged,
the ones every run keeps apart) or holds one sub-folder per class, named as the model's
classes. Photos that trained or selected the model are flagged as such in every report. Writes
to OUT report.html, report.json, report.md and misclassified.png (catdog/report.py); with
--baseline, both models side by side (deltas, paired bootstrap, McNemar, disagreements). The
evaluator is catdog/evaluation.py; this is its command.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from catdog import evaluation, figures, images, inference, report
from catdog.errors import CatdogError

MAX_EXPLAINED = 64  # Grad-CAM heat maps in report.html (--max_explained)


def evaluate(model_path: str, data_dir: str, output_dir: str, batch_size: int = 32,
             max_pixels: int = images.MAX_IMAGE_PIXELS, precision: str = "float32",
             baseline: str = "", max_explained: int = MAX_EXPLAINED,
             bootstrap_samples: int = figures.BOOTSTRAP_SAMPLES,
             test_time_flip: bool = False) -> dict[str, Any]:
    """Evaluates an exported model (and `baseline`, on the same photos) on a class-folder
    dataset and writes the four reports; a `.h5` model computes under the Keras policy
    `precision`. `test_time_flip` averages each photo's answers with its mirror's, for both
    models; report.json records it and the seconds the answers took."""
    _check_output_dir(output_dir)
    if not data_dir:
        raise CatdogError("--data_dir is required: a dataset folder (its evaluation photos are "
                          "judged) or a folder of class sub-folders")
    classifier = inference.load_classifier(model_path, precision)
    photos = evaluation.photos_to_judge(inference.source_of(model_path), data_dir,
                                        classifier.class_names, classifier.image_size,
                                        max_pixels)
    files = photos.files
    if not len(files):
        raise CatdogError(f"--data_dir={data_dir} holds no photo that can be decoded")
    logging.info("judging on %s", photos.describe())
    labels = np.array(files.labels)
    start = time.perf_counter()
    model = evaluation.model_result(
        "model", model_path, classifier.class_names, evaluation.predict_files(
            classifier, files, batch_size, max_pixels, test_time_flip), labels,
        bootstrap_samples, classifier.precision)
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
        other = evaluation.model_result(
            "baseline", baseline, other_classifier.class_names, evaluation.predict_files(
                other_classifier, files, batch_size, max_pixels, test_time_flip), labels,
            bootstrap_samples, other_classifier.precision)
    start = time.perf_counter()
    maps = evaluation.heat_maps(model_path, files, model.probabilities, max_explained,
                                max_pixels)
    content = report.write_reports(output_dir, model, photos, other, maps, bootstrap_samples,
                                   {"test_time_flip": test_time_flip,
                                    "answer_seconds": round(answer_seconds, 3)})
    logging.info("the reports took %.1f s (bootstrap, plots, %d Grad-CAM heat maps)",
                 time.perf_counter() - start, len(maps))
    return content


def _check_output_dir(output_dir: str) -> None:
    """Refuses, before any photo is evaluated, an output folder that cannot be one."""
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise CatdogError(f"--output_dir={output_dir} is a file; name a folder (new or existing) "
                          "for the reports")


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}")
    f = flags.FLAGS
    content = evaluate(f.model, f.data_dir, f.output_dir, f.batch_size, f.max_image_pixels,
                       inference.resolve_precision(f.mixed_precision, f.model), f.baseline,
                       f.max_explained, f.bootstrap_samples, f.test_time_flip)
    print(f"accuracy {content['accuracy']:.4f}, ROC AUC {report.figure_text(content['roc_auc'])}"
          f", log loss {content['log_loss']:.4f}, ECE {content['expected_calibration_error']:.4f}"
          f" on {content['photos']}{'; each also mirrored' if f.test_time_flip else ''}; "
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

    cli.run_command("evaluate", main)


if __name__ == "__main__":
    run()
