"""Trains the classifier and exports it:
`python -m catdog.train --flagfile=configs/quickstart.flags`.

The epoch loop and the run's summary; the distributed steps are in `steps.py`, the checkpoints
in `checkpoints.py`, and where each epoch's batches come from in `inputs.py`.

A checkpoint (model, optimizer, progress) is written after every epoch, so a run started again with
the same flags and run_dir continues from its last finished epoch; data order and augmentation are
seeded per epoch, so the resumed run ends where an uninterrupted one would. The exported weights
are those of the epoch with the best validation accuracy.
"""

from __future__ import annotations

import catdog.startup  # noqa: F401  (first: quiets TensorFlow's start; catdog/startup.py)

# isort: split
import dataclasses
import logging as std_logging
import math
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from catdog import (
    atomic,
    contract,
    data,
    distribute,
    evaluation,
    export,
    export_precision,
    inference,
    publish,
    versions,
)
from catdog import model as model_lib
from catdog.checkpoints import Checkpoints, Progress
from catdog.config import Config
from catdog.errors import CatdogError
from catdog.faults import crash_point
from catdog.inputs import EpochInputs, ServiceStalled
from catdog.run_dir import RunDir
from catdog.steps import Trainer
from catdog.terminal import ProgressLine


@dataclasses.dataclass
class TrainResult:
    """What a finished run leaves: the model holding its best weights (None when the run had
    finished before this start, which loaded nothing), and where things went."""

    model: keras.Model | None
    class_names: tuple[str, ...]
    summary: dict[str, Any]
    exports: export.Exports  # where the model is: published, or still a candidate
    decision: publish.Decision
    finished_before: bool = False  # the run had finished with these flags: nothing was done


def _log_to_file(run: RunDir) -> std_logging.Handler:
    """Copies the log, from INFO up, into <run_dir>/logs/train.log."""
    if logging.get_verbosity() < logging.INFO:
        logging.set_verbosity(logging.INFO)
    handler = std_logging.FileHandler(run.logs / "train.log")
    handler.setFormatter(logging.PythonFormatter())
    logging.get_absl_logger().addHandler(handler)
    return handler


def train(config: Config) -> TrainResult:
    """Runs (or resumes) the training that `config` describes, then exports the best epoch.

    Under multi-worker training every worker runs this; only the chief writes `run_dir` and
    `export_dir`. The others write the same files to a scratch folder (saving can need all
    workers) that is removed at the end. The run's precision policy is Keras' global policy
    while it trains; the caller's is restored when it ends.
    """
    wall_start = time.perf_counter()
    with model_lib.global_policy(keras.mixed_precision.global_policy().name):
        distribution = distribute.setup_distribution(config)
        if distribution.is_chief:
            return _train_writing_to(config, distribution, wall_start, RunDir(config.run_dir))
        with tempfile.TemporaryDirectory(
                prefix=f"catdog-worker{distribution.worker_index}-") as tmp:
            scratch = dataclasses.replace(config, run_dir=f"{tmp}/run",
                                          export_dir=f"{tmp}/export")
            return _train_writing_to(scratch, distribution, wall_start, RunDir(config.run_dir))


def _train_writing_to(config: Config, distribution: distribute.Distribution, wall_start: float,
                      chief_run: RunDir) -> TrainResult:
    run = RunDir(config.run_dir)
    with atomic.exclusive(run.lock, f"the run folder {run.root}"):
        return _train_holding(config, distribution, run, chief_run, wall_start)


def _train_holding(config: Config, distribution: distribute.Distribution, run: RunDir,
                   chief_run: RunDir, wall_start: float) -> TrainResult:
    """The run, while this process holds the run folder's lock."""
    run.open(config)
    finished = run.finished_summary(config) if distribution.num_workers == 1 else None
    if finished:
        return _finished_before(config, finished)
    handler = _log_to_file(run)
    logging.info("%s", distribution.line())  # summary.json keeps describe()'s every field
    try:
        return _train(config, distribution, run, chief_run, wall_start)
    finally:
        logging.get_absl_logger().removeHandler(handler)
        handler.close()


@dataclasses.dataclass
class Fitted:
    """A run's fitting, done: the model holding its best epoch's weights, and its record."""

    trainer: Trainer
    splits: data.Splits
    progress: Progress
    history: list[dict[str, Any]]
    feature_seconds: float


