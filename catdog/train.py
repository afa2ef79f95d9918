"""Trains the classifier and exports it: `python -m catdog.train --flagfile=configs/quickstart.flags`.

One training loop serves every `tf.distribute` strategy: a `tf.function` step that calls
`strategy.run`, with the loss averaged over the global batch. (Not `model.fit`: Keras 3.15's fit
fails under MultiWorkerMirroredStrategy, keras-team/keras#20585.)

A checkpoint (model, optimizer, progress) is written after every epoch, so a run started again with
the same flags and run_dir continues from its last finished epoch; data order and augmentation are
seeded per epoch, so the resumed run ends where an uninterrupted one would. The exported weights
are those of the epoch with the best validation accuracy.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import math
import time
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from catdog import data, export
from catdog import flags as catdog_flags
from catdog import model as model_lib
from catdog.config import Config
from catdog.errors import CatdogError
from catdog.run_dir import RunDir


@dataclasses.dataclass
class TrainResult:
    """What a finished run leaves: the model holding its best weights, and where things went."""

    model: keras.Model
    class_names: tuple[str, ...]
    summary: dict[str, Any]
    exports: export.Exports


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order and augmentation, the same on every (re)start."""
    return (seed * 1_000_003 + epoch) % (2**31 - 1)


class Trainer:
    """The model, optimizer and metrics of a run, and its distributed train and eval steps."""

    def __init__(self, config: Config, num_classes: int, strategy: tf.distribute.Strategy):
        self.config = config
        self.strategy = strategy
        with strategy.scope():
            self.model = model_lib.build_classifier(num_classes, config.image_size,
                                                    config.weights)
            self.augmenter = model_lib.build_augmenter(config)
            self.optimizer = keras.optimizers.Adam(config.learning_rate)
            self.optimizer.build(self.model.trainable_variables)
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
            self.train_loss = keras.metrics.Mean(name="loss")
            self.train_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            self.val_loss = keras.metrics.Mean(name="val_loss")
            self.val_accuracy = keras.metrics.SparseCategoricalAccuracy(name="val_accuracy")
        self.train_step = tf.function(self._distributed_train_step)
        self.eval_step = tf.function(self._distributed_eval_step)

    def _replica_train_step(self, images: tf.Tensor, labels: tf.Tensor) -> None:
        if self.augmenter.layers:
            images = self.augmenter(images, training=True)
        with tf.GradientTape() as tape:
            probabilities = self.model(images, training=True)
            per_example_loss = self.loss_fn(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_example_loss)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.train_loss.update_state(per_example_loss)
        self.train_accuracy.update_state(labels, probabilities)

    def _replica_eval_step(self, images: tf.Tensor, labels: tf.Tensor) -> None:
        probabilities = self.model(images, training=False)
        self.val_loss.update_state(self.loss_fn(labels, probabilities))
        self.val_accuracy.update_state(labels, probabilities)

    def _distributed_train_step(self, batch) -> None:
        self.strategy.run(self._replica_train_step, args=batch)

    def _distributed_eval_step(self, batch) -> None:
        self.strategy.run(self._replica_eval_step, args=batch)

    def train_epoch(self, dataset: tf.data.Dataset, steps: int,
                    progbar: keras.utils.Progbar) -> dict[str, float]:
        """One pass over `dataset`; returns the epoch's mean loss and accuracy."""
        for metric in (self.train_loss, self.train_accuracy):
            metric.reset_state()
        for step, batch in enumerate(self.strategy.experimental_distribute_dataset(dataset), 1):
            self.train_step(batch)
            progbar.update(min(step, steps), values=self._results(
                self.train_loss, self.train_accuracy))
        return dict(self._results(self.train_loss, self.train_accuracy))

    def evaluate(self, distributed_dataset) -> dict[str, float]:
        """Mean loss and accuracy over a distributed validation dataset."""
        for metric in (self.val_loss, self.val_accuracy):
            metric.reset_state()
        for batch in distributed_dataset:
            self.eval_step(batch)
        return dict(self._results(self.val_loss, self.val_accuracy))

    @staticmethod
    def _results(*metrics: keras.metrics.Metric) -> list[tuple[str, float]]:
        return [(m.name, float(m.result())) for m in metrics]


