"""Bar time: what a bar's timestamp is, and the order bars must come in.

Every predictor (live, sharded, batch) takes bars oldest first: a bar older than the newest one
accepted is refused before anything changes; an equal one is accepted as one more bar (a
coarse clock may stamp two bars alike): nothing is replaced, so a caller must not resend a bar.
``timestamp_ns`` reads a bar time as int nanoseconds since the epoch (UTC). A bar accepted with a
wrong time far in the future makes every later bar older than it: the refusal names both times, and
``load_state_dict`` of a state saved before it is the way back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .buffers import timestamp_ns
from .errors import InferenceError

__all__ = ["BarClock", "interval_problem", "timestamp_ns"]


def interval_problem(trained: float | None, data: float | None, tol: float) -> str | None:
    """Why a model trained on ``trained``-minute bars may not serve ``data``-minute bars, or None
    (within the relative tolerance ``tol``, or when either is unknown)."""
    if trained is None or data is None:
        return None
    if abs(trained - data) <= tol * max(abs(trained), abs(data)):
        return None
    return f"trained on {trained:g}-minute bars, data is {data:g}-minute bars"


def _iso(stamp: int) -> str:
    """An int ns bar time as UTC text (a previous bar far in the future shows at once)."""
    return f"{np.datetime64(stamp, 'ns')} UTC"


class BarClock:
    """The newest bar time accepted so far (``last``, int ns, or None before any)."""

    def __init__(self, last: int | None = None):
        self.last = last

    def check(self, timestamp: Any) -> int | None:
        """The bar time as int ns (None for no timestamp), or the ``InferenceError`` for a time that
        is not a time or is older than the newest bar accepted. Changes nothing."""
        if timestamp is None:
            return None
        stamp = timestamp_ns(timestamp)
        if self.last is not None and stamp < self.last:
            raise InferenceError(
                f"bar timestamp {_iso(stamp)} is older than the previous bar's ({_iso(self.last)}); "
                "bar refused, nothing changed"
            )
        return stamp

    def accept(self, stamp: int | None) -> None:
        """Record a bar the caller has taken (``stamp`` from ``check``)."""
        if stamp is not None:
            self.last = stamp
