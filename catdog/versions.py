"""The folders TF Serving watches, and everything that knows their layout: the one scan of version
folders, version numbers, the records a version keeps, and rollback.

    <export_dir>/<model_name>.h5                  the published .h5 (plain keras.models.load_model)
    <export_dir>/<model_name>/<N>/                published SavedModel versions: TF Serving's
                                                  base path
    <export_dir>/<model_name>/<N>/gate.json       the gate's decision and figures (publish.py)
    <export_dir>/<model_name>/<N>/answers/        the version's answers, remembered per photo set,
                                                  so a baseline is evaluated once in its life
    <export_dir>/candidates/<model_name>/<K>/     a run's SavedModel candidate, K = next free
    <export_dir>/candidates/<model_name>/<K>.h5   integer, and its .h5 beside it

Imports only catdog's ground (atomic, contract, errors), so the serving wing scans version folders
with the same function as the exporter and the gate. Every move is one rename through `atomic`.
"""

from __future__ import annotations

import dataclasses
import datetime
import filecmp
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from catdog import atomic, contract
from catdog.errors import CatdogError
from catdog.faults import crash_point

GATE_FILE = "gate.json"
ANSWERS_DIR = "answers"


# How long a run's export and gate wait for another run's (two trainings finishing together
# into one export folder take turns rather than the second failing after its whole training).
WRITER_WAIT_SECONDS = 1800.0


@dataclasses.dataclass(frozen=True)
class Layout:
    """The places of one model's exports under an export folder (module docstring)."""

    export_dir: Path
    model_name: str

    @classmethod
    def of_base_path(cls, base: str | os.PathLike) -> Layout:
        """The layout whose TF Serving base path is `base` (`<export_dir>/<model_name>`)."""
        base = Path(base).absolute()
        return cls(base.parent, base.name)

    @property
    def base(self) -> Path:
        return Path(self.export_dir) / self.model_name

    @property
    def h5(self) -> Path:
        return Path(self.export_dir) / f"{self.model_name}.h5"

    @property
    def candidates(self) -> Path:
        return Path(self.export_dir) / contract.CANDIDATES_DIR / self.model_name

    @property
    def lock(self) -> Path:
        """Held by whoever writes a candidate, publishes into `base` or rolls back."""
        return Path(self.export_dir) / f".{self.model_name}.publish.lock"

    def holding_lock(self, wait_seconds: float = 0.0):
        """The export folder's lock, for one writer at a time (atomic.exclusive), waited for up
        to `wait_seconds`."""
        return atomic.exclusive(self.lock, f"the export folder {self.export_dir}", wait_seconds)


# --- the one scan ------------------------------------------------------------------------------

