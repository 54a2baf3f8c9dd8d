"""Atomic file writes and all-or-nothing output sets.

:func:`atomic_open` writes a temporary file beside the target, fsyncs it, then renames it over the
target: readers see the complete new file or the old one, never half a file, even if the writer is
killed. Inside a :func:`transaction` the renames wait until the whole block has succeeded, so a
command's outputs appear together or not at all.

The rule every command keeps (docs/bad-input.md): nothing the user already had is ever deleted or
overwritten by a failed run. A failed run removes only its own temporary files and the folders it
created itself (those hold nothing but its own files); an earlier output at the same path stays
exactly as it was until a successful run replaces it.

Temporary names are ``.<name>.<pid>-<hex>.tmp``. A run that was killed leaves one behind; the next
run that writes the same target removes the ones whose process is gone (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextvars
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[0-9a-f]{8,12}\.tmp$")


def temp_path(path: Path) -> Path:
    """The hidden temporary name a write of ``path`` uses: ``.<name>.<pid>-<hex>.tmp`` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(entry: Path) -> bool:
    """Whether ``entry`` is an ffsplat temporary file whose writer is gone: its process id is not
    alive (a name without a process id comes from an older ffsplat, whose writer is gone too)."""
    m = _TEMP.match(Path(entry).name)
    if not m:
        return False
    return m.group("pid") is None or not _alive(int(m.group("pid")))


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files of ``path`` left by killed runs (their process is gone); returns them.

    Only ffsplat's own temporary names for this very target are considered, never other files."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        m = _TEMP.match(entry.name)
        if not m or m.group("name") != path.name or not entry.is_file():
            continue
        if is_stale_temp(entry):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def check_writable_dir(path: Path) -> None:
    """Raise a clear error if ``path``'s directory is missing or not writable."""
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: directory {parent} is not writable")


class Transaction:
    """The files of one command's outputs, renamed into place together by :meth:`commit`.

    Created by :func:`transaction`; :func:`atomic_open` and :func:`make_dirs` register with the active one.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary file, target)
        self.created_dirs: list[Path] = []  # folders this run created, outermost first
        self.committed: list[Path] = []

    def make_dirs(self, folder: Path) -> None:
        missing = []
        probe = Path(folder)
        while not probe.exists() and probe.parent != probe:
            missing.append(probe)
            probe = probe.parent
        for d in reversed(missing):
            d.mkdir()
            self.created_dirs.append(d)

    def commit(self) -> None:
        for tmp, target in self.pending:
            os.replace(tmp, target)
            self.committed.append(target)
        self.pending.clear()

    def rollback(self) -> None:
        """Remove this run's temporary files and the folders it created; nothing else."""
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending.clear()
        created = set(self.created_dirs)
        for target in self.committed:  # only new files in new folders (a commit that failed half-way)
            if target.parent in created:
                target.unlink(missing_ok=True)
        for d in reversed(self.created_dirs):
            _remove_own_dir(d)


def _remove_own_dir(folder: Path) -> None:
    """Remove a folder this run created, if it holds nothing but ffsplat temporary files."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not (entry.is_file() and _TEMP.match(entry.name)):
            return  # something else appeared in it (another process, the user): leave it
    shutil.rmtree(folder, ignore_errors=True)


_ACTIVE: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("ffsplat_transaction", default=None)


@contextmanager
def transaction() -> Iterator[Transaction]:
    """All :func:`atomic_open` writes (and :func:`make_dirs`) inside the block become visible together
    when it exits cleanly; if it raises, none of them does and the folders it created are removed.
    Files and folders that existed before are never removed or changed by a failed block."""
    if _ACTIVE.get() is not None:  # nested: the outer transaction decides
        yield _ACTIVE.get()
        return
    tx = Transaction()
    token = _ACTIVE.set(tx)
    try:
        yield tx
        tx.commit()
    except BaseException:
        tx.rollback()
        raise
    finally:
        _ACTIVE.reset(token)


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` that a :func:`transaction` remembers, so a failed run removes only the folders it made."""
    folder = Path(folder)
    tx = _ACTIVE.get()
    if tx is None:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        tx.make_dirs(folder)
    return folder


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", clean_stale: bool = True) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the block exits cleanly (inside
    a :func:`transaction`: when the transaction commits).

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    left as it was. Temporary files of ``path`` left by killed runs are removed first (this lists
    the folder: writers of many files into one folder, such as the shard writer, pass
    ``clean_stale=False`` and clean the folder once per run instead).
    """
    path = Path(path)
    check_writable_dir(path)
    if clean_stale:
        remove_stale_temps(path)
    tmp = temp_path(path)
    tx = _ACTIVE.get()
    try:
        with open(tmp, mode.replace("w", "x")) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        if tx is None:
            os.replace(tmp, path)
        else:
            tx.pending.append((tmp, path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
