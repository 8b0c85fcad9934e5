"""``FeatureVector``: an ndarray whose last axis carries feature names.

``FeatureBuilder.build`` returns one, so that a vector built once for a whole run can be
handed to every model and placed by name (``vector.select(model.feature_order)``): models of
one run read different subsets in different orders, and an unnamed vector is then silently
wrong for some of them.

The names follow the last axis: ``reshape(1, -1)`` (or any reshape keeping the last axis),
``astype``, arithmetic and ``copy`` keep them; slicing and fancy indexing of the last axis
(``v[2:5]``, ``v[[3, 1]]``, ``v[::-1]``, ``m[:, 1:3]``) keep the names of the elements taken. An
operation after which the last axis no longer lines up with the names (``reshape(2, -1)``,
``ravel()`` of a 2-D vector, a reduction) leaves ``names`` None; a single element is a plain
number. ``np.asarray(v)`` is a plain ndarray.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import FeatureBuildError


class FeatureVector(np.ndarray):
    """``FeatureVector(values, names)``: ``values`` (any shape whose last axis has len(names)
    elements) with ``.names``, a tuple of str (None once the last axis no longer matches)."""

    names: tuple[str, ...] | None

    def __new__(cls, values: Any, names: Iterable[str]):
        obj = np.asarray(values).view(cls)
        names = tuple(str(n) for n in names)
        if obj.ndim == 0 or obj.shape[-1] != len(names):
            raise FeatureBuildError(f"{len(names)} names for an array of shape {obj.shape}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise FeatureBuildError(f"feature name(s) given twice: {dup}")
        obj.names = names
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        names = getattr(obj, "names", None)
        self.names = names if names is not None and self.ndim >= 1 and self.shape[-1] == len(names) else None

    def __getitem__(self, key: Any) -> Any:
        result = super().__getitem__(key)
        if not isinstance(result, FeatureVector):
            return result
        if self.names is None or result.ndim == 0:
            result.names = None
            return result
        # Which of our last-axis positions each element of the result came from.
        positions = np.broadcast_to(np.arange(len(self.names)), self.shape)[key]
        if positions.shape != result.shape or positions.ndim == 0:
            result.names = None
            return result
        rows = positions.reshape(-1, positions.shape[-1])
        if rows.shape[0] and not (rows == rows[0]).all():
            result.names = None  # the last axis now mixes positions (e.g. m[[0, 1], [1, 0]])
            return result
        taken = [self.names[p] for p in rows[0]] if rows.shape[0] else []
        result.names = tuple(taken) if len(set(taken)) == len(taken) else None
        return result

    def __reduce__(self):
        constructor, args, state = super().__reduce__()
        return constructor, args, (state, self.names)

    def __setstate__(self, state: Any) -> None:
        base, names = state
        super().__setstate__(base)
        self.names = names

    def __repr__(self) -> str:
        return f"FeatureVector({np.asarray(self)!r}, names={self.names!r})"

    def index(self, name: str) -> int:
        """Position of ``name`` on the last axis."""
        if self.names is None or name not in self.names:
            raise FeatureBuildError(f"feature {name!r} is not in this vector (names: {self._shown()})")
        return self.names.index(name)

    def select(self, names: Sequence[str]) -> FeatureVector:
        """The features ``names`` in that order (along the last axis); a name the vector lacks is
        a ``FeatureBuildError`` naming it."""
        if self.names is None:
            raise FeatureBuildError("this array has lost its feature names; rebuild it with FeatureBuilder")
        have = {n: j for j, n in enumerate(self.names)}
        missing = [n for n in names if n not in have]
        if missing:
            raise FeatureBuildError(f"feature(s) {missing[:10]} are not in this vector (names: {self._shown()})")
        return self[..., [have[n] for n in names]]

    def to_dict(self) -> dict[str, Any]:
        """{name: value} of a 1-D vector."""
        if self.ndim != 1 or self.names is None:
            raise FeatureBuildError(f"to_dict needs a 1-D named vector, got shape {self.shape}")
        return dict(zip(self.names, np.asarray(self).tolist()))

    def _shown(self) -> str:
        names = list(self.names or ())
        return f"{names[:10]}{' ...' if len(names) > 10 else ''}"
