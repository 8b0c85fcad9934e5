"""Tables in and out of the command line: CSV or Parquet, chosen by the file's extension."""

from __future__ import annotations

import errno
import io
from pathlib import Path

from .atomic import open_regular
from .errors import FeatureBuildError

PARQUET = (".parquet", ".pq")
_NOT_REGULAR = (errno.EISDIR, errno.EINVAL)  # open_regular's refusals of a folder, a FIFO or a device


def read_table(path: Path, what: str = "table"):
    """A CSV or Parquet file as a DataFrame (``FeatureBuildError`` naming the file otherwise)."""
    import pandas as pd

    try:
        f = open_regular(path)  # a folder, a FIFO (pandas would wait on it), a device: refused at once
    except FileNotFoundError:
        raise FeatureBuildError(f"{path}: no such file") from None
    except OSError as exc:
        raise FeatureBuildError(
            f"{path}: not a regular file" if exc.errno in _NOT_REGULAR else f"{path}: {exc.strerror}"
        ) from None
    try:
        with f:
            return pd.read_parquet(f) if path.suffix.lower() in PARQUET else pd.read_csv(f)
    except ImportError:
        raise FeatureBuildError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or use CSV") from None
    except Exception as exc:  # pandas raises many types for a malformed file
        raise FeatureBuildError(f"{path}: cannot read {what} ({type(exc).__name__}: {str(exc)[:160]})") from None


def write_table(frame, path: Path) -> None:
    """Write atomically as Parquet (by extension) or CSV."""
    from .atomic import write_atomic_bytes

    if path.suffix.lower() in PARQUET:
        buffer = io.BytesIO()
        try:
            frame.to_parquet(buffer, index=False)
        except ImportError:
            raise FeatureBuildError(f"{path}: writing Parquet needs pyarrow (pip install pyarrow)") from None
        write_atomic_bytes(path, buffer.getvalue())
    else:
        write_atomic_bytes(path, frame.to_csv(index=False).encode("utf-8"))
