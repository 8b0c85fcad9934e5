"""Atomic state on disk: write a temp file beside the target, fsync, rename, fsync the folder.

A crash at any point leaves either the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import json
import os
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


def read_json(path: str | Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())
