"""Which recipe to ship as configs/best.flags: a search that cannot fool itself.

    pip install -e '.[bench]'
    python benchmarks/recipes.py --data_dir=../shared/datasets/cats_vs_dogs \
        --weights=../shared/weights/vgg16_hed_notop.weights.h5 --work_dir=/tmp/recipes

Every recipe is `configs/best.flags` as it was before this search (BEST_BEFORE) plus the
flags it names, trained once per --seeds
on every photo of --data_dir/train. Photos have three roles and the search keeps them apart:

- **Choosing** uses the selection photos only (half of --data_dir/validation,
  `--evaluation_split`). A run keeps every epoch's answers on them (selection_answers.npz), and
  the search scores a recipe by k-fold cross-validation of the whole procedure, epoch choice
  included: for each of --folds folds of the selection photos (a fixed hash of the file name),
  the epoch is chosen on the other folds and judged on this one, so no photo judges a choice it
  made. A recipe's figure is the mean of that over its seeds, with their spread; the choice
  takes the one-standard-error rule: of the recipes within one standard error of the best
  mean, the one whose curve falls back least from one epoch to the next.
- **Judging** uses the evaluation photos (the other half, the same in every run), which chose
  nothing: only the chosen recipe and the baseline (today's best.flags) are evaluated there, each
  run once (accuracy with its 95% BCa interval over photos), and the two are compared by their
  mean over seeds ± 2 standard errors.

- **Test-time flips** (--test_time_flip on the export) are weighed on the selection photos too:
  the chosen recipe's runs answer them with and without flips (catdog.evaluate on a folder of
  links to them), and the gain is printed with the model time it costs.
- Recipes over budget (more VGG16 work than the baseline's, counted by benchmarks/flops.py:
  the same in any precision on any CPU) are measured on the first seed only, to show what more
  time would buy, and never chosen; the winner's wall time is then measured against the
  baseline's (benchmarks/wall_time.py). A recipe more than two
  standard errors (binomial, over the selection photos) below the first seed's leader stops
  at that one run, as successive halving would stop it.

Runs share one feature pass per seed (--feature_cache_dir under --work_dir: the views are seeded,
so each seed has its own), and a row's wall time leaves that pass out; the pass is its own
column, beside the VGG16 work of each recipe in TFLOP (the same in float32 and bfloat16, on any
CPU). Finished runs are recorded in <work_dir>/runs.jsonl, so an interrupted search started
again goes on where it stopped (an unfinished run resumes from its last epoch, as catdog does).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import zlib
from pathlib import Path

import flops  # benchmarks/ is on sys.path when this file runs as a script
import machine
import numpy as np
import seed_job
import tensorflow as tf
from absl import app, flags

from catdog import evaluate, train
from catdog import flags as catdog_flags
from catdog.config import Config

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets/cats_vs_dogs",
                                "Dataset with train/ and validation/ class folders.")
_WEIGHTS = flags.DEFINE_string("weights", "none", "VGG16 weights: none or a weights file.")
_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/catdog-recipes", "Runs, feature cache, "
                                "evaluations and runs.jsonl; kept, so the search can resume.")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "Seeds: one run of each recipe each.")
_FOLDS = flags.DEFINE_integer("folds", 5, "Folds of the selection photos.", lower_bound=2)
_ONLY = flags.DEFINE_list("only", [], "Run only these recipes (names from RECIPES); empty: all.")
_JUDGE_SEEDS = flags.DEFINE_list(
    "judge_seeds", [], "Seeds the chosen recipe and the baseline are trained with and judged on "
    "the evaluation photos; empty: --seeds.")
_TEST_TIME_FLIP = flags.DEFINE_bool(
    "test_time_flip", False, "Also judge the chosen recipe's runs with evaluate "
    "--test_time_flip on the evaluation photos (whether flips pay is seen on the selection "
    "photos, always measured).")

BASELINE = "best"
BEST_BEFORE = seed_job.BEST_BEFORE  # the baseline every recipe adds to, and is judged against
NO_AUGMENTATION = ["--flip=none", "--zoom=0"]  # one feature view: half the feature pass
FROM_BLOCK4_CONV2 = ["--fine_tune_from=block4_conv2", "--fine_tune_epochs=3",
                     "--fine_tune_learning_rate=0.0001"]
FROM_BLOCK4_CONV3 = ["--fine_tune_from=block4_conv3", "--fine_tune_epochs=5",
                     "--fine_tune_learning_rate=0.0001"]
STEADY_HEAD = ["--learning_rate=0.0003", "--schedule=cosine"]
RECIPES = {  # name: (what it is, the flags it adds to BEST_BEFORE)
    BASELINE: ("best.flags before: head at Adam 1e-3, fine-tune from block4_conv1 2 epochs "
               "cosine from 3e-5", []),
    "ema": ("head weights averaged (EMA 0.99, written over at each head epoch's end)",
            ["--ema=0.99"]),
    "ema-ft1e-4": ("the same, fine-tuning cosine from 1e-4",
                   ["--ema=0.99", "--fine_tune_learning_rate=0.0001"]),
    "ema-wd": ("EMA, and weight decay 0.05 (AdamW) in both phases",
               ["--ema=0.99", "--weight_decay=0.05"]),
    "ft1e-4": ("fine-tuning cosine from 1e-4", ["--fine_tune_learning_rate=0.0001"]),
    # One epoch from block3_conv1 costs about what two from block4_conv1 do (1.8x the
    # convolution FLOPs per epoch), on cached block2_pool activations.
    "block3-1ep": ("1 fine-tuning epoch from block3_conv1", [
        "--fine_tune_from=block3_conv1", "--fine_tune_epochs=1"]),
    "block3-1ep-ft1e-4": ("1 fine-tuning epoch from block3_conv1, cosine from 1e-4", [
        "--fine_tune_from=block3_conv1", "--fine_tune_epochs=1",
        "--fine_tune_learning_rate=0.0001"]),
    "steady": ("head at 3e-4 on a cosine", STEADY_HEAD),
    "steady-ft1e-4": ("head at 3e-4 on a cosine, fine-tuning cosine from 1e-4",
                      [*STEADY_HEAD, "--fine_tune_learning_rate=0.0001"]),
    "steady-ft1e-4-ema": ("the same, fine-tuning weights averaged (EMA 0.99)",
                          [*STEADY_HEAD, "--fine_tune_learning_rate=0.0001",
                           "--fine_tune_ema=0.99"]),
    # A third fine-tuning epoch for the second feature view: without augmentation the feature
    # pass covers each image once, which saves most of what an epoch costs, not all (+5%).
    "noaug-3ep": ("no augmentation (one feature view), 3 fine-tuning epochs",
                  [*NO_AUGMENTATION, "--fine_tune_epochs=3"]),
    "noaug-3ep-ft1e-4": ("the same, fine-tuning cosine from 1e-4",
                         [*NO_AUGMENTATION, "--fine_tune_epochs=3",
                          "--fine_tune_learning_rate=0.0001"]),
    "noaug-3ep-ft1e-4-ema": ("the same, head weights averaged (EMA 0.99)",
                             [*NO_AUGMENTATION, "--fine_tune_epochs=3",
                              "--fine_tune_learning_rate=0.0001", "--ema=0.99"]),
    # With one feature view, two fine-tuning epochs from block4_conv1 leave a fifth of the
    # budget unspent; a third is 5% over it. Cutting higher (caching block4_conv1's output, or
    # block4_conv2's) makes each epoch cheaper, so more of them fit.
    "noaug-2ep-ft3e-4": ("no augmentation, 2 fine-tuning epochs, cosine from 3e-4",
                         [*NO_AUGMENTATION, "--fine_tune_learning_rate=0.0003"]),
    "noaug-b4c2-3ep": ("no augmentation, 3 fine-tuning epochs from block4_conv2, cosine from "
                       "1e-4", [*NO_AUGMENTATION, *FROM_BLOCK4_CONV2]),
    "noaug-b4c2-3ep-ema": ("the same, head weights averaged (EMA 0.99)",
                           [*NO_AUGMENTATION, *FROM_BLOCK4_CONV2, "--ema=0.99"]),
    "noaug-b4c2-3ep-mixup": ("the same, mixup 0.2 of the cached features and activations",
                             [*NO_AUGMENTATION, *FROM_BLOCK4_CONV2, "--mixup=0.2"]),
    "noaug-b4c2-3ep-ema-warmup": ("the same with the head averaged, the fine-tuning rate "
                                  "warmed up over 0.3 epochs",
                                  [*NO_AUGMENTATION, *FROM_BLOCK4_CONV2, "--ema=0.99",
                                   "--fine_tune_warmup_epochs=0.3"]),
    "noaug-b4c2-3ep-ema-warmup-2e-4": ("the same, warmed up to 2e-4",
                                       [*NO_AUGMENTATION, *FROM_BLOCK4_CONV2, "--ema=0.99",
                                        "--fine_tune_warmup_epochs=0.3",
                                        "--fine_tune_learning_rate=0.0002"]),
    "noaug-b4c3-5ep": ("no augmentation, 5 fine-tuning epochs from block4_conv3, cosine from "
                       "1e-4", [*NO_AUGMENTATION, *FROM_BLOCK4_CONV3]),
    "noaug-b4c3-5ep-ema": ("the same, head weights averaged (EMA 0.99)",
                           [*NO_AUGMENTATION, *FROM_BLOCK4_CONV3, "--ema=0.99"]),
    "noaug-b5-12ep": ("no augmentation, 12 fine-tuning epochs from block5_conv1, cosine from "
                      "1e-4", [*NO_AUGMENTATION, "--fine_tune_from=block5_conv1",
                               "--fine_tune_epochs=12", "--fine_tune_learning_rate=0.0001"]),
    # Over the time budget (best.flags' wall time): what more fine-tuning would buy.
    "ft-3ep": ("over budget: 3 fine-tuning epochs (+1)", ["--fine_tune_epochs=3"]),
    "block3": ("over budget: fine-tune from block3_conv1 (on cached block2_pool)",
               ["--fine_tune_from=block3_conv1"]),
}


def recipe_config(name: str, seed: int) -> Config:
    """`python -m catdog.train --flagfile=configs/seed.flags <BEST_BEFORE> <the recipe's
    flags>` for one seed, writing under --work_dir and publishing nothing."""
    work = Path(_WORK_DIR.value)
    values = flags.FlagValues()
    catdog_flags.define_train_flags(values)
    values(["recipes", f"--flagfile={seed_job.SEED_FLAGS}", *BEST_BEFORE, *RECIPES[name][1],
            f"--data_dir={_DATA_DIR.value}", f"--weights={_WEIGHTS.value}", f"--seed={seed}",
            f"--run_dir={work / 'runs' / f'{name}-{seed}'}",
            f"--export_dir={work / 'exports' / f'{name}-{seed}'}",
            f"--feature_cache_dir={work / 'features'}", "--publish=never",
            "--strategy=default"])
    return catdog_flags.config_from_flags(values)


def fold_of(path: str, folds: int) -> int:
    """A photo's fold: a fixed hash of its class folder and file name, the same in every run."""
    return zlib.crc32("/".join(Path(path).parts[-2:]).encode()) % folds


