"""The output layout every predictor shares: columns, each model's slice, point columns, the
features each model needs, and the readiness / NaN rule.

Built once from the loaded models and the union of their features, and used by the live
predictor, the batch predictor, the Ray shards and the Triton client alike, so that they name,
mask and view outputs the same way:

* ``columns[j]`` is ``(target, family, column)``; a model's columns are contiguous (``slots``).
* The point column of a model — the value a ``{horizon: {family: value}}`` view shows — is the
  first of ``prediction``, ``loc`` (a distribution), ``q0.5`` (the median quantile) it has; for a
  classifier (columns ``p_<class>``) the last class's probability (binary: P(class 1)); else its
  first column.
* A model's outputs are NaN for a row whose needed features are not all finite (warm-up, a
  missing bar, NaN input), unless ``nan_policy`` is ``pass`` and the model routes NaN itself
  (trees with missing-value branches); inf counts as missing. Sequence models are NaN until their
  buffer is ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

POINT_COLUMNS = ("prediction", "loc", "q0.5")
CLASS_PREFIX = "p_"


def point_column(columns: Sequence[str]) -> int:
    """Which of a model's output ``columns`` a ``{horizon: {family: value}}`` view shows."""
    names = list(columns)
    for name in POINT_COLUMNS:
        if name in names:
            return names.index(name)
    if names and all(c.startswith(CLASS_PREFIX) for c in names):
        return len(names) - 1  # the last class: P(class 1) for a binary classifier
    return 0


def feature_union(models: Sequence[Any]) -> list[str]:
    """Every feature ``models`` read, once, in first-seen order over the models (each in its own
    feature order): the column order of the live predictor's feature rows and of exported graphs."""
    return list(dict.fromkeys(f for m in models for f in m.feature_order))


def horizon_of(target: str) -> str:
    """``fwd_ret_15m`` → ``15m``: the spec keys predictions by horizon."""
    return target[len("fwd_ret_") :] if target.startswith("fwd_ret_") else target


@dataclass(frozen=True)
class ModelSlot:
    """One model's place in the output matrix."""

    target: str
    family: str
    columns: tuple[str, ...]
    start: int  # its columns are out[:, start:stop]
    stop: int
    needs: tuple[int, ...]  # the union columns it reads, in its feature order
    sequence_length: int  # 0 for a tabular model
    pass_nan: bool  # NaN inputs reach the model (nan_policy pass and it routes NaN)

    @property
    def point(self) -> int:
        return self.start + point_column(self.columns)

    @property
    def key(self) -> tuple[str, str]:
        return (self.target, self.family)


class OutputLayout:
    """``OutputLayout(slots, union)``; build it with ``from_models``."""

    def __init__(self, slots: Sequence[ModelSlot], union: Sequence[str]):
        self.slots = tuple(slots)
        self.union = tuple(union)
        self.columns: list[tuple[str, str, str]] = [(s.target, s.family, c) for s in self.slots for c in s.columns]
        self.points: dict[tuple[str, str], int] = {s.key: s.point for s in self.slots}
        self.sequence_lengths = tuple(sorted({s.sequence_length for s in self.slots if s.sequence_length}))
        width, n = len(self.union), len(self.slots)
        # The masking kernels' inputs (see fastinfer.predictor): which union columns each model
        # checks, whether NaN passes, which readiness row it reads (0: always ready, 1 + k:
        # sequence length k), and the model of every output column.
        self.needs = np.zeros((n, width), dtype=np.bool_)
        self.pass_nan = np.zeros(n, dtype=np.bool_)
        self.ready_of_model = np.zeros(n, dtype=np.int64)
        for i, s in enumerate(self.slots):
            if s.sequence_length:
                self.ready_of_model[i] = 1 + self.sequence_lengths.index(s.sequence_length)
            else:
                self.needs[i, list(s.needs)] = True
            self.pass_nan[i] = s.pass_nan
        self.model_of_column = np.repeat(np.arange(n), [s.stop - s.start for s in self.slots]).astype(np.int64)

    @classmethod
    def from_models(cls, models: Sequence[Any], union: Sequence[str], nan_policy: str = "reject") -> OutputLayout:
        """The layout of ``models`` (``LoadedModel``-like: target, family, columns, feature_order,
        spec.sequence_length) in that order, over the ``union`` of their features."""
        index = {f: j for j, f in enumerate(union)}
        slots, start = [], 0
        for m in models:
            stop = start + len(m.columns)
            seq = m.spec.sequence_length if m.family.sequential else 0
            slots.append(
                ModelSlot(
                    target=m.target,
                    family=m.family.name,
                    columns=tuple(m.columns),
                    start=start,
                    stop=stop,
                    needs=tuple(index[f] for f in m.feature_order),
                    sequence_length=int(seq or 0),
                    pass_nan=nan_policy == "pass" and m.family.handles_nan,
                )
            )
            start = stop
        return cls(slots, union)

    # ------------------------------------------------------------ views

    def slot(self, target: str, family: str) -> ModelSlot | None:
        return next((s for s in self.slots if s.key == (target, family)), None)

    def view(self, row: np.ndarray) -> dict[str, dict[str, float]]:
        """The spec's ``{horizon: {family: value}}`` of one output row (point columns)."""
        result: dict[str, dict[str, float]] = {}
        for (target, family), j in self.points.items():
            result.setdefault(horizon_of(target), {})[family] = float(row[j])
        return result

    def mask_invalid(
        self, features: np.ndarray, out: np.ndarray, sequences: Mapping[int, np.ndarray] | None = None
    ) -> None:
        """Set ``out`` NaN where a model's inputs were not valid, for a batch of rows:
        ``features`` (N, union) for tabular models, ``sequences[T]`` (N, T, union) for sequence
        models (a window holding a non-finite value is not valid). The batch paths' form of the
        live predictor's jitted rule."""
        for s in self.slots:
            if s.pass_nan:
                continue
            if s.sequence_length:
                if sequences is None or s.sequence_length not in sequences:
                    continue
                x = sequences[s.sequence_length][..., list(s.needs)]
            else:
                x = features[:, list(s.needs)]
            bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
            out[bad, s.start : s.stop] = np.nan

    # ------------------------------------------------------------ persistence (Triton's index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "union": list(self.union),
            "slots": [{**asdict(s), "columns": list(s.columns), "needs": list(s.needs)} for s in self.slots],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputLayout:
        slots = [
            ModelSlot(
                target=str(s["target"]),
                family=str(s["family"]),
                columns=tuple(map(str, s["columns"])),
                start=int(s["start"]),
                stop=int(s["stop"]),
                needs=tuple(int(j) for j in s["needs"]),
                sequence_length=int(s["sequence_length"]),
                pass_nan=bool(s["pass_nan"]),
            )
            for s in data["slots"]
        ]
        return cls(slots, [str(f) for f in data["union"]])
