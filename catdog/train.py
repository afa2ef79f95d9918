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
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from catdog import atomic, data, distribute, export
from catdog import features as features_lib
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
    """The model, optimizers and metrics of a run, and its distributed train and eval steps.

    Steps exist for two inputs: images through the whole model (with augmentation in training),
    and, while the base is frozen, cached pooled features through the head alone.
    """

    def __init__(self, config: Config, num_classes: int,
                 distribution: distribute.Distribution):
        self.config = config
        self.strategy = distribution.strategy
        self.jit_compile = distribution.jit_compile
        self.fine_tuning = False
        with self.strategy.scope():
            self.model = model_lib.build_classifier(num_classes, config.image_size,
                                                    config.weights)
            self.head = model_lib.head(self.model)
            self.feature_extractor = model_lib.feature_extractor(self.model)
            self.augmenter = model_lib.build_augmenter(config)
            self.optimizer = self._adam(config.learning_rate, distribution)
            self.optimizer.build(self.model.trainable_variables)
            self.fine_tune_optimizer = None
            if config.fine_tune_from:
                self.fine_tune_optimizer = self._adam(config.fine_tune_learning_rate,
                                                      distribution)
                model_lib.unfreeze_from(self.model, config.fine_tune_from)
                self.fine_tune_optimizer.build(self.model.trainable_variables)
                model_lib.frozen_base(self.model).trainable = False
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
            self.train_loss = keras.metrics.Mean(name="loss")
            self.train_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            self.val_loss = keras.metrics.Mean(name="val_loss")
            self.val_accuracy = keras.metrics.SparseCategoricalAccuracy(name="val_accuracy")
        self.train_step = self._train_step(self.model, self.optimizer, augment=True)
        self.train_features_step = self._train_step(self.head, self.optimizer, augment=False)
        self.eval_step = self._eval_step(self.model)
        self.eval_features_step = self._eval_step(self.head)

    def _adam(self, learning_rate: float, distribution: distribute.Distribution):
        optimizer = keras.optimizers.Adam(distribute.learning_rate_for(
            learning_rate, distribution, self.config.scale_learning_rate))
        if distribution.precision == "mixed_float16":
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def start_fine_tuning(self) -> None:
        """Unfreezes the base from --fine_tune_from; later steps use the fine-tuning optimizer."""
        model_lib.unfreeze_from(self.model, self.config.fine_tune_from)
        self.fine_tuning = True
        self.train_step = self._train_step(self.model, self.fine_tune_optimizer, augment=True)

    def _train_step(self, network: keras.Model, optimizer, augment: bool):
        def gradients(inputs, labels):
            with tf.GradientTape() as tape:
                probabilities = network(inputs, training=True)
                per_example_loss = self.loss_fn(labels, probabilities)
                loss = optimizer.scale_loss(tf.nn.compute_average_loss(per_example_loss))
            return per_example_loss, probabilities, tape.gradient(
                loss, network.trainable_variables)

        # XLA compiles the forward and backward pass only: the augmentation layers' image ops
        # stay outside it, since XLA with them has failed in reports.
        compiled = tf.function(gradients, jit_compile=True) if self.jit_compile else gradients

        def replica_step(inputs, labels):
            if augment and self.augmenter.layers:
                inputs = self.augmenter(inputs, training=True)
            per_example_loss, probabilities, grads = compiled(inputs, labels)
            optimizer.apply_gradients(zip(grads, network.trainable_variables))
            self.train_loss.update_state(per_example_loss)
            self.train_accuracy.update_state(labels, probabilities)

        return tf.function(lambda batch: self.strategy.run(replica_step, args=batch))

    def _eval_step(self, network: keras.Model):
        def replica_step(inputs, labels):
            probabilities = network(inputs, training=False)
            self.val_loss.update_state(self.loss_fn(labels, probabilities))
            self.val_accuracy.update_state(labels, probabilities)

        return tf.function(lambda batch: self.strategy.run(replica_step, args=batch))

    def train_epoch(self, dataset: tf.data.Dataset, steps: int, progbar: keras.utils.Progbar,
                    on_features: bool = False) -> dict[str, float]:
        """One pass over `dataset` (images, or features when `on_features`); returns the
        epoch's mean loss and accuracy."""
        for metric in (self.train_loss, self.train_accuracy):
            metric.reset_state()
        step_fn = self.train_features_step if on_features else self.train_step
        for step, batch in enumerate(self.strategy.experimental_distribute_dataset(dataset), 1):
            step_fn(batch)
            progbar.update(min(step, steps), values=self._results(
                self.train_loss, self.train_accuracy))
        return dict(self._results(self.train_loss, self.train_accuracy))

    def evaluate(self, distributed_dataset, on_features: bool = False) -> dict[str, float]:
        """Mean loss and accuracy over a distributed validation dataset."""
        for metric in (self.val_loss, self.val_accuracy):
            metric.reset_state()
        step_fn = self.eval_features_step if on_features else self.eval_step
        for batch in distributed_dataset:
            step_fn(batch)
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
    """Runs (or resumes) the training that `config` describes, then exports the best epoch.

    Under multi-worker training every worker runs this; only the chief writes `run_dir` and
    `export_dir`. The others write the same files to a scratch folder (saving can need all
    workers) that is removed at the end.
    """
    wall_start = time.perf_counter()
    distribution = distribute.setup_distribution(config)
    if distribution.is_chief:
        return _train_writing_to(config, distribution, wall_start, RunDir(config.run_dir))
    with tempfile.TemporaryDirectory(prefix=f"catdog-worker{distribution.worker_index}-") as tmp:
        scratch = dataclasses.replace(config, run_dir=f"{tmp}/run", export_dir=f"{tmp}/export")
        return _train_writing_to(scratch, distribution, wall_start, RunDir(config.run_dir))


