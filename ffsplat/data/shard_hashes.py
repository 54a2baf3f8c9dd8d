"""SHA-256 of shards, hashed once: a cache keyed by each file's path, size and mtime.

``train.py data.verify_hashes=true`` checks every shard of the training (and validation) split
against ``manifest.json`` before training starts (:func:`ffsplat.data.shards.verify_shards`).
Hashing gigabytes of shards at every start would be slow, so each digest is kept in
``<root>/.sha256_cache.json`` with the file's size and modification time: an unchanged file is not
read again; a changed one (other size or mtime) is. A folder that cannot be written keeps no cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CACHE_NAME = ".sha256_cache.json"


class CachedDigests:
    """``digest(path)`` = SHA-256 hex of ``path``, from the cache when its size and mtime are unchanged."""

    def __init__(self, root: str | Path):
        self.file = Path(root) / CACHE_NAME
        try:
            self.entries: dict[str, list] = json.loads(self.file.read_text())
            if not isinstance(self.entries, dict):
                self.entries = {}
        except (OSError, ValueError):
            self.entries = {}
        self.hashed = 0  # files actually read this time

    def digest(self, path: str | Path) -> str:
        from ffsplat.data.shard_writer import sha256

        path = Path(path)
        st = path.stat()
        key, stamp = os.path.realpath(path), [st.st_size, st.st_mtime_ns]
        entry = self.entries.get(key)
        if isinstance(entry, list) and entry[:2] == stamp and len(entry) == 3:
            return entry[2]
        self.hashed += 1
        value = sha256(path)
        self.entries[key] = [*stamp, value]
        return value

    def save(self) -> None:
        """Write the cache (atomically); a folder that cannot be written keeps none."""
        from ffsplat.core.atomic import atomic_open

        try:
            with atomic_open(self.file, "w") as f:
                json.dump(self.entries, f)
        except OSError:
            pass
