"""Keras 3 models (MLP, CNN1D, LSTM, Transformer, tab_*), through tf2onnx.

``tf2onnx.convert.from_keras`` with an explicit input signature at opset 17 (NOTES.md).
tf2onnx only *logs* ops it cannot convert and leaves them in the graph, so every graph is
loaded in ONNX Runtime before it is returned; exact GELU's ``Erfc`` is rewritten as
``1 - Erf`` first.
"""

from __future__ import annotations

from typing import Any

import onnx

from ..errors import ConversionError
from ..families import Family
from . import ConvertedGraph, register
from .graph import OPSETS, conform, drop_zero_initial_states, finish, replace_erfc


def _io_shapes(model: Any) -> tuple[tuple, tuple]:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConversionError(
            f"Keras model must have one input and one output, has {len(model.inputs)} and {len(model.outputs)}"
        )
    return tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)


def _check_input(shape: tuple, family: Family, n_features: int, seq_len: int | None) -> tuple:
    expected = (n_features,) if family.input_rank == 2 else (seq_len, n_features)
    if len(shape) != family.input_rank or any(d is not None and d != e for d, e in zip(shape[1:], expected)):
        raise ConversionError(
            f"family {family.name!r}: Keras input shape {shape} does not match (None, {', '.join(map(str, expected))})"
        )
    return (None, *expected)


def _ort_refusal(model: onnx.ModelProto) -> str | None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (InvalidGraph, NotImplemented, ...)
        return f"{type(exc).__name__}: {exc}"
    return None


@register("keras", accepts=("keras.Model",))
def convert_keras_model(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
    import tensorflow as tf
    import tf2onnx

    in_shape, out_shape = _io_shapes(native)
    signature_shape = _check_input(in_shape, family, n_features, seq_len)
    if len(out_shape) not in (1, 2) or (len(out_shape) == 2 and out_shape[1] is None):
        raise ConversionError(f"family {family.name!r}: Keras output shape {out_shape} is not (None, K)")
    k = 1 if len(out_shape) == 1 else int(out_shape[1])
    spec = tf.TensorSpec(signature_shape, tf.float32, name="features")
    model, _ = tf2onnx.convert.from_keras(native, input_signature=[spec], opset=OPSETS[""])
    replace_erfc(model)
    drop_zero_initial_states(model)
    refusal = _ort_refusal(model)
    if refusal is not None:
        ops = sorted({n.op_type for n in model.graph.node})
        raise ConversionError(
            f"family {family.name!r}: ONNX Runtime refuses the tf2onnx graph ({refusal}); ops used: {', '.join(ops)}"
        )
    model = conform(model, n_features, k, seq_len=seq_len if family.input_rank == 3 else None)
    columns = ("prediction",) if k == 1 else tuple(f"prediction{i}" for i in range(k))
    return finish(model, columns, "keras", ("tf2onnx", "tensorflow", "keras"))