class Progress:
    """The part of a run's state that checkpoints carry besides model and optimizer."""

    def __init__(self):
        self.finished_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_val_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.train_images = tf.Variable(0, dtype=tf.int64, trainable=False)

    def variables(self) -> dict[str, tf.Variable]:
        return dict(vars(self))


def _log_to_file(run: RunDir) -> std_logging.Handler:
    """Copies the log, from INFO up, into <run_dir>/logs/train.log."""
    if logging.get_verbosity() < logging.INFO:
        logging.set_verbosity(logging.INFO)
    handler = std_logging.FileHandler(run.logs / "train.log")
    handler.setFormatter(logging.PythonFormatter())
    logging.get_absl_logger().addHandler(handler)
    return handler


def train(config: Config) -> TrainResult:
    """Runs (or resumes) the training that `config` describes, then exports the best epoch."""
    wall_start = time.perf_counter()
    run = RunDir(config.run_dir)
    run.open(config)
    handler = _log_to_file(run)
    try:
        return _train(config, run, wall_start)
    finally:
        logging.get_absl_logger().removeHandler(handler)
        handler.close()


class Checkpoints:
    """A run's checkpoint after every epoch (model, optimizer, progress) and of its best epoch."""

    def __init__(self, run: RunDir, trainer: Trainer, progress: Progress):
        self.progress = progress
        self.last = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer,
                                        **progress.variables())
        self.last_manager = tf.train.CheckpointManager(self.last, run.checkpoints, max_to_keep=2)
        self.best = tf.train.Checkpoint(model=trainer.model)
        self.best_manager = tf.train.CheckpointManager(self.best, run.best_checkpoint,
                                                       max_to_keep=1)

    def restore_last(self) -> int:
        """Restores the last finished epoch, if any; returns how many epochs are finished."""
        if self.last_manager.latest_checkpoint:
            self.last.restore(self.last_manager.latest_checkpoint).assert_existing_objects_matched()
        return int(self.progress.finished_epochs)

    def save(self, epoch: int, val_accuracy: float) -> None:
        """Saves the finished epoch, and also as the best one if its val_accuracy is higher."""
        if val_accuracy > float(self.progress.best_val_accuracy):
            self.best_manager.save(checkpoint_number=epoch)
            self.progress.best_val_accuracy.assign(val_accuracy)
            self.progress.best_epoch.assign(epoch)
        self.progress.finished_epochs.assign(epoch)
        self.last_manager.save(checkpoint_number=epoch)

    def restore_best(self) -> None:
        self.best.restore(self.best_manager.latest_checkpoint).assert_existing_objects_matched()


