"""A content-keyed disk cache for what is expensive and deterministic (targets, attribution scores).

Entries are written into a temporary sibling folder and renamed into place at the end, so a run that
dies half-way leaves nothing that a later run could mistake for a finished entry. Several processes
may finish the same entry at once (every rank of a torchrun job, or jobs of a sweep): the rename is
made under an exclusive file lock, the first entry in place wins and the others are discarded, and a
rename that still loses a race (a file system without locks) is harmless for the same reason.

Each cached computation carries a format version (`*_FORMAT` next to it), part of its key: bump it
whenever the computation changes, so that no entry made by older code is reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
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


@contextlib.contextmanager
def _locked(final: Path):
    """An exclusive lock on `final`'s entry, held by one process at a time."""
    with open(final.with_name(f".{final.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder that becomes `final` only when the block finishes without error
    (and no other process has put `final` in place meanwhile: then theirs is kept)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        with _locked(final):
            if final.exists():  # another process finished the same entry first: keep theirs
                shutil.rmtree(tmp)
                return
            try:
                os.replace(tmp, final)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.exists():
                    raise
                shutil.rmtree(tmp)  # lost the rename race after all: theirs is complete, ours goes
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