def _train(config: Config, distribution: distribute.Distribution, run: RunDir,
           chief_run: RunDir, wall_start: float) -> TrainResult:
    fitted = _fit(config, distribution, run, chief_run)
    return _release(config, distribution, run, fitted, wall_start)


def _data_also_missing(config: Config) -> str:
    """What a failed weights download should also say when the photos would be the next
    download (so an offline user learns both flags from the first error)."""
    if not config.download or Path(config.data_dir).exists():
        return ""
    return (f"; --data_dir={config.data_dir} is not here either: --download would fetch it "
            f"from {config.download_url}, or pass --data_dir=DIR with train/ and validation/ "
            "class folders")


def _fit(config: Config, distribution: distribute.Distribution, run: RunDir,
         chief_run: RunDir) -> Fitted:
    """Trains (or resumes) every epoch, checkpointing each, and restores the best one, chosen
    on the selection photos."""
    keras.utils.set_random_seed(config.seed)
    with distribution.strategy.scope():  # --weights is checked before any data work
        try:
            base = model_lib.build_base(config.image_size, config.weights)
        except CatdogError as error:
            raise CatdogError(f"{error}{_data_also_missing(config)}") from None
    splits = data.prepare_splits(config, Path(config.feature_cache_dir or run.root)
                                 / data.CHECKED_RECORD)
    trainer = Trainer(config, len(splits.class_names), distribution, base,
                      steps_per_epoch=math.ceil(len(splits.train) / config.batch_size))
    progress = Progress()
    checkpoints = Checkpoints(run, trainer.model, trainer.optimizers(), progress,
                              read_from=chief_run)
    finished = checkpoints.restore_last()
    if finished > config.epochs:
        trainer.start_fine_tuning()
    if finished >= config.total_epochs:
        logging.info("%s already holds %d finished epochs; exporting its best", run.root,
                     finished)
    elif finished:
        logging.info("resuming %s after epoch %d", run.root, finished)
    history = run.read_history(finished)

    inputs = EpochInputs(config, splits, trainer.strategy, trainer.feature_extractor,
                         distribution.precision, trainer.augmenter)
    if finished < config.total_epochs:
        inputs.compute_features(trainer.base_frozen)
    summary_writers = {split: tf.summary.create_file_writer(str(run.tensorboard / split))
                       for split in ("train", "validation")}
    for epoch in range(finished + 1, config.total_epochs + 1):
        if epoch > config.epochs and not trainer.fine_tuning:
            logging.info("fine-tuning from %s at learning rate %g", config.fine_tune_from,
                         config.fine_tune_learning_rate)
            trainer.start_fine_tuning()
        logging.info("Epoch %d/%d", epoch, config.total_epochs)
        row, selection_answers = _train_epoch(trainer, inputs, epoch)
        _record_epoch(row, run, summary_writers)
        run.append_selection_answers(epoch, selection_answers, splits.validation.paths,
                                     splits.validation.labels)
        crash_point("train.epoch_recorded")
        history.append(row)
        progress.train_seconds.assign_add(row["seconds"])
        progress.train_images.assign_add(len(splits.train))
        checkpoints.save(epoch, row["val_accuracy"])
    checkpoints.restore_best()
    logging.info("best epoch %d: val_accuracy %.4f", int(progress.best_epoch),
                 float(progress.best_val_accuracy))
    return Fitted(trainer, splits, progress, history, inputs.feature_seconds)


def _release(config: Config, distribution: distribute.Distribution, run: RunDir,
             fitted: Fitted, wall_start: float) -> TrainResult:
    """Exports the best epoch as a candidate and puts it through the gate (--publish), judged
    on the evaluation photos; writes the run's summary."""
    progress, splits = fitted.progress, fitted.splits
    layout = versions.Layout(Path(config.export_dir), config.model_name)
    start = time.perf_counter()
    precision = export_precision.choose(
        config.export_precision, distribution.precision, fitted.trainer.model,
        evaluation.run_photos(splits, config.data_dir), config.max_image_pixels,
        config.batch_size)
    logging.info("the exports compute in %s (%s)", precision.policy, precision.reason)
    export_model = model_lib.in_policy(fitted.trainer.model, precision.policy)
    candidate = export.export_candidate(
        export_model, splits.class_names, layout, config.max_image_pixels,
        source=_source(config, int(progress.best_epoch), int(progress.finished_epochs),
                       precision))
    logging.info("exported %s and %s", candidate.saved_model, candidate.h5)
    release_seconds = {"export": time.perf_counter() - start}
    decision = _gate(config, candidate, layout, export_model, splits, distribution.is_chief)
    release_seconds["gate"] = time.perf_counter() - start - release_seconds["export"]
    logging.info("%s", decision.reason)
    exports = (export.Exports(h5=layout.h5, saved_model=decision.version)
               if decision.version else candidate)
    summary = _summary(config, splits, distribution, progress, fitted.history, exports,
                       time.perf_counter() - wall_start, fitted.feature_seconds)
    summary["gate"], summary["release_seconds"] = decision.to_dict(), release_seconds
    run.write_summary(summary)
    return TrainResult(fitted.trainer.model, splits.class_names, summary, exports, decision)


