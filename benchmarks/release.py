"""What the release path (export, then the gate) costs beside the training it follows.

    python benchmarks/release.py --data_dir=../shared/datasets/cats_vs_dogs \
        --weights=../shared/weights/vgg16_hed_notop.weights.h5 [--flagfile_under_test=...]

Runs `python -m catdog.train --flagfile=<flagfile_under_test>` twice into one export folder, as
a user would: the first run publishes version 1 (nothing to compare with), the second, with
another seed and the first run's feature cache, is judged against that published baseline. For
each run it prints the whole process's wall time and, from its summary.json, the seconds of the
export and of the gate, with their share of the first run's wall time (the issue's targets: at
most 20% of a first configs/quickstart.flags run, 10% of a configs/best.flags run), and whether
the gate evaluated the baseline or found its answers kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/ is on sys.path when this file runs as a script
from absl import app, flags

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs", "Photos.")
_WEIGHTS = flags.DEFINE_string("weights", "none", "VGG16 weights: none or a weights file.")
_FLAGFILE = flags.DEFINE_string("flagfile_under_test", "configs/quickstart.flags",
                                "The flagfile both runs train with.")
_WORK_DIR = flags.DEFINE_string("work_dir", "", "Where runs and exports go (default: a "
                                "temporary folder, removed at the end).")
_EXTRA = flags.DEFINE_list("extra", [], "More training flags for both runs, e.g. "
                           "--extra=--epochs=2,--image_size=64 (without spaces).")


def train_once(work: Path, name: str, seed: int) -> dict:
    """One training run as a whole process; its wall time, summary and log."""
    command = [sys.executable, "-m", "catdog.train", f"--flagfile={_FLAGFILE.value}",
               f"--data_dir={_DATA_DIR.value}", f"--weights={_WEIGHTS.value}", "--nodownload",
               f"--seed={seed}", f"--run_dir={work / name}", f"--export_dir={work / 'export'}",
               f"--feature_cache_dir={work / 'features'}", *_EXTRA.value]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode not in (0, 3):
        sys.exit(f"{name} failed ({result.returncode}): {result.stderr[-2000:]}")
    summary = json.loads((work / name / "summary.json").read_text())
    return {"wall": wall, "summary": summary, "log": result.stderr}


def row(name: str, run: dict, first_wall: float) -> str:
    release = run["summary"]["release_seconds"]
    export, gate = release["export"], release["gate"]
    baseline = ("kept" if "answers for these" in run["log"] and "evaluating version" not in
                run["log"] else "evaluated" if "evaluating version" in run["log"] else "none")
    return (f"| {name} | {run['wall']:.0f} | {export:.1f} | {gate:.1f} | "
            f"{(export + gate) / first_wall:.1%} | {baseline} | "
            f"{run['summary']['gate']['decision']} |")


def main(argv):
    del argv
    with tempfile.TemporaryDirectory(prefix="catdog-release-") as scratch:
        work = Path(_WORK_DIR.value or scratch)
        first = train_once(work, "first", 42)
        second = train_once(work, "second", 43)
    print(f"{machine.cpu_description()}; {_FLAGFILE.value} {' '.join(_EXTRA.value)}")
    print("| run | wall s | export s | gate s | export + gate / first run's wall | baseline "
          "answers | decision |")
    print("|---|---:|---:|---:|---:|---|---|")
    print(row("first (publishes version 1)", first, first["wall"]))
    print(row("second (version 1 published)", second, first["wall"]))


if __name__ == "__main__":
    app.run(main)
