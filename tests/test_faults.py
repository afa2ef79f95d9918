"""catdog.faults: a named crash point kills its process there and nowhere else, and every point the
registry lists is one place in the code (the writers' tests kill at each of them)."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from catdog import faults

PACKAGE = Path(__file__).resolve().parents[1] / "catdog"


def crash_point_calls() -> Counter:
    """The names passed to crash_point() across catdog/, with how often each is."""
    found = Counter()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "crash_point":
                found[node.args[0].value] += 1
    return found


def test_every_registered_point_is_one_place_in_the_code():
    calls = crash_point_calls()
    assert set(calls) == set(faults.POINTS), set(calls) ^ set(faults.POINTS)
    assert all(count == 1 for count in calls.values()), calls


def run_to(point: str, crash_at: str | None) -> subprocess.CompletedProcess:
    code = (f"from catdog.faults import crash_point; crash_point({point!r}); "
            "print('went on')")
    env = {k: v for k, v in os.environ.items() if k != faults.CRASH_AT}
    if crash_at:
        env[faults.CRASH_AT] = crash_at
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)


def test_the_named_point_kills_with_sigkill_and_any_other_point_is_a_no_op():
    killed = run_to("publish.moved", "publish.moved")
    assert killed.returncode == -signal.SIGKILL and killed.stdout == ""
    for crash_at in (None, "publish.h5_copied"):
        went_on = run_to("publish.moved", crash_at)
        assert went_on.returncode == 0 and went_on.stdout == "went on\n", went_on
