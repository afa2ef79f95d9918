"""The run folder: where a training run keeps its state, logs and results.

    <run_dir>/config.json     the settings the run started with (a resume must match them)
    <run_dir>/checkpoints/    tf.train.CheckpointManager: last epochs; checkpoints/best/: best epoch
    <run_dir>/selection_answers.npz  every finished epoch's probabilities on the selection
                              photos, with their paths and labels (benchmarks/recipes.py
                              cross-validates the choice of epoch with them)
    <run_dir>/logs/train.log  the run's log
    <run_dir>/tensorboard/    tf.summary scalars per epoch
    <run_dir>/metrics.csv     one row per finished epoch
    <run_dir>/summary.json    written when the run ends
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from catdog import atomic
from catdog.config import Config
from catdog.errors import CatdogError

METRIC_COLUMNS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "seconds",
                  "images_per_second")
_TEXT_COLUMNS = ("phase",)


def write_json_atomically(path: Path, content: Any) -> None:
    """Writes JSON whole (catdog.atomic), so readers never see half a file."""
    atomic.write_text(path, json.dumps(content, indent=2) + "\n")


class RunDir:
    """Paths of one run folder, and the few files the training loop reads back."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.best_checkpoint = self.checkpoints / "best"
        self.logs = self.root / "logs"
        self.tensorboard = self.root / "tensorboard"
        self.metrics_csv = self.root / "metrics.csv"
        self.summary_json = self.root / "summary.json"
        self.selection_answers = self.root / "selection_answers.npz"
        self.config_json = self.root / "config.json"
        self.lock = self.root / ".lock"  # held by the process training into this folder

    def open(self, config: Config) -> None:
        """Creates the folders, or checks that an existing run was started with compatible flags.
        Only a run with a finished epoch pins its flags: one that failed before (a download, a
        missing folder, bad weights) takes the corrected command as a new start."""
        if self.config_json.exists() and self.has_finished_epoch():
            previous = json.loads(self.config_json.read_text())
            changed = config.changes_that_break_resume(previous)
            if changed:
                name, (old, new) = next(iter(changed.items()))
                raise CatdogError(
                    f"--run_dir={self.root} holds a run started with --{name}={old}, not {new}; "
                    f"use those flags to resume it, or a new --run_dir (differing: "
                    f"{', '.join(changed)})")
        try:
            for folder in (self.checkpoints, self.logs, self.tensorboard):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise atomic.write_error(folder, error) from None
        self.remove_leftovers()
        write_json_atomically(self.config_json, config.to_dict())

    def has_finished_epoch(self) -> bool:
        return self.newest_saved_epoch() > 0

    def newest_saved_epoch(self) -> int:
        """The newest epoch that has a checkpoint (0 when none has)."""
        indexes = self.checkpoints.glob("ckpt-*.index")
        return max((int(p.stem.split("-")[1]) for p in indexes), default=0)

    def remove_leftovers(self) -> None:
        """Temporaries of a killed or failed run: catdog's hidden ones and TensorFlow's
        `*_temp` checkpoint folders."""
        for folder in (self.root, self.checkpoints, self.best_checkpoint):
            atomic.remove_leftovers(folder, also=atomic.TENSORFLOW_TEMPORARIES)

    def read_history(self, finished_epochs: int) -> list[dict[str, Any]]:
        """Rows of metrics.csv for the first `finished_epochs` epochs; later rows are dropped
        (they belong to an epoch whose checkpoint was never written) and the file rewritten."""
        if not self.metrics_csv.exists():
            return []
        with open(self.metrics_csv, newline="") as f:
            rows = [{k: v if k in _TEXT_COLUMNS else float(v) for k, v in row.items()}
                    for row in csv.DictReader(f)]
        for row in rows:
            row["epoch"] = int(row["epoch"])
        rows = [row for row in rows if row["epoch"] <= finished_epochs]
        self._write_history(rows)
        return rows

    def append_history(self, row: dict[str, Any]) -> None:
        """Adds an epoch's row; the file is rewritten whole, so a full disk cannot leave half
        a row in it."""
        self._write_history(self._rows() + [row])

    def _rows(self) -> list[dict[str, Any]]:
        if not self.metrics_csv.exists():
            return []
        with open(self.metrics_csv, newline="") as f:
            return list(csv.DictReader(f))

    def _write_history(self, rows: list[dict[str, Any]]) -> None:
        with atomic.atomic_file(self.metrics_csv) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)

    def append_selection_answers(self, epoch: int, probabilities: np.ndarray,
                                 paths: tuple[str, ...], labels: tuple[int, ...]) -> None:
        """Adds epoch `epoch`'s probabilities [N, C] on the selection photos to
        selection_answers.npz (`probabilities` [epochs, N, C], `paths`, `labels`), rewritten
        whole. Epochs before it that the file lacks (a run resumed from before the file
        existed, or of other photos) are NaN rows."""
        earlier = np.full((epoch - 1, *probabilities.shape), np.nan, np.float32)
        if self.selection_answers.exists():
            with np.load(self.selection_answers) as kept:
                if tuple(kept["paths"]) == tuple(paths):
                    known = kept["probabilities"][:epoch - 1]
                    earlier[:len(known)] = known
        with atomic.atomic_file(self.selection_answers) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, probabilities=np.concatenate([earlier, probabilities[None]]),
                         paths=np.array(paths), labels=np.array(labels))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomically(self.summary_json, summary)

    def finished_summary(self, config: Config) -> dict[str, Any] | None:
        """The summary of a run that already did all of what `config` asks: every epoch, with
        exactly these flags, and its exported SavedModel still in place; else None."""
        try:
            summary = json.loads(self.summary_json.read_text())
            done = (summary["flags"] == config.to_dict()
                    and len(summary["epochs"]) == config.total_epochs
                    and Path(summary["exports"]["saved_model"]).is_dir()
                    and Path(summary["exports"]["h5"]).is_file())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return summary if done else None