def _finished_before(config: Config, summary: dict[str, Any]) -> TrainResult:
    """A run started again after it finished with the same flags: nothing to decode, compute,
    train or export, said in one line; its summary and the gate's decision as they were."""
    gate = summary["gate"]
    version = gate.get("published_version")
    decision = publish.Decision(gate["decision"], gate["reason"], gate["candidate"],
                                Path(version) if version else None)
    exports = export.Exports(h5=Path(summary["exports"]["h5"]),
                             saved_model=Path(summary["exports"]["saved_model"]))
    return TrainResult(None, tuple(summary["class_names"]), summary, exports, decision,
                       finished_before=True)


def _source(config: Config, best_epoch: int, finished_epochs: int,
            precision: export_precision.PrecisionChoice) -> dict[str, Any]:
    """What a version records of the run behind it: enough to find the run and its photos in
    their roles (`catdog.publish` judges it on the evaluation photos), and to tell a rerun's
    identical export."""
    return {"run_dir": str(Path(config.run_dir).resolve()), "epoch": best_epoch,
            "finished_epochs": finished_epochs, "precision": precision.policy,
            "precision_choice": precision.to_dict(),
            "data_dir": str(Path(config.data_dir).resolve()),
            "validation_split": config.validation_split,
            "evaluation_split": config.evaluation_split, "seed": config.seed,
            "image_size": config.image_size,
            **({contract.SOURCE_TEST_TIME_FLIP: True} if config.test_time_flip else {})}


def _gate(config: Config, candidate: export.Exports, layout: versions.Layout,
          model: keras.Model, splits: data.Splits, is_chief: bool) -> publish.Decision:
    """--publish: the candidate through the gate (catdog/publish.py) on the run's evaluation
    photos (or --gate_data_dir's), or kept as it is (and always on a non-chief worker, whose
    exports are scratch copies)."""
    if candidate.saved_model.parent == layout.base:
        return publish.already_published(candidate)
    if config.publish == "never" or not is_chief:
        return publish.kept(candidate)
    reference = inference.keras_classifier(model, splits.class_names)
    if config.test_time_flip:  # answering as the export's signatures do
        reference = inference.with_test_time_flip(reference)
    photos = evaluation.run_photos(splits, config.data_dir)
    if config.gate_data_dir:
        photos = evaluation.folder_photos(
            config.gate_data_dir, splits.class_names, config.image_size,
            config.evaluation_split, evaluation.chosen_by(splits),
            config.max_image_pixels)
    return publish.gate(candidate, layout, photos, reference, publish.GateSettings(
        config.gate_tolerance, config.gate_min_accuracy, config.publish == "always",
        config.keep_versions, config.batch_size, config.max_image_pixels))


def _train_epoch(trainer: Trainer, inputs: EpochInputs, epoch: int
                 ) -> tuple[dict[str, Any], np.ndarray]:
    """Trains one epoch with its own data order and augmentation seed, then validates on the
    selection photos; the epoch's row of metrics, and its probabilities on those photos."""
    config = trainer.config
    seed = model_lib.epoch_seed(config.seed, epoch)
    if trainer.augmenter.layers:
        model_lib.reseed_augmenter(trainer.augmenter, seed, epoch)
    count = len(inputs.splits.train)
    steps = math.ceil(count / config.batch_size)
    batches = inputs.train(seed, trainer.base_frozen)
    with ProgressLine(steps, "step") as progress:  # erased before the epoch's line is logged
        start = time.perf_counter()
        metrics = trainer.train_epoch(batches.dataset, batches.source, steps, progress)
        seconds = time.perf_counter() - start
        validation = inputs.validation(trainer.base_frozen)
        validation_metrics, probabilities = trainer.evaluate(validation.dataset,
                                                             validation.source)
    metrics.update(validation_metrics)
    return {"epoch": epoch, "phase": "fine_tune" if trainer.fine_tuning else "head", **metrics,
            "seconds": seconds, "images_per_second": count / seconds}, probabilities


