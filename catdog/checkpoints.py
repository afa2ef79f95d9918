"""A run's checkpoints: the last finished epoch (to resume) and the best one (to export).

Each is a TensorFlow checkpoint (model, optimizers, progress), not an `.h5` file: an `.h5`
drops the optimizer state, so a run resumed from one would not continue where it stopped.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import tensorflow as tf
from absl import logging

from catdog import atomic
from catdog.errors import CatdogError
from catdog.faults import crash_point
from catdog.run_dir import RunDir


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


class Checkpoints:
    """A run's checkpoint after every epoch (model, optimizer, progress) and of its best epoch."""

    def __init__(self, run: RunDir, model: keras.Model,
                 optimizers: dict[str, keras.optimizers.Optimizer], progress: Progress,
                 read_from: RunDir | None = None):
        """Writes under `run`; reads (resumes) from `read_from`, the chief's run dir when this
        process is a non-chief worker writing to scratch space, else `run` itself."""
        self.progress = progress
        self.read_from = read_from or run
        self.last = tf.train.Checkpoint(model=model, **optimizers, **progress.variables())
        self.last_manager = tf.train.CheckpointManager(self.last, run.checkpoints, max_to_keep=2)
        self.best = tf.train.Checkpoint(model=model)
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
            crash_point("checkpoints.best_saved")
        self.progress.finished_epochs.assign(epoch)
        _save(self.last_manager, epoch)

    def restore_best(self) -> bool:
        """The best epoch's weights (True), or, when that checkpoint is damaged, the last
        epoch's (False).
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
                    return True
                logging.warning("best checkpoint %s cannot be restored (%s); exporting the "
                                "last epoch's weights instead", prefix, problem)
        for folder in last_dirs:
            for prefix in _checkpoint_prefixes(folder):
                if _try_restore(self.best, prefix) is None:
                    return False
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
