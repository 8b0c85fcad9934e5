"""Atomic state on disk: write a temp file beside the target, fsync, rename, fsync the folder.

A crash at any point leaves either the old file or the new one, never a torn mix. Reading goes
through ``open_regular`` / ``read_regular``: only a regular file is ever read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


def write_atomic_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic_json(path: str | Path, obj: Any) -> None:
    """The spec's ``write_atomic_json``: JSON (sorted keys, NaN refused) written atomically."""
    write_atomic_bytes(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode())


def open_regular(path: str | Path):
    """``path`` opened for reading in binary, refused (``OSError``) unless it is a regular file.

    The file is opened without blocking and checked on the open descriptor, so a FIFO (whose
    ``open`` waits for a writer that never comes), a device (``/dev/zero`` never ends) or a
    directory put where a file belongs is an error at once, and a swap between a check and
    the open cannot slip one in.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            reason = os.strerror(code) if code == errno.EISDIR else "not a regular file"
            raise OSError(code, reason, str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (``open_regular``); with ``limit``, at most
    ``limit + 1`` of them, so a caller can tell a file over its limit (it may grow after a stat)."""
    with open_regular(path) as f:
        return f.read() if limit is None else f.read(limit + 1)


def read_json(path: str | Path) -> Any:
    return json.loads(read_regular(path))
