"""A content-keyed disk cache for what is expensive and deterministic (targets, attribution scores).

Entries are written into a temporary sibling folder and renamed into place at the end, so a run that
dies half-way leaves nothing that a later run could mistake for a finished entry.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path


def cache_root(configured: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(configured)))


def cache_key(*parts) -> str:
    """A short hash of everything the entry depends on (JSON-serialisable parts)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder that becomes `final` only when the block finishes without error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if final.exists():  # another process finished the same entry first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
