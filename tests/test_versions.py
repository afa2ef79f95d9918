"""catdog.versions: the folder TF Serving watches. One scan finds version folders as TF Serving
does, a rollback moves the newest aside and restores the previous .h5, two writers never
interleave, a publish or rollback killed at any of its crash points leaves whole versions and
is finished by the next writer, and answers remembered for a
version are its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from catdog import atomic, faults, versions
from catdog.errors import CatdogError

from conftest import leftovers


def layout_at(root: Path) -> versions.Layout:
    return versions.Layout(root / "export", "catdog")


def version_names(layout: versions.Layout) -> list[str]:
    return sorted((p.name for p in layout.base.iterdir()), key=lambda n: (len(n), n)) \
        if layout.base.is_dir() else []


def test_the_one_scan_finds_integer_folders_as_tf_serving_does(tmp_path):
    for name in ("1", "007", "12", ".3.tmp-x", "notes", "4.h5"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version")
    assert versions.version_folders(tmp_path) == {1: tmp_path / "1", 7: tmp_path / "007",
                                                  12: tmp_path / "12"}
    assert versions.versions(tmp_path) == [tmp_path / "12", tmp_path / "007", tmp_path / "1"]
    assert versions.version_folders(tmp_path / "missing") is None
    assert versions.newest(tmp_path / "missing") is None


# --- publishing, rolling back, the lock: folders only -------------------------------------------

def fake_version(folder: Path, h5: Path | None = None, record: dict | None = None) -> Path:
    """A folder shaped like a SavedModel version (contents never loaded by these tests)."""
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"pb " + folder.name.encode())
    if h5:
        h5.write_bytes(b"h5 of " + str(folder).encode())
    if record is not None:
        (folder / versions.GATE_FILE).write_text(json.dumps(record))
    return folder


def published_pair(tmp_path: Path) -> versions.Layout:
    """Versions 1 and 2 published through the gate, each with its .h5 among the candidates."""
    layout = layout_at(tmp_path)
    for n in (1, 2):
        h5 = layout.candidates / f"{n}.h5"
        layout.candidates.mkdir(parents=True, exist_ok=True)
        fake_version(layout.base / str(n), h5, {
            "candidate": str(layout.candidates / str(n)), "h5": str(h5),
            "published_version": str(layout.base / str(n))})
    shutil.copyfile(layout.candidates / "2.h5", layout.h5)
    return layout


def test_rollback_moves_the_newest_aside_and_restores_the_previous_h5(tmp_path):
    layout = published_pair(tmp_path)
    version, moved, newest = versions.rollback(layout)
    assert (version, moved, newest) == (layout.base / "2", layout.candidates / "2",
                                        layout.base / "1")
    assert version_names(layout) == ["1"]
    assert (moved / "saved_model.pb").read_bytes() == b"pb 2"
    assert layout.h5.read_bytes() == (layout.candidates / "1.h5").read_bytes()
    record = json.loads((moved / versions.GATE_FILE).read_text())
    assert record["rolled_back"]["from"] == str(layout.base / "2")
    # Version 2 is never given to another model: TF Serving may still hold it.
    assert versions.next_version(layout) == 3
    assert not leftovers(tmp_path)


def test_rolling_back_the_only_version_is_refused(tmp_path):
    layout = layout_at(tmp_path)
    fake_version(layout.base / "1")
    with pytest.raises(CatdogError, match=r"holds 1 version\(s\) \['1'\]; rolling back needs "
                                          "two"):
        versions.rollback(layout)
    assert version_names(layout) == ["1"]


def test_a_second_publisher_is_refused_in_one_line_naming_the_first(tmp_path):
    layout = published_pair(tmp_path)
    with atomic.exclusive(layout.lock, "the export folder"):
        with pytest.raises(CatdogError) as refused:
            versions.rollback(layout)
    assert f"in use by process {os.getpid()}" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert version_names(layout) == ["1", "2"]
    versions.rollback(layout)  # the lock went with its holder
    assert version_names(layout) == ["1"]


def test_a_publish_killed_between_its_rename_and_its_h5_is_finished_by_the_next(tmp_path):
    layout = published_pair(tmp_path)
    shutil.copyfile(layout.candidates / "1.h5", layout.h5)  # version 2's rename, not its .h5
    layout.candidates.joinpath("3").mkdir()
    fake_version(layout.base / "3", layout.candidates / "3.h5", {
        "h5": str(layout.candidates / "3.h5")})
    versions.rollback(layout)  # any later publisher settles the .h5 first
    assert layout.h5.read_bytes() == (layout.candidates / "2.h5").read_bytes()


PUSH = """
import sys
from pathlib import Path
from catdog import versions
layout = versions.Layout(Path(sys.argv[1]), "catdog")
if sys.argv[2] == "push":
    with layout.holding_lock():  # as the gate holds it
        versions.push(layout.candidates / "2", layout, {"h5": str(layout.candidates / "2.h5")})
