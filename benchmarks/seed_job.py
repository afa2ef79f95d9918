"""The seed notebook's job as catdog runs it: `configs/seed.flags` plus a benchmark's changes."""

from __future__ import annotations

import os

from absl import flags

from catdog import flags as catdog_flags
from catdog.config import Config

SEED_FLAGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                          "seed.flags")
# configs/best.flags before the recipe search of 2026-12-07, as flags on configs/seed.flags:
# the baseline recipes are judged against, whose wall time bounds theirs.
BEST_BEFORE = ("--cache_features", "--fine_tune_from=block4_conv1", "--fine_tune_epochs=2",
               "--fine_tune_learning_rate=0.00003", "--fine_tune_schedule=cosine")


def seed_config(*overrides: str) -> Config:
    """The Config that `python -m catdog.train --flagfile=configs/seed.flags <overrides>`
    would run, parsed by catdog's own flag definitions."""
    values = flags.FlagValues()
    catdog_flags.define_train_flags(values)
    values(["benchmark", f"--flagfile={SEED_FLAGS}", *overrides])
    return catdog_flags.config_from_flags(values)
