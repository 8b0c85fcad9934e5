"""``FeatureVector``: an ndarray whose last axis carries feature names.

``FeatureBuilder.build`` returns one, so that a vector built once for a whole run can be
handed to every model and placed by name (``vector.select(model.feature_order)``): models of
one run read different subsets in different orders, and an unnamed vector is then silently
wrong for some of them.

Names are kept only where the values provably stay in their columns: ``reshape`` / ``ravel``
(C order) keeping the last axis' length (``reshape(1, -1)``), ``astype``, ``copy``, element-wise
arithmetic between vectors of the same names (or with plain numbers and arrays), and
indexing: rows (``m[1:]``, ``m[[0, 2]]``), and slicing or fancy indexing of the last axis
(``v[2:5]``, ``v[[3, 1]]``, ``v[::-1]``, ``m[:, 1:3]``), which keep the names of the elements
taken. Every other path leaves ``names`` None (``np.sort`` along the last axis, ``np.roll``,
``.T``, ``reshape(2, -1)``, reductions, stacking, ...): numpy can move values between
columns there, and a vector whose names no longer match its values would be placed wrong by
name without a word. A single element is a plain number; ``np.asarray(v)`` is a plain ndarray.
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
        # Any array numpy makes from a vector (views, copies, results) starts unnamed; the paths
        # known to keep every value in its column (below) name the result themselves.
        self.names = None

    def _keeping(self, result: Any) -> Any:
        """``result`` named like ``self`` when its last axis still has our columns' length."""
        if isinstance(result, FeatureVector) and self.names is not None and result.ndim >= 1:
            result.names = self.names if result.shape[-1] == len(self.names) else None
        return result

    def reshape(self, *shape: Any, order: str = "C", **kwargs: Any) -> Any:
        # In C order an element's column is its flat index modulo the last axis' length, so a
        # reshape keeping that length keeps every value in its column.
        result = super().reshape(*shape, order=order, **kwargs)
        return self._keeping(result) if order == "C" else result

    def ravel(self, order: str = "C") -> Any:
        result = super().ravel(order)
        return self._keeping(result) if order == "C" else result

    def astype(self, *args: Any, **kwargs: Any) -> Any:
        return self._keeping(super().astype(*args, **kwargs))

    def copy(self, order: str = "C") -> Any:
        return self._keeping(super().copy(order))

    def __copy__(self) -> Any:
        return self.copy()

    def __deepcopy__(self, memo: Any) -> Any:
        return self.copy()

    def sort(self, axis: int = -1, **kwargs: Any) -> None:
        super().sort(axis, **kwargs)  # np.sort: a copy (named), then this, in place
        if self.ndim and axis % self.ndim == self.ndim - 1:
            self.names = None  # each row's values now sit in other columns

    def partition(self, kth: Any, axis: int = -1, **kwargs: Any) -> None:
        super().partition(kth, axis, **kwargs)
        if self.ndim and axis % self.ndim == self.ndim - 1:
            self.names = None

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, out: Any = None, **kwargs: Any) -> Any:
        """Element-wise calls keep the names their named inputs share; reductions, accumulations
        and the rest drop them. ``out=`` arrays are written in place and keep theirs."""
        plain = [np.asarray(x) if isinstance(x, FeatureVector) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, FeatureVector) else o for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if method != "__call__":
            return _named(result, None)
        # Broadcasting never moves a named input's values to another column: they keep their names
        # when every named input has the same ones (else whose would the result carry?).
        named = [x for x in inputs if isinstance(x, FeatureVector) and x.names is not None]
        names = named[0].names if named and all(x.names == named[0].names for x in named) else None
        return tuple(_named(r, names) for r in result) if isinstance(result, tuple) else _named(result, names)

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


def _named(result: Any, names: tuple[str, ...] | None) -> Any:
    """A ufunc's ndarray result as a ``FeatureVector`` (named when its last axis fits ``names``);
    numbers and other types unchanged."""
    if type(result) is not np.ndarray:
        return result
    vector = result.view(FeatureVector)
    if names is not None and vector.ndim >= 1 and vector.shape[-1] == len(names):
        vector.names = names
    return vector