def _record_epoch(row: dict[str, Any], run: RunDir,
                  writers: dict[str, tf.summary.SummaryWriter]) -> None:
    """Appends the epoch to metrics.csv and TensorBoard before its checkpoint is written.
    TensorBoard gets one run per split (tensorboard/train, tensorboard/validation) with the same
    tags, so a metric's training and validation curves share one chart."""
    run.append_history(row)
    logging.info("epoch %d: %s", row["epoch"], ", ".join(
        f"{name} {row[name]:.4f}" for name in ("loss", "accuracy", "val_loss", "val_accuracy"))
        + f", {row['images_per_second']:.1f} images/s")  # the epoch's one line of metrics
    for split, writer in writers.items():
        with writer.as_default(step=int(row["epoch"])):
            for name, value in row.items():
                if name in ("epoch", "phase") or name.startswith("val_") != (split != "train"):
                    continue
                tf.summary.scalar(name.removeprefix("val_"), value)
        writer.flush()


def _summary(config: Config, splits: data.Splits, distribution: distribute.Distribution,
             progress: Progress, history: list[dict[str, float]], exports: export.Exports,
             wall_seconds: float, feature_seconds: float) -> dict[str, Any]:
    train_seconds = float(progress.train_seconds)
    return {
        "flags": config.to_dict(),
        "class_names": list(splits.class_names),
        "train_images": len(splits.train),
        "validation_images": len(splits.validation),  # the selection photos
        "evaluation_images": len(splits.evaluation) if splits.evaluation else 0,
        "bad_images_skipped": len(splits.bad_images),
        "bad_images": [dataclasses.asdict(item) for item in splits.bad_images],
        "distribution": distribution.describe(),
        "epochs": history,
        "best_epoch": int(progress.best_epoch),
        "best_val_accuracy": float(progress.best_val_accuracy),
        "train_seconds": train_seconds,
        "train_images_per_second": int(progress.train_images) / train_seconds
        if train_seconds else 0.0,
        "wall_seconds": wall_seconds,
        "feature_seconds": feature_seconds,
        "exports": {"h5": str(exports.h5), "saved_model": str(exports.saved_model)},
    }


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def interrupted_message(config: Config) -> str:
    """One line: which epoch is saved and how to go on (every epoch is checkpointed when it
    ends, so an interrupt loses at most the epoch it stopped)."""
    saved = RunDir(config.run_dir).newest_saved_epoch()
    if not saved:
        return (f"interrupted before the first epoch ended; nothing to resume in "
                f"{config.run_dir}")
    return (f"interrupted: epoch {saved} of {config.total_epochs} is saved in {config.run_dir}; "
            "run the same command to resume")


def main(argv: Sequence[str]) -> int | None:
    from catdog import cli
    from catdog import flags as catdog_flags

    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}; every setting is a --flag "
                          "(see --helpfull)")
    config = catdog_flags.config_from_flags()
    signal.signal(signal.SIGTERM, _interrupt)  # Kubernetes and batch schedulers stop with it
    try:
        result = train(config)
    except KeyboardInterrupt:
        print(interrupted_message(config), file=sys.stderr, flush=True)
        cli.exit_at_once(130)
    except ServiceStalled as error:  # its reader thread may never return: no teardown
        print(f"error: {error}", file=sys.stderr, flush=True)
        cli.exit_at_once(2)
    summary = result.summary
    worker = summary["distribution"]["worker_index"]
    if worker:
        print(f"worker {worker} finished; the chief wrote the run folder and the exports")
        return
    done_before = (f"{config.run_dir} had finished all {config.total_epochs} epochs with these "
                   "flags, so nothing was decoded, computed or trained; "
                   if result.finished_before else "")
    print(f"{done_before}best val_accuracy {summary['best_val_accuracy']:.4f} at epoch "
          f"{summary['best_epoch']}; {result.decision.reason}")
    return result.decision.exit_status


def run() -> None:
    """The `catdog-train` console script (and `python -m catdog.train`)."""
    from catdog import cli

    cli.run_command("train", main)


if __name__ == "__main__":
    run()
