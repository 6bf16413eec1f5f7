"""Atomic writes and lock files: a reader never sees a half-written artifact, and two writers never interleave.

Every cache write in absae goes through here:

    write_text(path, text) / write_bytes(path, data) / write_json(path, obj)
        the data goes to a unique temporary file beside ``path`` (same folder, so the same file system), is flushed
        to disk, and is renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows);
    with replacing(path) as tmp: np.save(tmp, ...)
        the same for writers that want a file name (numpy, torch.save, safetensors);
    with file_lock(path): ...
        an exclusive ``fcntl.flock`` on ``<path>.lock``; other processes wait (or fail after ``timeout`` with a
        message naming the lock file). The kernel drops the lock when its process dies, even on SIGKILL, so a
        crashed writer never leaves a lock that blocks the next run;
    publish_folder(tmp, folder)
        move a folder written under a temporary name into place.

Temporary names start with ``.`` and contain ``.tmp-``, so ``remove_stale_temps`` can clear what a killed writer
left behind (call it only while holding the lock that guards those writers).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; writes stay atomic, only the cross-process waiting is lost
    fcntl = None

TEMP_MARK = ".tmp-"


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.tmp-<pid>-<random>`` (unique across processes)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically, on any error it is removed.

    The yielded name ends like ``path`` does (``.npy``, ``.pt``...), so writers that add a suffix add none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    tmp = tmp.with_name(tmp.name + path.suffix)  # np.save would append ".npy" to a name without it
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp} meant to become {path}")
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` atomically."""
    return write_text(path, json.dumps(obj, **dumps_kwargs))


def read_json(path: str | Path, what: str = "file", fix: str = "delete it to recompute it") -> Any:
    """``json.loads`` of ``path``, with a ValueError naming the file and ``fix`` if it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"The {what} {path} is not valid JSON ({err}); {fix}.") from err


@contextmanager
def file_lock(path: str | Path, timeout: float | None = None, what: str = "this artifact",
              poll: float = 0.1) -> Iterator[Path]:
    """Hold an exclusive lock on ``<path>.lock`` (created beside ``path``) for the duration of the block.

    Args:
        path: the artifact (file or folder) the lock guards.
        timeout: seconds to wait for another process to let go; None = wait as long as it takes (the other process
            is alive and working: a dead one releases its lock at once).
        what: what is being written, for the messages.
        poll: seconds between attempts.

    Raises:
        TimeoutError naming the lock file, if ``timeout`` passes first.
    """
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield lock_path
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if timeout is not None and waited >= timeout:
                    raise TimeoutError(
                        f"Another process has held the lock {lock_path} for {waited:.0f} s while writing {what}. "
                        "Wait for it to finish (or stop it), then run again; the lock goes away by itself when that "
                        "process ends."
                    ) from None
                if not told:
                    print(f"Waiting for another process writing {what} (lock {lock_path})...", file=sys.stderr)
                    told = True
                time.sleep(poll)
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temps(folder: str | Path, name: str) -> list[Path]:
    """Delete the temporaries ``.<name>.tmp-*`` (files or folders) in ``folder``; returns what was removed.

    Only call it while holding the lock that all writers of ``name`` take: otherwise a live writer's file goes too.
    """
    removed = []
    for tmp in Path(folder).glob(f".{name}{TEMP_MARK}*"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def temp_folder(folder: str | Path) -> Path:
    """A new empty folder beside ``folder`` under a temporary name, to fill and then :func:`publish_folder`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}{TEMP_MARK}{os.getpid()}-", dir=folder.parent))


def publish_folder(tmp: str | Path, folder: str | Path, replace: bool = False) -> Path:
    """Rename the finished folder ``tmp`` to ``folder`` (atomic: readers see no folder, or all of it).

    An existing ``folder`` is an error unless ``replace``; then it is moved aside first and deleted after (a reader
    may find no folder for that instant, never a mixed one). Call under a :func:`file_lock` on ``folder``.
    """
    tmp, folder = Path(tmp), Path(folder)
    old = None
    if folder.exists():
        if not replace:
            raise FileExistsError(f"{folder} already exists; pass replace=True to replace it")
        old = temp_name(folder)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder
