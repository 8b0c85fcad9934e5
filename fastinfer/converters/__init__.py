"""Native model ─► ONNX graph, one registry keyed by ``Family.converter``.

Every converted graph keeps one contract, so that graphs can later be fused by
concatenating their outputs:

* one input ``features``, float32, ``[N, F]`` (tabular) or ``[N, T, F]`` (sequential);
* one output ``prediction``, float32, ``[N, K]``: K = 1 for point models, 2 for
  NGBoost ``[loc, scale]``, Q for quantile models (artifact order).

A converter has the uniform signature
``fn(native, family, n_features, seq_len) -> ConvertedGraph`` and is registered with
``@register(key, accepts=(...))``; ``accepts`` names the native types it takes (as
``"package.ClassName"``, matched against the object's class hierarchy), so a wrong
object gets an error listing what is supported instead of a traceback from deep
inside a converter library.

The built-in converter modules are imported on first use, and they import their
converter libraries (skl2onnx ~3 s, tf2onnx + TensorFlow ~7 s) only inside the
converter functions: importing this package costs the ``onnx`` import only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from ..errors import ConversionError
from ..families import Family, resolve
from .checks import ALLOWED_DOMAINS, ALLOWED_OPS, check_graph, iter_graphs

INPUT_NAME = "features"
OUTPUT_NAME = "prediction"

# The built-in converter modules, imported (in this order) the first time the registry is read.
_BUILTIN_MODULES = ("trees", "sklearn", "keras", "ngboost", "ensemble")

Converter = Callable[[Any, Family, int, "int | None"], "ConvertedGraph"]


@dataclass
class ConvertedGraph:
    """An ONNX graph under the contract above, with what is needed to record it in a lock."""

    model: onnx.ModelProto
    columns: tuple[str, ...]  # names of the K output columns, in order
    converter: str  # registry key that produced it
    opsets: dict[str, int] = field(default_factory=dict)  # domain ("" = ai.onnx) -> version
    versions: dict[str, str] = field(default_factory=dict)  # library -> version used to convert

    input_name = INPUT_NAME
    output_name = OUTPUT_NAME

    @property
    def n_outputs(self) -> int:
        return len(self.columns)


@dataclass(frozen=True)
class _Entry:
    key: str
    fn: Converter
    accepts: tuple[str, ...]  # human-readable native types, also the default matcher
    match: Callable[[Any], bool]


_REGISTRY: dict[str, _Entry] = {}
_builtins_loaded = False


def type_names(obj: Any) -> set[str]:
    """``"package.ClassName"`` for every class in the object's hierarchy."""
    return {f"{cls.__module__.split('.')[0]}.{cls.__name__}" for cls in type(obj).__mro__}


def register(
    key: str, *, accepts: tuple[str, ...], match: Callable[[Any], bool] | None = None, replace: bool = False
) -> Callable[[Converter], Converter]:
    """Register ``fn`` as the converter for ``key``; registering a key twice is refused.

    ``accepts`` lists the native types as ``"package.ClassName"``; an object is accepted
    when one of its classes (MRO) is listed, or when ``match(obj)`` says so.
    """
    accepted = frozenset(accepts)

    def decorator(fn: Converter) -> Converter:
        if key in _REGISTRY and not replace:
            raise ValueError(
                f"converter {key!r} is already registered ({_REGISTRY[key].fn.__module__}); "
                "pass replace=True to override it"
            )
        _REGISTRY[key] = _Entry(
            key, fn, tuple(accepts), match if match is not None else (lambda obj: bool(type_names(obj) & accepted))
        )
        return fn

    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for name in _BUILTIN_MODULES:
            importlib.import_module(f"{__name__}.{name}")


def registered() -> dict[str, tuple[str, ...]]:
    """Converter key -> the native types it accepts."""
    _load_builtins()
    return {key: entry.accepts for key, entry in sorted(_REGISTRY.items())}


def _supported_text() -> str:
    return "; ".join(f"{key}: {', '.join(types)}" for key, types in registered().items())