else:
    versions.rollback(layout)
"""


def killed_writer(layout: versions.Layout, job: str, point: str) -> int:
    """`versions.push` of candidate 2 (or a rollback) in a process of its own, killed at the
    named crash point; its exit status."""
    return subprocess.run([sys.executable, "-c", PUSH, str(layout.export_dir), job],
                          env={**os.environ, faults.CRASH_AT: point}, timeout=60).returncode


def one_version_and_a_candidate(tmp_path: Path) -> versions.Layout:
    """Version 1 published with its .h5; candidate 2 and its .h5 (1 MB, so a copy has a
    middle) waiting."""
    layout = layout_at(tmp_path)
    layout.candidates.mkdir(parents=True)
    for n, folder in ((1, layout.base / "1"), (2, layout.candidates / "2")):
        h5 = layout.candidates / f"{n}.h5"
        fake_version(folder, record={"h5": str(h5), "candidate": str(layout.candidates / str(n))})
        (folder / "variables").mkdir()
        (folder / "variables" / "variables.index").write_bytes(b"index %d" % n)
        h5.write_bytes(np.random.default_rng(n).bytes(1 << 20))
    shutil.copyfile(layout.candidates / "1.h5", layout.h5)
    return layout


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("point", [p for p in faults.POINTS if p.startswith("publish.")])
def test_a_push_killed_at_each_point_leaves_whole_versions_and_the_next_writer_finishes(
        tmp_path, point):
    layout = one_version_and_a_candidate(tmp_path)
    candidate = folder_files(layout.candidates / "2")
    h5s = {(layout.candidates / f"{n}.h5").read_bytes(): n for n in (1, 2)}
    assert killed_writer(layout, "push", point) == -signal.SIGKILL
    names = version_names(layout)
    assert names in (["1"], ["1", "2"]), names
    if names == ["1", "2"]:  # moved whole: every file the candidate had, and its record
        published = folder_files(layout.base / "2")
        assert {k: v for k, v in published.items() if k != versions.GATE_FILE} == \
            {k: v for k, v in candidate.items() if k != versions.GATE_FILE}
    assert h5s.get(layout.h5.read_bytes()) in (1, 2)  # the published .h5: one whole file
    assert versions.next_version(layout) == 3  # number 2 is never given to another model
    with layout.holding_lock():
        versions.settle_h5(layout)  # what the next publisher or rollback does first
    newest = versions.newest(layout.base).name
    assert h5s[layout.h5.read_bytes()] == int(newest)
    assert not leftovers(layout.export_dir, layout.base, layout.candidates)


def test_a_rollback_killed_after_its_move_is_finished_by_the_next_writer(tmp_path):
    layout = one_version_and_a_candidate(tmp_path)
    versions.push(layout.candidates / "2", layout, {"h5": str(layout.candidates / "2.h5")})
    assert killed_writer(layout, "rollback", "rollback.moved") == -signal.SIGKILL
    assert version_names(layout) == ["1"]
    assert versions.next_version(layout) == 3  # 2 may still be held by TF Serving
    with layout.holding_lock():
        versions.settle_h5(layout)
    assert layout.h5.read_bytes() == (layout.candidates / "1.h5").read_bytes()
    assert not leftovers(layout.export_dir, layout.base, layout.candidates)


def test_answers_are_remembered_per_photo_set_and_forgotten_when_the_version_changes(tmp_path):
    version = fake_version(tmp_path / "1")
    (version / "variables").mkdir()
    (version / "variables" / "variables.index").write_bytes(b"index")
    answers = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
    versions.remember_answers(version, "photos-a", answers)
    np.testing.assert_array_equal(versions.remembered_answers(version, "photos-a"), answers)
    assert versions.remembered_answers(version, "photos-b") is None  # another photo set
    (version / "variables" / "variables.index").write_bytes(b"other variables")
    assert versions.remembered_answers(version, "photos-a") is None  # other weights
    assert not leftovers(version)


def test_rerunning_a_publish_killed_after_its_rename_finishes_it(tmp_path):
    """`catdog.publish --candidate=.../2` again after a kill between the rename and the .h5:
    the candidate is found as the version its record names, and its .h5 is settled."""
    layout = one_version_and_a_candidate(tmp_path)
    assert versions.finish_publish(layout, layout.candidates / "2") is None  # still waiting
    assert killed_writer(layout, "push", "publish.moved") == -signal.SIGKILL
    assert layout.h5.read_bytes() == (layout.candidates / "1.h5").read_bytes()
    assert versions.finish_publish(layout, layout.candidates / "2") == layout.base / "2"
    assert layout.h5.read_bytes() == (layout.candidates / "2.h5").read_bytes()
    assert versions.finish_publish(layout, layout.candidates / "7") is None  # never here