def version_folders(base: str | os.PathLike) -> dict[int, Path] | None:
    """The version folders under a base path by number, as TF Serving finds them: integer-named
    sub-folders (zero padding allowed; hidden temporaries are not integers); None when the base
    path itself cannot be found."""
    try:
        entries = list(Path(base).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return None
    found: dict[int, Path] = {}
    for path in sorted(entries):
        if path.name.isdigit() and path.is_dir():
            found.setdefault(int(path.name), path)
    return found


def versions(base: str | os.PathLike) -> list[Path]:
    """The version folders under `base`, newest first."""
    found = version_folders(base) or {}
    return [found[number] for number in sorted(found, reverse=True)]


def newest(base: str | os.PathLike) -> Path | None:
    return next(iter(versions(base)), None)


def next_number(folder: Path) -> int:
    """One more than the highest integer-named version folder, or candidate `.h5` file (whose
    folder may have been published), under `folder`; 1 if none."""
    names = [p.name.removesuffix(".h5") for p in folder.iterdir()] if folder.is_dir() else []
    return max((int(n) for n in names if n.isdigit()), default=0) + 1


def candidate_h5(saved_model: Path) -> Path:
    """The .h5 beside a candidate folder `<K>/`: `<K>.h5`."""
    return saved_model.parent / f"{saved_model.name}.h5"


def prune(base: Path, keep: int) -> list[Path]:
    """Removes all but the newest `keep` version folders; each vanishes at once (renamed to a
    hidden name first), so TF Serving never sees a half-deleted version. Returns those removed."""
    removed = versions(base)[keep:] if keep else []
    for version in removed:
        atomic.remove_dir(version)
    return removed


# --- what a version records --------------------------------------------------------------------

def source_of(version: Path) -> dict[str, Any]:
    """What the exporter recorded of the run behind a version ({} when nothing)."""
    return _json_or_empty(version / contract.SOURCE_FILE)


def gate_record(folder: Path) -> dict[str, Any]:
    """The gate's record of a candidate or version ({} when none)."""
    return _json_or_empty(folder / GATE_FILE)


def write_gate_record(folder: Path, record: dict[str, Any]) -> None:
    atomic.write_text(folder / GATE_FILE, json.dumps(record, indent=2, allow_nan=False) + "\n")


def _json_or_empty(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _model_stamp(version: Path) -> list:
    """Sizes and modification times of the files that define a version's answers: answers
    remembered for other bytes are not this version's."""
    files = [version / "saved_model.pb", *sorted((version / "variables").glob("*"))]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def remember_answers(version: Path, photo_set: str, probabilities: np.ndarray) -> Path:
    """Keeps a version's probabilities for the photo set whose digest is `photo_set`, inside the
    version folder (they move with it when it is published or rolled back)."""
    path = version / ANSWERS_DIR / f"{photo_set}.npz"
    with atomic.atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, probabilities=probabilities,
                     model=json.dumps(_model_stamp(version)))
    return path


def remembered_answers(version: Path, photo_set: str) -> np.ndarray | None:
    """The probabilities `remember_answers` kept for this photo set, or None (never computed,
    unreadable, or the version's files changed since)."""
    try:
        with np.load(version / ANSWERS_DIR / f"{photo_set}.npz") as kept:
            if json.loads(str(kept["model"])) != _model_stamp(version):
                return None
            return kept["probabilities"]
    except (OSError, ValueError, KeyError):
        return None


# --- publishing and rolling back ---------------------------------------------------------------

def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def next_version(layout: Layout) -> int:
    """One more than any version the base path holds or ever held (a rolled-back version's
    number is not given to another model: TF Serving may still hold it)."""
    held = [int(p.name) for p in versions(layout.base)]
    candidates = layout.candidates.iterdir() if layout.candidates.is_dir() else []
    for record in map(gate_record, candidates):
        held += [int(Path(v).name) for v in (record.get("published_version"),
                                             record.get("rolled_back", {}).get("from")) if v]
    return max(held, default=0) + 1


def settle_h5(layout: Layout) -> None:
    """Makes the published .h5 that of the newest published version, as its gate record names
    it (finishing a publish or rollback killed between its rename and its .h5 copy, whose
    temporary is removed)."""
    atomic.remove_leftovers(layout.export_dir)
    version = newest(layout.base)
    h5 = Path(gate_record(version).get("h5", "")) if version else None
    if not h5 or not h5.is_file():
        return
    if layout.h5.is_file() and filecmp.cmp(h5, layout.h5, shallow=False):
        return
    with atomic.atomic_file(layout.h5) as tmp, open(h5, "rb") as source, \
            open(tmp, "wb") as target:
        target.write(source.read(h5.stat().st_size // 2))
        target.flush()
        crash_point("publish.h5_half_copied")
        shutil.copyfileobj(source, target)
        target.flush()
        crash_point("publish.h5_copied")


def finish_publish(layout: Layout, candidate: Path) -> Path | None:
    """The version `candidate` was published as, when it is no longer a candidate (a publish
    killed after its rename, run again), with the published .h5 made that version's; None
    while it is still a candidate or was never published here."""
    if Path(candidate).exists():
        return None
    for version in reversed(versions(layout.base)):
        if gate_record(version).get("candidate") == str(candidate):
            with layout.holding_lock():
                settle_h5(layout)
            return version
    return None


def push(candidate: Path, layout: Layout, record: dict[str, Any]) -> Path:
    """Publishes a candidate folder as the next version: its record first, then one rename into
    the base path (a poll sees no version or the whole of it), then the .h5. Call it holding
    the export folder's lock."""
    version = layout.base / str(next_version(layout))
    write_gate_record(candidate, {"candidate": str(candidate), **record,
                                  "published_version": str(version)})
    crash_point("publish.record_written")
    atomic.move(candidate, version)
    crash_point("publish.moved")
    settle_h5(layout)
    return version


def rollback(layout: Layout) -> tuple[Path, Path, Path]:
    """Moves the newest published version back among the candidates, so that the previous one
    is the newest again (TF Serving's `latest` policy serves it at its next poll), and makes the
    published .h5 that version's. Returns (the version rolled back, the candidate folder it is
    now, the newest version)."""
    with layout.holding_lock():
        found = versions(layout.base)
        if len(found) < 2:
            raise CatdogError(
                f"{layout.base} holds {len(found)} version(s) {[v.name for v in found]}; "
                "rolling back needs two (TF Serving would have nothing left to serve)")
        rolled, previous = found[:2]
        record = gate_record(rolled)
        target = Path(record["candidate"]) if record.get("candidate") else None
        if target is None or target.parent != layout.candidates or target.exists():
            # not published through the gate, or its candidate number was taken since
            target = layout.candidates / str(next_number(layout.candidates))
        atomic.move(rolled, target)
        crash_point("rollback.moved")
        write_gate_record(target, {**record, "candidate": str(target), "rolled_back": {
            "from": str(rolled), "time": now(), "newest_now": str(previous)}})
        settle_h5(layout)
        return rolled, target, previous
