"""The one way catdog writes a file or a folder: whole, or not at all.

`atomic_file(path)` and `atomic_dir(path)` yield a hidden temporary sibling (`.<name>.tmp-…`) to
write; when the block ends normally the data is flushed to disk and the temporary renamed over
`path` in one step, so a reader (TF Serving, a resumed run) sees the old content or the new,
never half. On any failure or interrupt the temporary is removed, and an OSError (disk full,
permission, a read-only folder) becomes one CatdogError line naming the path and the cause.
Files get 0644 and folders 0755 under the usual umask 022, not mkstemp's 0600/0700, so a TF
Serving container running as another user can read exports. `remove_leftovers` clears the
temporaries of a process that was killed mid-write; `exclusive` keeps a second writer out of a
folder that one is writing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from absl import logging

from catdog.errors import CatdogError

_MARK = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish_tree(root: Path) -> None:
    """Normal permissions and flushed data for every file and folder under `root`, in one walk."""
    umask = _umask()
    for folder, _, files in os.walk(root):
        for name in files:
            os.chmod(Path(folder) / name, 0o666 & ~umask)
            _fsync(Path(folder) / name)
        os.chmod(folder, 0o777 & ~umask)
        _fsync(Path(folder))


def write_error(path: Path | str, error: OSError) -> CatdogError:
    """One line naming what could not be written and why (libraries such as h5py put the
    errno inside a long message: it is read from there)."""
    number = error.errno or next(iter(re.findall(r"errno = (\d+)", str(error))), None)
    cause = os.strerror(int(number)) if number else (str(error).splitlines() or ["?"])[0]
    return CatdogError(f"cannot write {path}: {cause}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` (same suffix) to write; renames it over `path`."""
    final = Path(path)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}{_MARK}",
                                    suffix=final.suffix)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(final.parent)
    except OSError as error:
        raise write_error(final, error) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder beside `path` to fill; renames it to `path`, which must not
    exist (a version folder is never replaced in place)."""
    final = Path(path)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}{_MARK}"))
        yield tmp
        _finish_tree(tmp)
        os.rename(tmp, final)
        _fsync(final.parent)
    except OSError as error:
        raise write_error(final, error) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """The whole of `text` at `path`, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def move(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """One rename, flushed to disk: the folder or file is whole at `source` or whole at
    `target`, never between; an existing `target` is never replaced."""
    source, target = Path(source), Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise FileExistsError(errno.EEXIST, "it exists already")
        os.rename(source, target)
        _fsync(target.parent)
    except OSError as error:
        raise write_error(target, error) from None


def remove_dir(path: str | os.PathLike) -> None:
    """Removes a folder so that it vanishes at once (renamed to a hidden name, then deleted)."""
    path = Path(path)
    hidden = path.parent / f".{path.name}{_MARK}removed"
    os.rename(path, hidden)
    shutil.rmtree(hidden)


TENSORFLOW_TEMPORARIES = "*_temp*"  # what a failed or killed checkpoint save leaves


def remove_leftovers(folder: str | os.PathLike, also: str = "") -> list[Path]:
    """Deletes the temporaries that killed writers left in `folder` (and entries matching the
    glob `also`, another writer's temporaries); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    extra = set(folder.glob(also)) if also else set()
    for entry in folder.iterdir():
        if (entry.name.startswith(".") and _MARK in entry.name) or entry in extra:
            _delete(entry)
            removed.append(entry)
    return removed


def remove_leftovers_of(path: str | os.PathLike) -> list[Path]:
    """Deletes the temporaries that killed writers of `path` left beside it (those of other
    entries in the same folder are left alone); call it while holding `path`'s lock."""
    path = Path(path)
    removed = sorted(path.parent.glob(f".{glob.escape(path.name)}{_MARK}*"))
    for entry in removed:
        _delete(entry)
    return removed


def _delete(entry: Path) -> None:
    """A leftover file, link or folder, gone (a link is removed, never followed)."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike, what: str,
              wait_seconds: float = 0.0) -> Iterator[None]:
    """Holds an OS lock (flock) on `lock_file` while the block runs, so that two processes never
    write `what` at once. The second waits its turn up to `wait_seconds` (saying so in one log
    line), then is refused with one line naming the holder's pid. The OS drops the lock when
    its process ends, however it ends: a SIGKILL leaves nothing stale."""
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as error:
        raise write_error(lock_file, error) from None
    try:
        if not _locked_within(fd, wait_seconds, what, lock_file):
            holder = _holder(fd)
            waited = f" (waited {wait_seconds:g} s)" if wait_seconds else ""
            raise CatdogError(f"{what} is in use by process {holder} (it holds {lock_file})"
                              f"{waited}; wait for it to finish, then run this again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def _locked_within(fd: int, seconds: float, what: str, lock_file: Path) -> bool:
    """Whether the lock on `fd` was taken within `seconds` (tried every 0.2 s; a wait is said
    in one log line)."""
    deadline = time.monotonic() + seconds
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        if not said:
            logging.info("%s is in use by process %s (it holds %s): waiting up to %g s for it "
                         "to finish", what, _holder(fd), lock_file, seconds)
            said = True
        time.sleep(0.2)