def _train_writing_to(config: Config, distribution: distribute.Distribution, wall_start: float,
                      chief_run: RunDir) -> TrainResult:
    run = RunDir(config.run_dir)
    run.open(config)
    handler = _log_to_file(run)
    logging.info("distribution: %s", distribution.describe())  # on screen and in train.log
    try:
        return _train(config, distribution, run, chief_run, wall_start)
    finally:
        logging.get_absl_logger().removeHandler(handler)
        handler.close()


class Checkpoints:
    """A run's checkpoint after every epoch (model, optimizer, progress) and of its best epoch."""

    def __init__(self, run: RunDir, trainer: Trainer, progress: Progress,
                 read_from: RunDir | None = None):
        """Writes under `run`; reads (resumes) from `read_from`, the chief's run dir when this
        process is a non-chief worker writing to scratch space, else `run` itself."""
        self.progress = progress
        self.read_from = read_from or run
        optimizers = {"optimizer": trainer.optimizer}
        if trainer.fine_tune_optimizer:
            optimizers["fine_tune_optimizer"] = trainer.fine_tune_optimizer
        self.last = tf.train.Checkpoint(model=trainer.model, **optimizers,
                                        **progress.variables())
        self.last_manager = tf.train.CheckpointManager(self.last, run.checkpoints, max_to_keep=2)
        self.best = tf.train.Checkpoint(model=trainer.model)
        self.best_manager = tf.train.CheckpointManager(self.best, run.best_checkpoint,
                                                       max_to_keep=1)

    # Resume cases, in order:
    #   1. no checkpoint: a new run, epoch 0;
    #   2. the newest checkpoint restores: go on after its epoch;
    #   3. it is damaged (truncated, zeroed, deleted or bit-flipped files): say which file and
    #      why in one line, and fall back to the next older one that restores;
    #   4. none restores: one line saying so and how to start afresh.
    # The best-epoch checkpoint, read for the export, falls back to the newest last-epoch one.
    def restore_last(self) -> int:
        """Restores the newest finished epoch that can be restored; returns how many epochs
        are finished."""
        candidates = _checkpoint_prefixes(self.read_from.checkpoints)
        for prefix in candidates:
            problem = _try_restore(self.last, prefix)
            if problem is None:
                return int(self.progress.finished_epochs)
            logging.warning("checkpoint %s cannot be restored (%s); trying an older one",
                            prefix, problem)
        if candidates:
            raise CatdogError(f"no checkpoint under {self.read_from.checkpoints} can be restored "
                              f"(newest: {candidates[0]}); start afresh with a new --run_dir")
        return 0

    def save(self, epoch: int, val_accuracy: float) -> None:
        """Saves the finished epoch, and also as the best one if its val_accuracy is higher;
        a write that fails (disk full) removes its temporaries and ends the run in one line."""
        if val_accuracy > float(self.progress.best_val_accuracy):
            _save(self.best_manager, epoch)
            self.progress.best_val_accuracy.assign(val_accuracy)
            self.progress.best_epoch.assign(epoch)
        self.progress.finished_epochs.assign(epoch)
        _save(self.last_manager, epoch)

    def restore_best(self) -> None:
        """The best epoch's weights, or, when that checkpoint is damaged, the last epoch's.
        This process's own checkpoints come first: a non-chief worker's scratch copies hold the
        same weights and are not being written by another process."""
        own = [Path(self.best_manager.directory), Path(self.last_manager.directory)]
        shared = [Path(self.read_from.best_checkpoint), Path(self.read_from.checkpoints)]
        best_dirs = list(dict.fromkeys([own[0], shared[0]]))
        last_dirs = list(dict.fromkeys([own[1], shared[1]]))
        for folder in best_dirs:
            for prefix in _checkpoint_prefixes(folder):
                problem = _try_restore(self.best, prefix)
                if problem is None:
                    return
                logging.warning("best checkpoint %s cannot be restored (%s); exporting the "
                                "last epoch's weights instead", prefix, problem)
        for folder in last_dirs:
            for prefix in _checkpoint_prefixes(folder):
                if _try_restore(self.best, prefix) is None:
                    return
        raise CatdogError(f"no checkpoint under {self.read_from.checkpoints} can be restored; "
                          "start afresh with a new --run_dir")


