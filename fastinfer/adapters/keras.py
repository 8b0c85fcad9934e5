"""Keras 3 models (MLP, CNN1D, LSTM, Transformer, tab_*): ``model.keras`` and ``model.h5``.

Files are opened from their verified bytes: Keras reads only paths, so the bytes are written to
a private temporary folder (mode 0700) and loaded from there, never from the run by path (a
file swapped after it was hashed is never what is loaded). ``.keras`` loads with
``safe_mode=True`` (no lambda layers, no arbitrary code) and ``compile=False``.

Graphs: ``tf2onnx.convert.from_keras`` with an explicit input signature at opset 17 (NOTES.md).
tf2onnx only *logs* ops it cannot convert and leaves them in the graph, so every graph is loaded
in ONNX Runtime before it is returned; exact GELU's ``Erfc`` is rewritten as ``1 - Erf``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..converters.graph import OPSETS, conform, drop_zero_initial_states, finish, replace_erfc
from ..errors import ConversionError
from .base import KERAS, KERAS_H5, Adapter, FileFormat, Trained

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family


def _load_from_private_copy(data: bytes, suffix: str, safe_mode: bool) -> Any:
    import keras

    folder = tempfile.mkdtemp(prefix="fastinfer-keras-")  # mode 0700: only this user reads the copy
    try:
        path = Path(folder) / f"model{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        kwargs = {"safe_mode": True} if safe_mode else {}
        return keras.models.load_model(str(path), compile=False, **kwargs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


KERAS_FILE = FileFormat(KERAS, lambda data: _load_from_private_copy(data, ".keras", safe_mode=True))
H5_FILE = FileFormat(KERAS_H5, lambda data: _load_from_private_copy(data, ".h5", safe_mode=False))


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


def keras_graph(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
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
    return finish(model, columns, KERAS_ADAPTER.converter, KERAS_ADAPTER.libraries)


def _keras_body(name: str, size):
    """The layers after the input for each Keras family (small, convertible with tf2onnx)."""
    import keras
    from keras import layers

    h = size.hidden

    def attention(x):
        a = layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
        return layers.LayerNormalization()(layers.Add()([x, a]))

    def build(x):
        if name == "mlp":
            x = layers.Dense(h, activation="relu")(x)
            return layers.Dense(h // 2, activation="relu")(x)
        if name in ("cnn1d", "tab_cnn"):
            x = layers.Conv1D(h, 3, padding="causal", activation="relu")(x)
            return layers.GlobalAveragePooling1D()(x)
        if name in ("lstm", "tab_lstm"):
            return layers.LSTM(h)(x)
        if name in ("transformer", "tab_transformer"):
            x = layers.Dense(h)(x)
            return layers.GlobalAveragePooling1D()(attention(x))
        if name == "cnn1d_transformer":
            x = layers.Conv1D(h, 3, padding="causal", activation="relu")(x)
            return layers.GlobalAveragePooling1D()(attention(x))
        raise ValueError(f"no Keras architecture for {name}")

    return keras, build


class KerasAdapter(Adapter):
    name = "keras"
    accepts = ("keras.Model",)
    formats = (KERAS_FILE, H5_FILE)
    # Keras runs float32 on both sides; kernels differ (fused LSTM, MHA softmax, GEMM
    # blocking), observed <= 1e-6 relative; 1e-4 leaves room for deeper nets.
    tolerance = 1e-4
    libraries = ("tf2onnx", "tensorflow", "keras")

    def handles(self, obj: Any) -> bool:
        if "keras" not in sys.modules:  # no Keras model can exist before keras is imported
            return False
        import keras

        return isinstance(obj, keras.Model)

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        # __call__ rather than model.predict: same weights and kernels without the
        # per-call tf.data pipeline (~100 ms), which Keras recommends for small batches.
        out = np.asarray(model(X.astype(np.float32, copy=False), training=False), dtype=np.float64)
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out

    def library_predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(X.astype(np.float32), verbose=0), dtype=np.float64)

    def feature_names(self, model: Any) -> list[str] | None:
        return None

    def output_columns(self, model: Any) -> tuple[str, ...]:
        shape = tuple(model.outputs[0].shape) if len(model.outputs) == 1 else ()
        k = int(shape[1]) if len(shape) == 2 and shape[1] is not None else 1
        return ("prediction",) if k == 1 else tuple(f"prediction{i}" for i in range(k))

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        if family is None:
            raise ConversionError("a Keras model converts only as a family of its own (its input rank)")
        return keras_graph(model, family, n_features, seq_len)

    def train(self, family: Family, X: Any, y: np.ndarray, size, seed: int) -> Trained:
        keras, build = _keras_body(family.name, size)
        keras.utils.set_random_seed(seed)
        data = np.asarray(X, dtype=np.float32)
        inputs = keras.Input(shape=data.shape[1:], name="features")
        # Market features span ~1e-3 (returns) to ~1e3 (price bands): standardise inside the
        # model, so the converted graph carries the scaling and serving needs no extra step.
        scale = keras.layers.Normalization(axis=-1, name="standardize")
        scale.adapt(data)
        # Likewise the target: fit on standardised y, and map the output back to y's units.
        target = np.asarray(y, dtype=np.float64)
        y_mean, y_std = float(target.mean()), float(target.std()) or 1.0
        standardised = keras.layers.Dense(1)(build(scale(inputs)))
        core = keras.Model(inputs, standardised)
        core.compile(optimizer="adam", loss="mse")
        core.fit(data, ((target - y_mean) / y_std).astype(np.float32), epochs=size.epochs, batch_size=64, verbose=0)
        unscale = keras.layers.Rescaling(scale=y_std, offset=y_mean, name="to_target_units")
        model = keras.Model(inputs, unscale(standardised), name=family.name)  # shares core's trained layers
        return KERAS, lambda p: model.save(str(p))


KERAS_ADAPTER = KerasAdapter()
