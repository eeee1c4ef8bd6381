"""Outputs written under a temporary name and renamed into place, so that a run killed while writing
leaves the previous complete file or folder (or none), never a half-written one. `atomic` is the one
way this project writes: run outputs, checkpoints, reports, and cache entries.

A cache entry (`keep_existing=True`) may be finished by several processes at once (every rank of a
torchrun job, or jobs of a sweep): the rename is made under an exclusive file lock, the first entry in
place wins and the others are discarded, and a rename that still loses a race (a file system without
locks) is harmless for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def _locked(final: Path):
    """An exclusive lock on `final`, held by one process at a time."""
    with open(final.with_name(f".{final.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _put_in_place(tmp: Path, final: Path, keep_existing: bool) -> None:
    if keep_existing:
        with _locked(final):
            if final.exists():  # another process finished the same entry first: keep theirs
                return _remove(tmp)
            try:
                os.replace(tmp, final)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.exists():
                    raise
                _remove(tmp)  # lost the rename race after all: theirs is complete, ours goes
        return
    if tmp.is_dir() and final.exists():  # a folder cannot be renamed over a full one: move it aside first
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        return _remove(old)
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic(final: Path, keep_existing: bool = False):
    """Yield a temporary sibling path to write a file or fill a folder at; when the block succeeds it
    replaces `final` (with `keep_existing`, it becomes `final` only if no other process put one there
    first). On an error nothing of it is left."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _put_in_place(tmp, final, keep_existing)
    finally:
        _remove(tmp)


def write_json(path: Path, payload: dict) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
