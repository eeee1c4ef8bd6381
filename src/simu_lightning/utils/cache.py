"""A content-keyed disk cache for what is expensive and deterministic (targets, attribution scores).

Entries are written with `files.atomic(path, keep_existing=True)`: into a temporary sibling folder
renamed into place at the end, so a run that dies half-way leaves nothing that a later run could mistake
for a finished entry, and of several processes finishing the same entry the first one's is kept.

Each cached computation carries a format version (`*_FORMAT` next to it), part of its key: bump it
whenever the computation changes, so that no entry made by older code is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def cache_root(configured: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(configured)))


def cache_key(*parts) -> str:
    """A short hash of everything the entry depends on (JSON-serialisable parts)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    log.debug("cache key %s <- %s", key, blob)
    return key


def source_identity(source: str, cache_dir: Path) -> str:
    """How a model source enters a cache key: a folder inside the cache by its place there (so a cache
    that is moved or copied to another machine keeps its keys), anything else as given (a hub id, a
    folder of the user's own)."""
    try:
        return Path(source).resolve().relative_to(Path(cache_dir).resolve()).as_posix()
    except ValueError:
        return source