def cross_validated_accuracy(answers: Path, folds: int) -> float:
    """The accuracy of "train this recipe, keep its best epoch", estimated on the selection
    photos with no photo judging a choice it made: per fold, the epoch best on the other folds,
    scored on this one (ties go to the earlier epoch, as the run's own choice does)."""
    with np.load(answers) as kept:
        right = kept["probabilities"].argmax(-1) == kept["labels"]  # [epochs, photos]
        fold = np.array([fold_of(str(p), folds) for p in kept["paths"]])
    correct = 0
    for k in range(folds):
        chosen = int(np.argmax(right[:, fold != k].mean(axis=1)))
        correct += int(right[chosen, fold == k].sum())
    return correct / right.shape[1]


def largest_fall(run: dict) -> float:
    """The largest drop of selection accuracy from one epoch to the next, over the whole curve
    (head and fine-tuning): how far the curve swings back. A rise is learning, not a swing."""
    curve = run["curve"]
    return max((a - b for a, b in zip(curve, curve[1:])), default=0.0)


def train_run(name: str, seed: int) -> dict:
    """One recipe, one seed: trained (or resumed), and its figures on the selection photos."""
    config = recipe_config(name, seed)
    start = time.perf_counter()
    result = train.train(config)
    seconds = time.perf_counter() - start
    summary = result.summary
    return {"recipe": name, "seed": seed, "wall_seconds": seconds,
            "feature_seconds": summary["feature_seconds"],
            "selection_photos": summary["validation_images"],
            "in_sample_accuracy": summary["best_val_accuracy"],
            "cv_accuracy": cross_validated_accuracy(
                Path(config.run_dir) / "selection_answers.npz", _FOLDS.value),
            "best_epoch": summary["best_epoch"], "epochs": config.total_epochs,
            "curve": [round(row["val_accuracy"], 4) for row in summary["epochs"]],
            "precision": summary["distribution"]["precision"], "h5": str(result.exports.h5)}


