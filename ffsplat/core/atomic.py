"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it.

Readers therefore see either the complete new file or the old one (or none), never half a file,
even if the writer is killed. Used for .ply files, images, checkpoints and shards.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def check_writable_dir(path: Path) -> None:
    """Raise a clear error if ``path``'s directory is missing or not writable."""
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: directory {parent} is not writable")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the block exits cleanly.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    check_writable_dir(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
