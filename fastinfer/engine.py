"""InferenceEngine: the spec's family dispatch.

Accepts fastinfer's ``LoadedModel`` handle or a raw native model (Booster, sklearn
estimator, Keras model, …), so code written against the spec works unchanged. Output is a
float64 ndarray of shape (N,); multi-output families return (N, K): NGBoost [loc, scale],
quantile models one column per quantile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import families as fam
from .adapters import adapter_of
from .errors import InferenceError
from .loader import LoadedModel


def _family(name: Any) -> fam.Family:
    """The family named; an unknown one is an ``InferenceError`` (a ``ValueError``, as the spec raises)."""
    try:
        return fam.resolve(name)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None


class InferenceEngine:
    def predict(self, model: Any, features: Any, family: str) -> np.ndarray:
        """Tree, linear, Keras (non-sequential input or an explicit (N, T, F) array), probabilistic, meta."""
        f = _family(family)
        if f.category is fam.Category.SEQUENTIAL:
            raise InferenceError(f"Use predict_sequential for {f.name}")
        return self._run(model, features, f)

    def predict_sequential(self, model: Any, buffer: Any, family: str, symbol: Any = None) -> np.ndarray:
        """A sequence model on ``buffer.get_sequence()`` (a SeqBufferManager) or an (N, T, F) array."""
        f = _family(family)
        if not f.sequential:
            raise InferenceError(f"{f.name} is not a sequence model: use predict")
        if hasattr(buffer, "get_sequence"):
            sequence = buffer.get_sequence() if symbol is None else buffer.get_sequence(symbol)
        else:
            sequence = buffer
        return self._run(model, sequence, f)

    def _run(self, model: Any, features: Any, f: fam.Family) -> np.ndarray:
        if model is None:
            raise InferenceError(f"{f.name}: no model (loader returned None)")
        if isinstance(model, LoadedModel):
            if model.family is not f:
                raise InferenceError(f"model is {model.family.name}, asked to run it as {f.name}")
            return model.predict(features)
        X = np.asarray(features, dtype=np.float64 if f.input_rank == 2 else np.float32)
        if X.ndim != f.input_rank:
            raise InferenceError(f"{f.name}: expected a {f.input_rank}-D input, got shape {X.shape}")
        adapter = adapter_of(model, f)
        if adapter is None:
            raise InferenceError(f"{f.name}: {type(model).__qualname__} is not a model (it has no predict)")
        return adapter.predict(model, X)
