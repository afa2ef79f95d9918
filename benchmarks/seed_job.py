"""The seed notebook's job as catdog runs it: `configs/seed.flags` plus a benchmark's changes."""

from __future__ import annotations

import os

from absl import flags

from catdog import flags as catdog_flags
from catdog.config import Config

SEED_FLAGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                          "seed.flags")


def seed_config(*overrides: str) -> Config:
    """The Config that `python -m catdog.train --flagfile=configs/seed.flags <overrides>`
    would run, parsed by catdog's own flag definitions."""
    values = flags.FlagValues()
    catdog_flags.define_train_flags(values)
    values(["benchmark", f"--flagfile={SEED_FLAGS}", *overrides])
    return catdog_flags.config_from_flags(values)
