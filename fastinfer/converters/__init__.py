"""Native model ─► ONNX graph: the contract every converted graph keeps, and the checks.

Every converted graph keeps one contract, so that graphs can later be fused by
concatenating their outputs:

* one input ``features``, float32, ``[N, F]`` (tabular) or ``[N, T, F]`` (sequential);
* one output ``prediction``, float32, ``[N, K]``: K = 1 for point models, 2 for
  NGBoost ``[loc, scale]``, Q for quantile models (artifact order).

Each model library's adapter (``fastinfer.adapters``) builds its graphs; ``convert`` is the one
entry point: it takes the family's adapter, checks that the adapter takes the object (a wrong
object gets an error listing what is supported instead of a traceback from deep inside a
converter library), names the family in every failure, and checks the contract.

Adapters import their converter libraries (skl2onnx ~3 s, tf2onnx + TensorFlow ~7 s) only
inside their converter functions: importing this package costs the ``onnx`` import only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx

from ..errors import ConversionError
from .checks import ALLOWED_DOMAINS, ALLOWED_OPS, check_graph, iter_graphs

if TYPE_CHECKING:
    from ..families import Family

INPUT_NAME = "features"
OUTPUT_NAME = "prediction"


@dataclass
class ConvertedGraph:
    """An ONNX graph under the contract above, with what is needed to record it in a lock."""

    model: onnx.ModelProto
    columns: tuple[str, ...]  # names of the K output columns, in order
    converter: str  # the adapter that produced it
    opsets: dict[str, int] = field(default_factory=dict)  # domain ("" = ai.onnx) -> version
    versions: dict[str, str] = field(default_factory=dict)  # library -> version used to convert

    input_name = INPUT_NAME
    output_name = OUTPUT_NAME

    @property
    def n_outputs(self) -> int:
        return len(self.columns)


def convert(native: Any, family: Family | str, n_features: int, seq_len: int | None = None) -> ConvertedGraph:
    """Convert a loaded native model of ``family`` to a contract-conforming, checked ONNX graph.

    Raises ``ConversionError`` naming the family (and the supported native types) when the
    family's adapter does not take the object or has no converter, or the conversion fails.
    """
    from ..adapters import supported_text
    from ..families import resolve

    family = resolve(family)
    adapter = family.adapter
    if not adapter.handles(native):
        raise ConversionError(
            f"family {family.name!r}: adapter {adapter.name!r} cannot convert a "
            f"{type(native).__module__}.{type(native).__qualname__}; it takes {', '.join(adapter.accepts)} "
            f"(supported: {supported_text()})"
        )
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        raise ConversionError(f"family {family.name!r}: n_features must be a positive int, got {n_features!r}")
    if family.input_rank == 3 and (not isinstance(seq_len, int) or seq_len < 1):
        raise ConversionError(f"family {family.name!r} is sequential: seq_len must be a positive int, got {seq_len!r}")
    try:
        graph = adapter.convert(native, family, n_features, seq_len if family.input_rank == 3 else None)
    except ConversionError as exc:
        if f"family {family.name!r}" in str(exc):
            raise
        raise ConversionError(f"family {family.name!r}: {exc}") from exc
    except Exception as exc:  # a converter library failing deep inside: name the family
        raise ConversionError(
            f"family {family.name!r}: converter {adapter.converter!r} failed on "
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
    "iter_graphs",
]