def _train(config: Config, run: RunDir, wall_start: float) -> TrainResult:
    splits = data.prepare_splits(config)
    keras.utils.set_random_seed(config.seed)
    strategy = tf.distribute.get_strategy()
    logging.info("strategy %s with %d replica(s)", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    trainer = Trainer(config, len(splits.class_names), strategy)
    progress = Progress()
    checkpoints = Checkpoints(run, trainer, progress)
    finished = checkpoints.restore_last()
    if finished >= config.epochs:
        logging.info("%s already holds %d finished epochs; exporting its best", run.root,
                     finished)
    elif finished:
        logging.info("resuming %s after epoch %d", run.root, finished)
    history = run.read_history(finished)

    train_images = data.decoded_images(splits.train, config.image_size)
    validation = strategy.experimental_distribute_dataset(data.batches(
        data.decoded_images(splits.validation, config.image_size), config.batch_size))
    summary_writer = tf.summary.create_file_writer(str(run.tensorboard))
    for epoch in range(finished + 1, config.epochs + 1):
        logging.info("Epoch %d/%d", epoch, config.epochs)
        row = _train_epoch(trainer, train_images, validation, epoch)
        _record_epoch(row, run, summary_writer)
        history.append(row)
        progress.train_seconds.assign_add(row["seconds"])
        progress.train_images.assign_add(len(splits.train))
        checkpoints.save(epoch, row["val_accuracy"])

    checkpoints.restore_best()
    logging.info("best epoch %d: val_accuracy %.4f", int(progress.best_epoch),
                 float(progress.best_val_accuracy))
    exports = export.export_all(trainer.model, splits.class_names, config.export_dir,
                                config.model_name, config.keep_versions)
    logging.info("exported %s and %s", exports.h5, exports.saved_model)
    summary = _summary(config, splits, strategy, progress, history, exports,
                       time.perf_counter() - wall_start)
    run.write_summary(summary)
    return TrainResult(trainer.model, splits.class_names, summary, exports)


def _train_epoch(trainer: Trainer, train_images: tf.data.Dataset, validation,
                 epoch: int) -> dict[str, float]:
    """Trains one epoch with its own data order and augmentation seed, then validates."""
    config = trainer.config
    seed = epoch_seed(config.seed, epoch)
    if trainer.augmenter.layers:
        model_lib.reseed_augmenter(trainer.augmenter, seed, epoch)
    count = int(train_images.cardinality())
    steps = math.ceil(count / config.batch_size)
    progbar = keras.utils.Progbar(steps, stateful_metrics=[
        "loss", "accuracy", "val_loss", "val_accuracy"])
    start = time.perf_counter()
    metrics = trainer.train_epoch(
        data.batches(train_images, config.batch_size, shuffle_seed=seed), steps, progbar)
    seconds = time.perf_counter() - start
    metrics.update(trainer.evaluate(validation))
    progbar.update(steps, values=list(metrics.items()), finalize=True)
    return {"epoch": epoch, **metrics, "seconds": seconds, "images_per_second": count / seconds}


def _record_epoch(row: dict[str, float], run: RunDir, writer: tf.summary.SummaryWriter) -> None:
    """Appends the epoch to metrics.csv and TensorBoard before its checkpoint is written."""
    run.append_history(row)
    with writer.as_default(step=int(row["epoch"])):
        for name, value in row.items():
            if name != "epoch":
                tf.summary.scalar(name, value)
    writer.flush()


def _summary(config: Config, splits: data.Splits, strategy: tf.distribute.Strategy,
             progress: Progress, history: list[dict[str, float]], exports: export.Exports,
             wall_seconds: float) -> dict[str, Any]:
    train_seconds = float(progress.train_seconds)
    return {
        "flags": config.to_dict(),
        "class_names": list(splits.class_names),
        "train_images": len(splits.train),
        "validation_images": len(splits.validation),
        "bad_images_skipped": len(splits.bad_images),
        "bad_images": [dataclasses.asdict(item) for item in splits.bad_images],
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "epochs": history,
        "best_epoch": int(progress.best_epoch),
        "best_val_accuracy": float(progress.best_val_accuracy),
        "train_seconds": train_seconds,
        "train_images_per_second": int(progress.train_images) / train_seconds
        if train_seconds else 0.0,
        "wall_seconds": wall_seconds,
        "exports": {"h5": str(exports.h5), "saved_model": str(exports.saved_model)},
    }


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise CatdogError(f"unexpected arguments {list(argv[1:])}; every setting is a --flag "
                          "(see --helpfull)")
    result = train(catdog_flags.config_from_flags())
    summary = result.summary
    print(f"best val_accuracy {summary['best_val_accuracy']:.4f} at epoch "
          f"{summary['best_epoch']}; exported {summary['exports']['h5']} and "
          f"{summary['exports']['saved_model']}")


if __name__ == "__main__":
    from catdog import cli

    cli.run(main, catdog_flags.define_train_flags)