def selection_photos_folder() -> Path:
    """The selection photos (the same in every run) as class folders of links, so that
    catdog.evaluate can answer them: with and without test-time flips, to see whether flips
    pay before the evaluation photos are looked at."""
    folder = Path(_WORK_DIR.value) / "selection-photos"
    if not folder.exists():
        answers = next((Path(_WORK_DIR.value) / "runs").glob("*/selection_answers.npz"))
        scratch = folder.with_name(folder.name + ".partial")
        with np.load(answers) as kept:
            for path in kept["paths"]:
                link = scratch / Path(str(path)).parent.name / Path(str(path)).name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.abspath(str(path)))
        scratch.rename(folder)
    return folder


def flip_gain_on_selection(run: dict) -> dict:
    """The run's export on the selection photos without and with test-time flips."""
    figures = {}
    for flip in (False, True):
        output = Path(_WORK_DIR.value) / "evaluations" / (
            f"{run['recipe']}-{run['seed']}-selection" + ("-flip" if flip else ""))
        report = evaluate.evaluate(run["h5"], str(selection_photos_folder()), str(output),
                                   max_explained=0, test_time_flip=flip)
        figures["flip" if flip else "plain"] = report["accuracy"]
        figures["flip_seconds" if flip else "plain_seconds"] = report["answer_seconds"]
    return figures


