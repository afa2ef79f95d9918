"""Does configs/best.flags run within the wall time of the best.flags it replaced?

    python benchmarks/wall_time.py --data_dir=../shared/datasets/cats_vs_dogs \
        --weights=../shared/weights/vgg16_hed_notop.weights.h5

Runs the whole job a user runs, `python -m catdog.train --flagfile=...` as its own process
(start-up, the feature pass, training, export and the publish gate), for the best.flags before
the recipe search (configs/seed.flags plus seed_job.BEST_BEFORE) and for today's
configs/best.flags, one after the other, in each --precisions, each run in fresh folders (no
feature cache to reuse, nothing published before it). Prints each run's wall time and its parts
from summary.json, and the new job's time as a ratio of the old one's in the same round.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/ is on sys.path when this file runs as a script
import seed_job
from absl import app, flags

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs", "Photos.")
_WEIGHTS = flags.DEFINE_string("weights", "none", "VGG16 weights: none or a weights file.")
_PRECISIONS = flags.DEFINE_list("precisions", ["mixed_bfloat16", "float32"],
                                "--mixed_precision of each pair of runs.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Pairs (old, new) per precision.", lower_bound=1)
_WORK_DIR = flags.DEFINE_string("work_dir", "", "Where runs go (default: a temporary folder, "
                                "removed at the end).")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
JOBS = {  # name: the flags that make the job
    "best.flags before": [f"--flagfile={seed_job.SEED_FLAGS}", *seed_job.BEST_BEFORE,
                          "--model_name=catdog"],
    "best.flags": [f"--flagfile={CONFIGS / 'best.flags'}"],
}


def run_job(name: str, precision: str, folder: Path) -> dict:
    """One job as a whole process in `folder`; its wall time and summary."""
    command = [sys.executable, "-m", "catdog.train", *JOBS[name],
               f"--data_dir={_DATA_DIR.value}", f"--weights={_WEIGHTS.value}", "--nodownload",
               f"--mixed_precision={precision}", f"--run_dir={folder / 'run'}",
               f"--export_dir={folder / 'export'}", f"--feature_cache_dir={folder / 'features'}"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode not in (0, 3):
        sys.exit(f"{name} ({precision}) failed ({result.returncode}): {result.stderr[-2000:]}")
    summary = json.loads((folder / "run" / "summary.json").read_text())
    return {"wall": wall, "summary": summary}


def cells(run: dict) -> str:
    summary = run["summary"]
    release = sum(summary["release_seconds"].values())
    rest = run["wall"] - summary["feature_seconds"] - summary["train_seconds"] - release
    return (f"{run['wall']:.0f} | {summary['feature_seconds']:.0f} | "
            f"{summary['train_seconds']:.0f} | {release:.0f} | {rest:.0f} | "
            f"{summary['best_val_accuracy']:.4f}")


def main(argv):
    del argv
    print(f"{time.strftime('%Y-%m-%d')}, {machine.cpu_description()}; one process per job, "
          "fresh folders, old then new\n")
    print("| precision | job | wall s | feature pass s | epochs s | export + gate s | start-up "
          "and the rest s | selection accuracy (chose the epoch) | new / old wall |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory(prefix="catdog-wall-time-") as scratch:
        work = Path(_WORK_DIR.value or scratch)
        for precision in _PRECISIONS.value:
            for round_ in range(_ROUNDS.value):
                old, new = (run_job(name, precision, work / f"{precision}-{round_}-{i}")
                            for i, name in enumerate(JOBS))
                print(f"| {precision} | best.flags before | {cells(old)} | |")
                print(f"| {precision} | best.flags | {cells(new)} | "
                      f"**{new['wall'] / old['wall']:.2f}** |", flush=True)


if __name__ == "__main__":
    app.run(main)