def _checkpoint_prefixes(folder) -> list[str]:
    """Checkpoint prefixes in `folder`, newest first: every `ckpt-N` that has an index or a data
    file, so a damaged `checkpoint` state file hides none and a missing file is reported."""
    prefixes = {re.sub(r"\.(index|data-\d+-of-\d+)$", "", str(p))
                for p in Path(folder).glob("ckpt-*") if re.search(r"ckpt-\d+\.", p.name)}
    return sorted(prefixes, key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)


def _try_restore(checkpoint: tf.train.Checkpoint, prefix: str) -> str | None:
    """None when `prefix` restored every object, else a one-line reason."""
    try:
        checkpoint.restore(prefix).assert_existing_objects_matched()
        return None
    except (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError) as error:
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        return f"{type(error).__name__}: {message.strip().splitlines()[0][:200]}"


def _save(manager: tf.train.CheckpointManager, epoch: int) -> None:
    try:
        manager.save(checkpoint_number=epoch)
    except (tf.errors.OpError, OSError) as error:
        atomic.remove_leftovers(manager.directory, also=atomic.TENSORFLOW_TEMPORARIES)
        cause = getattr(error, "strerror", None) or getattr(error, "message", str(error))
        raise CatdogError(f"cannot write checkpoint {manager.directory}/ckpt-{epoch}: "
                          f"{cause.strip().splitlines()[0]}") from None


def _train(config: Config, distribution: distribute.Distribution, run: RunDir,
           chief_run: RunDir, wall_start: float) -> TrainResult:
    splits = data.prepare_splits(config)
    keras.utils.set_random_seed(config.seed)
    trainer = Trainer(config, len(splits.class_names), distribution)
    progress = Progress()
    checkpoints = Checkpoints(run, trainer, progress, read_from=chief_run)
    finished = checkpoints.restore_last()
    if finished > config.epochs:
        trainer.start_fine_tuning()
    if finished >= config.total_epochs:
        logging.info("%s already holds %d finished epochs; exporting its best", run.root,
                     finished)
    elif finished:
        logging.info("resuming %s after epoch %d", run.root, finished)
    history = run.read_history(finished)

    inputs = EpochInputs(trainer, splits, distribution.precision)
    if finished < config.total_epochs:
        inputs.compute_features()
    summary_writers = {split: tf.summary.create_file_writer(str(run.tensorboard / split))
                       for split in ("train", "validation")}
    for epoch in range(finished + 1, config.total_epochs + 1):
        if epoch > config.epochs and not trainer.fine_tuning:
            logging.info("fine-tuning from %s at learning rate %g", config.fine_tune_from,
                         config.fine_tune_learning_rate)
            trainer.start_fine_tuning()
        logging.info("Epoch %d/%d", epoch, config.total_epochs)
        row = _train_epoch(trainer, inputs, epoch)
        _record_epoch(row, run, summary_writers)
        history.append(row)
        progress.train_seconds.assign_add(row["seconds"])
        progress.train_images.assign_add(len(splits.train))
        checkpoints.save(epoch, row["val_accuracy"])

    checkpoints.restore_best()
    logging.info("best epoch %d: val_accuracy %.4f", int(progress.best_epoch),
                 float(progress.best_val_accuracy))
    exports = export.export_all(
        trainer.model, splits.class_names, config.export_dir, config.model_name,
        config.keep_versions, config.max_image_pixels,
        source=f"{Path(config.run_dir).resolve()} epoch {int(progress.best_epoch)} of "
               f"{int(progress.finished_epochs)}")
    logging.info("exported %s and %s", exports.h5, exports.saved_model)
    summary = _summary(config, splits, distribution, progress, history, exports,
                       time.perf_counter() - wall_start, inputs.feature_seconds)
    run.write_summary(summary)
    return TrainResult(trainer.model, splits.class_names, summary, exports)