def judge_run(run: dict, test_time_flip: bool = False) -> dict:
    """The run's export on the evaluation photos, which chose nothing."""
    output = Path(_WORK_DIR.value) / "evaluations" / (
        f"{run['recipe']}-{run['seed']}" + ("-flip" if test_time_flip else ""))
    report = evaluate.evaluate(run["h5"], _DATA_DIR.value, str(output), max_explained=0,
                               test_time_flip=test_time_flip)
    return {"accuracy": report["accuracy"], "interval": report["intervals"]["accuracy"],
            "photos": report["images"], "answer_seconds": report["answer_seconds"]}


class Record:
    """runs.jsonl: what the search has finished, so a restart skips it."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = [json.loads(line) for line in path.read_text().splitlines()] \
            if path.exists() else []

    def find(self, kind: str, recipe: str, seed: int) -> dict | None:
        return next((e for e in self.entries if (e["kind"], e["recipe"], e["seed"])
                     == (kind, recipe, seed)), None)

    def get(self, kind: str, recipe: str, seed: int, compute) -> dict:
        found = self.find(kind, recipe, seed)
        if found is None:
            found = {"kind": kind, "recipe": recipe, "seed": seed, **compute()}
            self.entries.append(found)
            with open(self.path, "a") as f:
                f.write(json.dumps(found) + "\n")
        return found


def choose(names: list[str], runs: dict, scores: dict) -> str:
    """The one-standard-error rule: of the recipes within budget whose mean is within one
    standard error of the best mean, the one whose curve falls back least (issue 32 asks for
    smooth curves), then the higher mean."""
    budget = vgg16_tflop(BASELINE, runs[BASELINE][0])
    within = [name for name in names
              if within_budget(name, runs[name][0], budget) and len(runs[name]) > 1]
    top = max(within, key=lambda name: scores[name][0])
    # Accuracies are counts of photos over the same photos: an exact tie at the edge is in
    # (1e-9 absorbs floating point, far below one photo's 0.002).
    near = [name for name in within
            if scores[name][0] >= scores[top][0] - scores[top][1] - 1e-9]
    return min(near, key=lambda name: (max(largest_fall(r) for r in runs[name]),
                                       -scores[name][0]))


def contenders(names: list[str], record: Record, first_seed: int) -> list[str]:
    """The recipes worth more seeds: within budget, and on the first seed within two standard
    errors (of an accuracy on that many photos) of the best one there; the others stop at one
    run, as successive halving would stop them."""
    budget = vgg16_tflop(BASELINE, record.find("train", BASELINE, first_seed))
    first = {name: run for name in names
             if within_budget(name, run := record.find("train", name, first_seed), budget)}
    leader = max(run["cv_accuracy"] for run in first.values())
    photos = next(iter(first.values()))["selection_photos"]
    margin = 2 * math.sqrt(leader * (1 - leader) / photos)
    return [name for name, run in first.items() if run["cv_accuracy"] >= leader - margin]


def mean_and_se(values: list[float]) -> tuple[float, float]:
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.mean(values), spread / math.sqrt(len(values))


def main(argv):
    del argv
    unknown = set(_ONLY.value) - set(RECIPES)
    if unknown:
        raise app.UsageError(f"--only: unknown recipes {sorted(unknown)}; known: "
                             f"{', '.join(RECIPES)}")
    names = [name for name in RECIPES if not _ONLY.value or name in _ONLY.value
             or name == BASELINE]  # the baseline sets the budget
    seeds = [int(s) for s in _SEEDS.value]
    judge_seeds = [int(s) for s in _JUDGE_SEEDS.value] or seeds
    Path(_WORK_DIR.value).mkdir(parents=True, exist_ok=True)
    record = Record(Path(_WORK_DIR.value) / "runs.jsonl")
    for seed in seeds:  # every recipe of a seed in turn: they share that seed's feature pass
        for name in names if seed == seeds[0] else contenders(names, record, seeds[0]):
            record.get("train", name, seed, lambda n=name, s=seed: train_run(n, s))
    runs = {name: [r for seed in seeds if (r := record.find("train", name, seed))]
            for name in names}
    scores = {name: mean_and_se([run["cv_accuracy"] for run in runs[name]]) for name in names}
    winner = choose(names, runs, scores)

    print(f"\n{time.strftime('%Y-%m-%d')}, {machine.cpu_description()}, TensorFlow "
          f"{tf.__version__}, weights {_WEIGHTS.value}, seeds {', '.join(map(str, seeds))}\n")
    print_search_table(names, runs, scores, winner)
    flips = [record.get("selection-flip", winner, seed, lambda s=seed: flip_gain_on_selection(
        record.find("train", winner, s))) for seed in seeds]
    gain, gain_se = mean_and_se([f["flip"] - f["plain"] for f in flips])
    print(f"\nTest-time flips on the selection photos ({winner}, {len(flips)} runs): "
          f"{gain * 100:+.2f} ± {gain_se * 100:.2f} points (mean ± SE), for "
          f"{statistics.mean(f['flip_seconds'] / f['plain_seconds'] for f in flips):.2f}× the "
          "model time")
    judged = {}
    for name in dict.fromkeys([winner, BASELINE]):
        judged[name] = [record.get("judge", name, seed, lambda n=name, s=seed: judge_run(
            record.get("train", n, s, lambda: train_run(n, s)))) for seed in judge_seeds]
    print_judgement(winner, judged, judge_seeds)
    print_curves([record.find("train", name, seed) for name in judged for seed in judge_seeds])
    if _TEST_TIME_FLIP.value:
        flipped = [record.get("judge-flip", winner, seed, lambda s=seed: judge_run(
            record.find("train", winner, s), test_time_flip=True)) for seed in judge_seeds]
        print(f"\nWith --test_time_flip (not seen by the choice): {winner} "
              + ", ".join(f"{j['accuracy']:.4f}" for j in flipped)
              + f"; answers {flipped[0]['answer_seconds']:.0f} s against "
              f"{judged[winner][0]['answer_seconds']:.0f} s without")


def print_search_table(names, runs, scores, winner) -> None:
    photos, folds = runs[names[0]][0]["selection_photos"], _FOLDS.value
    print(f"| recipe | flags added to best.flags before | runs | selection accuracy, "
          f"{folds}-fold CV of the epoch choice ({photos} photos): mean ± SE over seeds | "
          f"in-sample (chose its epoch): mean | largest fall between epochs | best epoch | "
          f"wall time without the feature pass | feature pass | VGG16 TFLOP (one run) | "
          f"precision |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
    budget = vgg16_tflop(BASELINE, runs[BASELINE][0])
    for name in names:
        mean, se = scores[name]
        what, extra = RECIPES[name]
        rows = runs[name]
        cell = f"{mean:.4f} ± {se:.4f}" if len(rows) > 1 else f"{mean:.4f} (one run)"
        label = f"**{name}**" if name == winner else name
        print(f"| {label}: {what} | `{' '.join(extra) or '(none)'}` | {len(rows)} | "
              f"{'**' + cell + '**' if name == winner else cell} | "
              f"{statistics.mean(r['in_sample_accuracy'] for r in rows):.4f} | "
              f"{max(largest_fall(r) for r in rows):.3f} | "
              f"{', '.join(str(r['best_epoch']) for r in rows)} of {rows[0]['epochs']} | "
              f"{statistics.mean(r['wall_seconds'] - r['feature_seconds'] for r in rows) / 60:.1f}"
              f" min | {max(r['feature_seconds'] for r in rows) / 60:.1f} min | "
              f"{vgg16_tflop(name, rows[0]):.0f}"
              f"{'' if within_budget(name, rows[0], budget) else ' (over budget)'} | "
              f"{rows[0]['precision']} |")


def vgg16_tflop(name: str, run: dict) -> float:
    """The VGG16 work of one run of the recipe (benchmarks/flops.py), from its summary: the same
    on any CPU and in any precision, so it compares recipes' costs where wall times cannot."""
    config = recipe_config(name, run["seed"])
    summary = json.loads((Path(config.run_dir) / "summary.json").read_text())
    job = flops.Job(summary["train_images"], summary["validation_images"], config.image_size,
                    config.epochs, config.views, config.fine_tune_from,
                    config.fine_tune_epochs, config.frozen_blocks_cached)
    return job.flops() / 1e12


