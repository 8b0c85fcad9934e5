"""One adapter per model library, registered once (see ``base.Adapter`` for what one holds).

``fastinfer.families`` points every family at one of these; ``adapter_for(obj)`` finds the
adapter that takes a native object (an ensemble's members). Registering a second adapter under
a taken name is refused unless ``replace=True``. Importing this package imports no model
library: adapters import theirs inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

from .base import PICKLES, PREDICT_API, Adapter, FileFormat, type_names
from .catboost import CATBOOST
from .ensemble import ENSEMBLE
from .keras import KERAS_ADAPTER
from .lightgbm import LIGHTGBM, QUANTILE_SET
from .ngboost import NGBOOST
from .sklearn import SKLEARN
from .xgboost import XGBOOST

_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter, *, replace: bool = False) -> Adapter:
    """Add ``adapter`` under its name; a name registered twice is refused unless ``replace``."""
    if not isinstance(adapter, Adapter) or not adapter.name:
        raise TypeError(f"expected a named fastinfer.adapters.Adapter, got {adapter!r}")
    if adapter.name in _REGISTRY and not replace and _REGISTRY[adapter.name] is not adapter:
        raise ValueError(
            f"adapter {adapter.name!r} is already registered ({_REGISTRY[adapter.name]!r}); "
            "pass replace=True to override it"
        )
    _REGISTRY[adapter.name] = adapter
    return adapter


for _adapter in (LIGHTGBM, XGBOOST, CATBOOST, SKLEARN, NGBOOST, QUANTILE_SET, ENSEMBLE, KERAS_ADAPTER):
    register(_adapter)


def registered() -> dict[str, tuple[str, ...]]:
    """Adapter name -> the native types it takes."""
    return {name: adapter.accepts for name, adapter in sorted(_REGISTRY.items())}


def supported_text() -> str:
    return "; ".join(f"{name}: {', '.join(types)}" for name, types in registered().items())


def adapter_for(obj: Any) -> Adapter | None:
    """The first registered adapter that takes ``obj``, or None."""
    return next((a for a in _REGISTRY.values() if a.handles(obj)), None)


def get(name: str) -> Adapter:
    return _REGISTRY[name]


def adapter_of(obj: Any, family: Any) -> Adapter | None:
    """The adapter that runs ``obj`` found in a ``family`` folder: the family's own when it takes
    the object, else the library's that does (a LightGBM model pickled in an ``ensemble`` folder),
    else ``PREDICT_API`` for any other object with ``predict(X)``; None for anything else."""
    if family.adapter.handles(obj):
        return family.adapter
    return adapter_for(obj) or (PREDICT_API if PREDICT_API.handles(obj) else None)


__all__ = [
    "CATBOOST",
    "ENSEMBLE",
    "KERAS_ADAPTER",
    "LIGHTGBM",
    "NGBOOST",
    "PICKLES",
    "PREDICT_API",
    "QUANTILE_SET",
    "SKLEARN",
    "XGBOOST",
    "Adapter",
    "FileFormat",
    "adapter_for",
    "adapter_of",
    "get",
    "register",
    "registered",
    "supported_text",
    "type_names",
]