def converter_for(native: Any, exclude: tuple[str, ...] = ()) -> str | None:
    """The key of the first converter that takes this object (used to convert ensemble members)."""
    _load_builtins()
    for key, entry in _REGISTRY.items():
        if key not in exclude and entry.match(native):
            return key
    return None


def convert(native: Any, family: Family | str, n_features: int, seq_len: int | None = None) -> ConvertedGraph:
    """Convert a loaded native model of ``family`` to a contract-conforming, checked ONNX graph.

    Raises ``ConversionError`` naming the family (and the supported converters and native
    types) when no converter exists, the object is of a type the converter does not take,
    or the conversion itself fails.
    """
    family = resolve(family)
    _load_builtins()
    entry = _REGISTRY.get(family.converter)
    if entry is None:
        raise ConversionError(
            f"family {family.name!r}: no converter {family.converter!r} is registered; "
            f"supported converters: {_supported_text()}"
        )
    if not entry.match(native):
        raise ConversionError(
            f"family {family.name!r}: converter {family.converter!r} cannot convert a "
            f"{type(native).__module__}.{type(native).__qualname__}; it takes {', '.join(entry.accepts)} "
            f"(supported converters: {_supported_text()})"
        )
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        raise ConversionError(f"family {family.name!r}: n_features must be a positive int, got {n_features!r}")
    if family.input_rank == 3 and (not isinstance(seq_len, int) or seq_len < 1):
        raise ConversionError(f"family {family.name!r} is sequential: seq_len must be a positive int, got {seq_len!r}")
    try:
        graph = entry.fn(native, family, n_features, seq_len if family.input_rank == 3 else None)
    except ConversionError as exc:
        if f"family {family.name!r}" in str(exc):
            raise
        raise ConversionError(f"family {family.name!r}: {exc}") from exc
    except Exception as exc:  # a converter library failing deep inside: name the family
        raise ConversionError(
            f"family {family.name!r}: converter {family.converter!r} failed on "
            f"{type(native).__qualname__}: {type(exc).__name__}: {exc}"
        ) from exc
    check_contract(graph, family, n_features, seq_len)
    return graph


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim
    ]


def check_contract(graph: ConvertedGraph, family: Family, n_features: int, seq_len: int | None) -> None:
    """The contract: one float32 input ``features`` of the family's rank, one float32 output
    ``prediction`` of shape ``[N, K]`` with K = len(columns)."""
    g = graph.model.graph
    where = f"family {family.name!r} (converter {graph.converter!r})"
    if [i.name for i in g.input] != [INPUT_NAME] or [o.name for o in g.output] != [OUTPUT_NAME]:
        raise ConversionError(
            f"{where}: graph must have exactly input {INPUT_NAME!r} and output "
            f"{OUTPUT_NAME!r}, has inputs {[i.name for i in g.input]} and outputs "
            f"{[o.name for o in g.output]}"
        )
    expected_in = [n_features] if family.input_rank == 2 else [seq_len, n_features]
    inp, out = g.input[0], g.output[0]
    if (
        inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT
        or _dims(inp)[1:] != expected_in
        or len(_dims(inp)) != family.input_rank
    ):
        raise ConversionError(
            f"{where}: input must be float32 [N, {', '.join(map(str, expected_in))}], "
            f"is {onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type)} {_dims(inp)}"
        )
    if (
        out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT
        or _dims(out)[1:] != [len(graph.columns)]
        or len(_dims(out)) != 2
    ):
        raise ConversionError(
            f"{where}: output must be float32 [N, {len(graph.columns)}], is "
            f"{onnx.TensorProto.DataType.Name(out.type.tensor_type.elem_type)} {_dims(out)}"
        )


__all__ = [
    "ALLOWED_DOMAINS",
    "ALLOWED_OPS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ConvertedGraph",
    "check_contract",
    "check_graph",
    "convert",
    "converter_for",
    "iter_graphs",
    "register",
    "registered",
    "type_names",
]