def within_budget(name: str, run: dict, budget: float) -> bool:
    """No more VGG16 work than `budget`, the baseline's TFLOP (run: one of the recipe's)."""
    return vgg16_tflop(name, run) <= budget + 1e-9


def print_curves(runs: list[dict]) -> None:
    """Each judged run's selection accuracy epoch by epoch (how smooth the curves are)."""
    print("\n| recipe | seed | selection accuracy by epoch: head, then fine-tuning | "
          "largest fall |")
    print("|---|---:|---|---:|")
    for run in runs:
        epochs = len(run["curve"]) - recipe_config(run["recipe"], run["seed"]).fine_tune_epochs
        head, tuned = run["curve"][:epochs], run["curve"][epochs:]
        print(f"| {run['recipe']} | {run['seed']} | {' '.join(f'{a:.3f}' for a in head)} · "
              f"{' '.join(f'{a:.3f}' for a in tuned)} | {largest_fall(run):.3f} |")


def print_judgement(winner: str, judged: dict, seeds: list[int]) -> None:
    photos = next(iter(judged.values()))[0]["photos"]
    print(f"\nChosen on the selection photos: {winner}. On the {photos} evaluation photos, "
          f"which chose nothing, one run per seed ({', '.join(map(str, seeds))}):\n")
    print("| recipe | accuracy per seed [95% BCa over photos] | mean ± 2 SE over seeds |")
    print("|---|---|---:|")
    for name, rows in judged.items():
        mean, se = mean_and_se([j["accuracy"] for j in rows])
        per_seed = ", ".join(f"{j['accuracy']:.4f} [{j['interval'][0]:.3f}, "
                             f"{j['interval'][1]:.3f}]" for j in rows)
        print(f"| {name} | {per_seed} | {mean:.4f} ± {2 * se:.4f} |")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
