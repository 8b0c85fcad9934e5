"""Features as data: one definition, compiled once, computed in batch (training) and incrementally (live).

The pipeline, one module per step::

    vocabulary   parametric names (ret_{n}, vol_{n}, rsi_{n}, bb_pct_{n}_{k}, ...) → expressions
    definitions  feature_definitions.yaml: name → expression, external columns, bars_per_day
    grammar      expression text → tree (tokeniser + recursive descent; no eval)
    primitives   the functions an expression may call; register_primitive for your own
    graph        the DAG: kernel operations, shared sub-expressions (hash-consing), warm-ups
    compiler     names + definitions → one graph → program (errors name the feature)
    program      the DAG laid out for the interpreter kernel; its hash identifies it
    batch        whole series at once (kernels/feature_batch: whole-window formulas)
    frames       DataFrames in and out of batch: symbol column, gaps, externals, time order
    streaming    StreamingFeatures: one jitted call per bar (kernels/feature_program)
    builder      FeatureBuilder: a window of bars → a named FeatureVector (the spec's API)
    named        FeatureVector, an ndarray that keeps its feature names
    runs         a run's feature_definitions.yaml and the union of its models' features
    parity       check_parity: both executions agree, for users' own tests
    command      `fastinfer features build | explain | vocabulary`
    default_set  a realistic 100-200-name set from the vocabulary
    pandas_reference  an independent pandas / TA-Lib implementation (tests, benchmark baselines)

Compile a program and run it both ways::

    from fastinfer.features import FeatureDefinitions, StreamingFeatures, compile_features
    defs = FeatureDefinitions.read("feature_definitions.yaml")
    program = compile_features(["ret_1d", "vol_10d", "rsi_14", "gap"], defs, interval_minutes=5, bars_per_day=78)
    live = StreamingFeatures(symbols, program=program)
    out = live.update(open, high, low, close, volume, external={"book_imbalance": x})

The vocabulary's table is in ``fastinfer.features.vocabulary``; every function's formula in
``function_table()``. Missing bars (a non-finite open, high, low, close or volume) are no bar
for that symbol in both executions: state unchanged, ``stale`` set, its row repeats its last
features. Names kept from before the vocabulary: ``KNOWN_FEATURES`` (19) and
``DEFAULT_FEATURES`` (the spec's 14), with their exact original definitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .batch import run_batch
from .compiler import check_names, compile_features, explain, union
from .default_set import default_feature_set
from .definitions import DEFINITIONS_FILE, FeatureDefinitions
from .errors import FeatureDefinitionError
from .graph import OHLCV
from .named import FeatureVector
from .parity import ParityReport, check_parity
from .primitives import function, functions, register_primitive, unregister_primitive
from .program import FeatureProgram
from .runs import RunFeatures, read_run_definitions, run_features, write_run_definitions
from .streaming import STATE_VERSION, ProgramState, StreamingFeatures
from .vocabulary import DEFAULT_FEATURES, KNOWN_FEATURES, PATTERNS, vocabulary_table

__all__ = [
    "DEFAULT_FEATURES",
    "DEFINITIONS_FILE",
    "KNOWN_FEATURES",
    "OHLCV",
    "PATTERNS",
    "STATE_VERSION",
    "TIME_COLUMNS",
    "FeatureBuilder",
    "FeatureDefinitionError",
    "FeatureDefinitions",
    "FeatureProgram",
    "FeatureVector",
    "ParityReport",
    "ProgramState",
    "RunFeatures",
    "StreamingFeatures",
    "check_names",
    "check_parity",
    "check_time_order",
    "compile_features",
    "default_feature_set",
    "explain",
    "frame_features",
    "function",
    "function_table",
    "functions",
    "ohlcv_arrays",
    "read_run_definitions",
    "register_primitive",
    "resolve_features",
    "run_batch",
    "run_features",
    "union",
    "unregister_primitive",
    "vocabulary_table",
    "warmup",
    "write_run_definitions",
]

# pandas-based: importing them from here loads pandas only then (the live path does not need it).
_PANDAS_NAMES = {
    "FeatureBuilder": "builder",
    "ohlcv_arrays": "frames",
    "check_time_order": "frames",
    "TIME_COLUMNS": "frames",
    "frame_features": "frames",
}


def __getattr__(name: str) -> Any:
    module = _PANDAS_NAMES.get(name)
    if module is not None:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_features(
    features: Iterable[str] | None,
    definitions: FeatureDefinitions | dict | None = None,
    *,
    interval_minutes: float | None = None,
    bars_per_day: int | None = None,
) -> tuple[str, ...]:
    """The requested names as a tuple (default ``DEFAULT_FEATURES``), each checked to compile:
    a ``FeatureDefinitionError`` (a ``FeatureBuildError``) names the first that does not,
    what the vocabulary understood of it and how to define it."""
    if features is None:
        return DEFAULT_FEATURES
    return compile_features(
        features, definitions, interval_minutes=interval_minutes, bars_per_day=bars_per_day
    ).features


def function_table() -> str:
    """Every function an expression may call: signature, formula, convention (one per line)."""
    rows = [(f.signature, f.formula, f.convention) for f in functions().values()]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{sig.ljust(width)}  {formula}" + (f"  [{conv}]" if conv else "") for sig, formula, conv in rows)


def warmup() -> None:
    """Compile the feature kernels (incremental and batch) now; with numba's on-disk cache warm
    this only loads them. The same as ``fastinfer.kernels.feature_program.warmup()`` and
    ``fastinfer.kernels.feature_batch.warmup()``, the kernels' own entry points."""
    from ..kernels import feature_batch, feature_program

    feature_program.warmup()
    feature_batch.warmup()