class EpochInputs:
    """Where each epoch's batches come from: decoded images, or, while the base is frozen,
    pooled features computed once per run (training ones only with --cache_features; the
    validation ones always, since validation images are never augmented)."""

    def __init__(self, trainer: Trainer, splits: data.Splits, precision: str):
        self.trainer, self.splits, self.precision = trainer, splits, precision
        size = trainer.config.image_size
        limit = trainer.config.max_image_pixels
        self.images = {"train": data.decoded_images(splits.train, size, limit),
                       "validation": data.decoded_images(splits.validation, size, limit)}
        self._features: dict[str, tf.data.Dataset] = {}
        self._validation: dict[bool, Any] = {}
        self.feature_seconds = 0.0  # spent computing (or reading) features in this process

    def _features_of(self, split: str) -> tf.data.Dataset:
        if split not in self._features:
            files = self.splits.train if split == "train" else self.splits.validation
            start = time.perf_counter()
            self._features[split] = features_lib.cached_features(
                self.trainer.feature_extractor, files, self.images[split], self.trainer.config,
                self.precision, split)
            self.feature_seconds += time.perf_counter() - start
        return self._features[split]

    def compute_features(self) -> None:
        """Runs the feature pass now, before `Epoch 1/N`, with its own progress, when the run
        will use features (so the first epoch's bar measures the epoch alone)."""
        if not self.trainer.fine_tuning:
            if self.trainer.config.cache_features:
                self._features_of("train")
            self._features_of("validation")

    def train(self, seed: int) -> tuple[tf.data.Dataset, bool]:
        """This epoch's shuffled training batches, and whether they are features."""
        on_features = self.trainer.config.cache_features and not self.trainer.fine_tuning
        source = self._features_of("train") if on_features else self.images["train"]
        return data.batches(source, self.trainer.config.batch_size, shuffle_seed=seed), on_features

    def validation(self) -> tuple[Any, bool]:
        """The distributed validation batches, and whether they are features."""
        on_features = not self.trainer.fine_tuning
        if on_features not in self._validation:
            source = self._features_of("validation") if on_features else self.images["validation"]
            self._validation[on_features] = self.trainer.strategy.experimental_distribute_dataset(
                data.batches(source, self.trainer.config.batch_size))
        return self._validation[on_features], on_features


def _train_epoch(trainer: Trainer, inputs: EpochInputs, epoch: int) -> dict[str, Any]:
    """Trains one epoch with its own data order and augmentation seed, then validates."""
    config = trainer.config
    seed = epoch_seed(config.seed, epoch)
    if trainer.augmenter.layers:
        model_lib.reseed_augmenter(trainer.augmenter, seed, epoch)
    count = len(inputs.splits.train)
    steps = math.ceil(count / config.batch_size)
    progbar = keras.utils.Progbar(steps, stateful_metrics=[
        "loss", "accuracy", "val_loss", "val_accuracy"])
    batches, on_features = inputs.train(seed)
    start = time.perf_counter()
    metrics = trainer.train_epoch(batches, steps, progbar, on_features)
    seconds = time.perf_counter() - start
    metrics.update(trainer.evaluate(*inputs.validation()))
    progbar.update(steps, values=list(metrics.items()), finalize=True)
    return {"epoch": epoch, "phase": "fine_tune" if trainer.fine_tuning else "head", **metrics,
            "seconds": seconds, "images_per_second": count / seconds}


def _record_epoch(row: dict[str, Any], run: RunDir,
                  writers: dict[str, tf.summary.SummaryWriter]) -> None:
    """Appends the epoch to metrics.csv and TensorBoard before its checkpoint is written.
    TensorBoard gets one run per split (tensorboard/train, tensorboard/validation) with the same
    tags, so a metric's training and validation curves share one chart."""
    run.append_history(row)
    logging.info("epoch %d: %s", row["epoch"], ", ".join(
        f"{name} {row[name]:.4f}" for name in ("loss", "accuracy", "val_loss", "val_accuracy"))
        + f", {row['images_per_second']:.1f} images/s")  # the epoch's line in train.log
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
        "validation_images": len(splits.validation),
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
    indexes = Path(config.run_dir, "checkpoints").glob("ckpt-*.index")
    saved = max((int(p.stem.split("-")[1]) for p in indexes), default=0)
    if not saved:
        return (f"interrupted before the first epoch ended; nothing to resume in "
                f"{config.run_dir}")
    return (f"interrupted: epoch {saved} of {config.total_epochs} is saved in {config.run_dir}; "
            "run the same command to resume")


def main(argv: Sequence[str]) -> int | None:
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
        return 130
    summary = result.summary
    worker = summary["distribution"]["worker_index"]
    if worker:
        print(f"worker {worker} finished; the chief wrote the run folder and the exports")
        return
    print(f"best val_accuracy {summary['best_val_accuracy']:.4f} at epoch "
          f"{summary['best_epoch']}; exported {summary['exports']['h5']} and "
          f"{summary['exports']['saved_model']}")


def run() -> None:
    """The `catdog-train` console script (and `python -m catdog.train`)."""
    from catdog import cli, flags as catdog_flags

    cli.run(main, catdog_flags.define_train_flags)


if __name__ == "__main__":
    run()
