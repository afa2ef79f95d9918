"""atomic: every write is whole or absent, and a failure anywhere leaves no temporary behind."""

import errno
import os

import pytest

from catdog import atomic
from catdog.errors import CatdogError


def entries(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("failure", [RuntimeError("bug"), KeyboardInterrupt()])
def test_a_file_write_that_fails_keeps_the_old_content_and_leaves_nothing(tmp_path, failure):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(type(failure)):
        with atomic.atomic_file(path) as tmp:
            tmp.write_text("half")
            raise failure
    assert path.read_text() == "old"
    assert entries(tmp_path) == ["summary.json"]


@pytest.mark.parametrize("where, steps", [(os, ("replace", "rename")), (atomic, ("_fsync",)),
                                          (os, ("chmod",))])
def test_a_failure_injected_into_the_helper_leaves_no_temporary(tmp_path, monkeypatch, where,
                                                                steps):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for step in steps:
        monkeypatch.setattr(where, step, disk_full)
    with pytest.raises(CatdogError, match=r"^cannot write .*/model\.h5: No space left on device$"):
        atomic.write_text(tmp_path / "model.h5", "weights")
    with pytest.raises(CatdogError, match=r"^cannot write .*/catdog/1: No space left on device$"):
        with atomic.atomic_dir(tmp_path / "catdog" / "1") as tmp:
            (tmp / "saved_model.pb").write_text("graph")
    assert entries(tmp_path) == ["catdog"]
    assert entries(tmp_path / "catdog") == []


def test_a_folder_appears_whole_with_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic.atomic_dir(tmp_path / "1") as tmp:
            (tmp / "variables").mkdir()
            (tmp / "variables" / "data").write_bytes(b"w")
            assert not (tmp_path / "1").exists()  # nothing visible until the block ends
    finally:
        os.umask(umask)
    assert entries(tmp_path) == ["1"]
    assert (tmp_path / "1" / "variables" / "data").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "1" / "variables").stat().st_mode & 0o777 == 0o755


def test_a_failed_folder_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic.atomic_dir(tmp_path / "1") as tmp:
            (tmp / "saved_model.pb").write_text("half")
            raise ValueError("export failed")
    assert entries(tmp_path) == []


def test_an_unwritable_folder_is_one_line_naming_the_path(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/catdog/summary.json"  # root may write anywhere but /proc
    else:
        os.chmod(tmp_path, 0o500)
        target = str(tmp_path / "summary.json")
    with pytest.raises(CatdogError, match=f"^cannot write {target}: "):
        atomic.write_text(target, "{}")


def test_leftovers_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".model.h5.tmp-abc.h5").write_text("half")
    (tmp_path / ".3.tmp-xyz").mkdir()
    (tmp_path / "ckpt-2_temp").mkdir()
    for keep in ("model.h5", ".hidden", "3"):
        (tmp_path / keep).write_text("keep")
    removed = atomic.remove_leftovers(tmp_path, also=atomic.TENSORFLOW_TEMPORARIES)
    assert sorted(p.name for p in removed) == [".3.tmp-xyz", ".model.h5.tmp-abc.h5",
                                               "ckpt-2_temp"]
    assert entries(tmp_path) == [".hidden", "3", "model.h5"]


def test_a_removed_folder_vanishes(tmp_path):
    (tmp_path / "1" / "variables").mkdir(parents=True)
    atomic.remove_dir(tmp_path / "1")
    assert entries(tmp_path) == []
