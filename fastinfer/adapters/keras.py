"""Keras 3 models (MLP, CNN1D, LSTM, GRU, Transformer, tab_*): ``model.keras`` and ``model.h5``.

Files are opened from their verified bytes: Keras reads only paths, so the bytes are written to
a private temporary folder (mode 0700) and loaded from there, never from the run by path (a
file swapped after it was hashed is never what is loaded). Both formats load with
``safe_mode=True`` (no lambda layers, no arbitrary code) and ``compile=False``.

Graphs: the model's own call, ``model(x, training=False)``, traced by TensorFlow with an
explicit input signature, frozen, and converted by ``tf2onnx.convert.from_graph_def`` at opset
17. Not ``tf2onnx.convert.from_keras``: it looks the model's outputs up by Keras's output names,
which under Keras 3 are not the traced function's for ``keras.Sequential`` models
(``KeyError: 'keras_tensor_N'``, onnx/tensorflow-onnx#2448); a traced call has one input and
its own outputs whatever way the model was built or saved.

Recurrent layers: tf2onnx fuses a Keras 3 LSTM (and a Bidirectional one) into an ONNX ``LSTM``
node, but a Keras 3 GRU (tf2onnx's GRU patterns match Keras 2's cell) or SimpleRNN stays a ``Loop``
(control flow, refused by ``check_graph``), and an LSTM with ``go_backwards`` keeps a run-time
``Expand``. Those are traced unrolled instead (both directions of a Bidirectional wrapper), on a
copy of the model (the time steps as plain ops: the same math, one set of nodes per step; ~360
nodes for a GRU over 20 steps, ~0.1 ms a row in ONNX Runtime against ~0.01 ms for a fused LSTM). Recurrent
layers start from zero states that tf2onnx builds from the batch size at run time; they are
left out (ONNX's default) or made constants that broadcast over the batch.

tf2onnx only *logs* ops it cannot convert and leaves them in the graph, so every graph is loaded
and run once in ONNX Runtime before it is returned; exact GELU's ``Erfc`` is rewritten as
``1 - Erf``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..converters import INPUT_NAME
from ..converters.graph import OPSETS, conform, drop_zero_initial_states, finish, prune_dead_nodes, replace_erfc
from ..errors import ConversionError, ModelLoadError
from .base import KERAS, KERAS_H5, Adapter, FileFormat, Trained

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family

# Keras 3's .h5 reader cannot rebuild some models: a TypeError for keras.layers.Attention (its score_mode
# comes back as a function), MultiHeadAttention saved by Keras 2, arithmetic written as operators on Keras
# tensors (``x + y`` is saved as an ``Add`` layer, which takes a list) and layers of Keras before 2.3
# ("Could not locate class 'LSTM'"); a ValueError ("Unknown layer: 'NotEqual'") for the ops a functional
# model's Masking leaves in the file. Which one it was is Keras's message, quoted after this; ``.keras``
# saved by Keras 3 reloads them all.
H5_REBUILD_FAILED = "Keras 3 cannot rebuild this model from .h5: save it as .keras with Keras 3"


# Keras 2 (tf.keras 2.x) layer arguments that Keras 3's layers no longer take and that change nothing
# when dropped: RNN layers' time_major (always False in a model saved by Keras), and the input shapes
# MultiHeadAttention recorded for its lazy build. Keras 3 refuses them ("Unrecognized keyword arguments").
_KERAS2_ONLY_ARGUMENTS = {
    "LSTM": ("time_major",),
    "GRU": ("time_major",),
    "SimpleRNN": ("time_major",),
    "MultiHeadAttention": ("query_shape", "key_shape", "value_shape"),
}


def keras3_config(node: Any) -> Any:
    """A Keras 2 model config as Keras 3 builds it: the arguments above dropped from every layer (nested
    ones too: a Bidirectional's layer), and BatchNormalization's one-axis list (Keras 2's ``.keras``) an int."""
    if isinstance(node, list):
        return [keras3_config(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: keras3_config(v) for k, v in node.items()}
    config, kind = node.get("config"), node.get("class_name")
    if isinstance(config, dict) and isinstance(kind, str):
        for key in _KERAS2_ONLY_ARGUMENTS.get(kind, ()):
            config.pop(key, None)
        axis = config.get("axis")
        if kind == "BatchNormalization" and isinstance(axis, list) and len(axis) == 1:
            config["axis"] = axis[0]
    return node


_MAX_KERAS_JSON = 16 << 20  # a model's config.json / metadata.json: KBs, a few MB for huge models


def _keras_version(data: bytes, suffix: str) -> str:
    """The Keras version that saved the file ("" when it does not say)."""
    import h5py

    try:
        if suffix == ".h5":
            with h5py.File(io.BytesIO(data), "r") as f:
                version = f.attrs.get("keras_version", "")
                return version.decode() if isinstance(version, bytes) else str(version)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if z.getinfo("metadata.json").file_size > _MAX_KERAS_JSON:
                return ""
            metadata = json.loads(z.read("metadata.json"))
            return str(metadata.get("keras_version", "")) if isinstance(metadata, dict) else ""
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ""  # Keras's own reader then says what is wrong with the file


def _as_keras3(path: Path, suffix: str) -> None:
    """Rewrite the private copy of a Keras 2 file's model config with `keras3_config` (weights untouched)."""
    import h5py

    if suffix == ".h5":
        with h5py.File(path, "r+") as f:
            if "model_config" in f.attrs:
                raw = f.attrs["model_config"]
                config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
                f.attrs["model_config"] = json.dumps(keras3_config(config))
        return
    # Entries are streamed across with their own compression: nothing is held whole in memory but
    # config.json, whose declared size is bounded first (ZipFile reads no further than it).
    rewritten = path.with_name("keras3" + suffix)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rewritten, "w") as dst:
        config = src.getinfo("config.json")
        if config.file_size > _MAX_KERAS_JSON:
            raise ModelLoadError(
                None, None, f"config.json unpacks to {config.file_size} bytes (limit {_MAX_KERAS_JSON})"
            )
        for info in src.infolist():
            if info.filename == "config.json":
                dst.writestr(info, json.dumps(keras3_config(json.loads(src.read(info)))))
                continue
            with src.open(info) as r, dst.open(info, "w") as w:
                shutil.copyfileobj(r, w)
    os.replace(rewritten, path)


def _load_from_private_copy(data: bytes, suffix: str) -> Any:
    import keras

    folder = tempfile.mkdtemp(prefix="fastinfer-keras-")  # mode 0700: only this user reads the copy
    try:
        path = Path(folder) / f"model{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        version = _keras_version(data, suffix)
        if version.startswith("2."):
            _as_keras3(path, suffix)
        try:
            return keras.models.load_model(str(path), compile=False, safe_mode=True)
        except (TypeError, ValueError) as exc:
            if suffix != ".h5" or (isinstance(exc, ValueError) and "Unknown layer" not in str(exc)):
                raise
            saved_by = f" (saved by Keras {version})" if version else ""
            raise ModelLoadError(None, None, f"{H5_REBUILD_FAILED}{saved_by}; Keras said: {exc}") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


KERAS_FILE = FileFormat(KERAS, lambda data: _load_from_private_copy(data, ".keras"))
H5_FILE = FileFormat(KERAS_H5, lambda data: _load_from_private_copy(data, ".h5"))


def _io_shapes(model: Any) -> tuple[tuple, tuple]:
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError) as exc:  # a Sequential model never built has no inputs yet
        raise ConversionError(
            f"Keras model has no defined input ({exc}): build it on keras.Input(shape=...) before saving"
        ) from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConversionError(f"Keras model must have one input and one output, has {len(inputs)} and {len(outputs)}")
    return tuple(inputs[0].shape), tuple(outputs[0].shape)


def _check_input(shape: tuple, family: Family, n_features: int, seq_len: int | None) -> tuple:
    """The signature to trace: (None, F) or (None, T, F) for the family, where the model's input agrees."""
    expected = (n_features,) if family.input_rank == 2 else (seq_len, n_features)
    if len(shape) != family.input_rank or any(d is not None and d != e for d, e in zip(shape[1:], expected)):
        layout = "(N, F)" if family.input_rank == 2 else "(N, T, F)"
        raise ConversionError(
            f"family {family.name!r} takes {layout} = (None, {', '.join(map(str, expected))}); "
            f"the Keras model's input shape is {shape}"
        )
    return (None, *expected)


def _needs_unrolling(layer: Any, masked: bool) -> bool:
    """A recurrent layer tf2onnx leaves as a ``Loop`` or a run-time ``Expand``: GRU and SimpleRNN,
    an LSTM that reads the sequence backwards (``go_backwards``) or in a model with masks
    (``masked``: it steps through the mask), and a ``Bidirectional`` wrapper around one of them
    (an unmasked Bidirectional LSTM fuses into one ONNX ``LSTM``)."""
    import keras

    recurrent = (keras.layers.GRU, keras.layers.SimpleRNN, keras.layers.LSTM)
    loops = recurrent if masked else recurrent[:2]
    if isinstance(layer, keras.layers.Bidirectional):  # its backward LSTM fuses with the forward one
        return any(isinstance(d, loops) and not d.unroll for d in (layer.forward_layer, layer.backward_layer))
    if isinstance(layer, loops):
        return not layer.unroll
    return isinstance(layer, keras.layers.LSTM) and layer.go_backwards and not layer.unroll


def _all_layers(model: Any) -> list:
    """Every layer, nested models' included (a nested model itself is not listed)."""
    import keras

    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        else:
            found.append(layer)
    return found


def _recurrent_layers_to_unroll(model: Any) -> list:
    """The layers `_needs_unrolling` names, nested models included."""
    import keras

    layers = _all_layers(model)
    masked = any(isinstance(layer, keras.layers.Masking) or getattr(layer, "mask_zero", False) for layer in layers)
    return [layer for layer in layers if _needs_unrolling(layer, masked)]


def _unrolled_config(layer: Any) -> dict:
    """The layer's config with ``unroll`` set (in both directions of a Bidirectional wrapper)."""
    config = layer.get_config()
    if "layer" not in config:
        return {**config, "unroll": True}
    for key in ("layer", "backward_layer"):
        if key in config:
            config[key] = {**config[key], "config": {**config[key]["config"], "unroll": True}}
    return config


def _traceable(native: Any) -> Any:
    """The model itself, or a copy whose recurrent layers `_needs_unrolling` names run unrolled
    (same weights); every other layer is shared with the model, which is left as it is."""
    import keras

    unroll = _recurrent_layers_to_unroll(native)
    if not unroll:
        return native
    copies = []

    def clone(layer):
        if not any(layer is u for u in unroll):
            return layer
        copy = type(layer).from_config(_unrolled_config(layer))
        copies.append((layer, copy))
        return copy

    model = keras.models.clone_model(native, clone_function=clone, recursive=True)
    for layer, copy in copies:  # clone_model built the copies; the weights are the layers' own
        copy.set_weights(layer.get_weights())
    return model


def _traced_graph(native: Any, signature_shape: tuple) -> onnx.ModelProto:
    """``native(x, training=False)`` traced for one float32 input of ``signature_shape``, frozen, to ONNX."""
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import tf_loader

    model = _traceable(native)
    spec = tf.TensorSpec(signature_shape, tf.float32, name=INPUT_NAME)
    call = tf.function(lambda x: model(x, training=False), input_signature=[spec]).get_concrete_function()
    # The call's first input is the one argument; the rest are captured weights, frozen into constants.
    inputs = [call.inputs[0].name]
    outputs = [t.name for t in call.outputs]
    frozen = tf_loader.from_function(call, inputs, outputs)
    graph, _ = tf2onnx.convert.from_graph_def(frozen, input_names=inputs, output_names=outputs, opset=OPSETS[""])
    return graph


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


# Ops that broadcast a [1, ...] operand over the batch exactly as they use an [N, ...] one.
_BROADCASTING_OPS = frozenset({"MatMul", "Mul", "Add", "Sub"})


def _zeros_source(node: onnx.NodeProto, constants: dict) -> np.ndarray | None:
    """The value a run-time-sized fill repeats: ``Expand(constant, shape)`` or
    ``ConstantOfShape(shape)`` (Keras's ``zeros_like`` of a masked step); None for other nodes."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Expand" and node.input[0] in constants:
        return numpy_helper.to_array(constants[node.input[0]])
    if node.op_type == "ConstantOfShape":
        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        return numpy_helper.to_array(fill) if fill is not None else np.zeros(1, dtype=np.float32)
    return None


def broadcast_zero_states(model: onnx.ModelProto) -> int:
    """Replace ``Expand(0, [N, d1, ...])`` or ``ConstantOfShape([N, d1, ...])`` of zeros, a
    recurrent layer's zero initial state (or a masked step's ``zeros_like``) that tf2onnx sizes
    from the batch at run time, with a constant zero tensor ``[1, d1, ...]``.

    ``check_graph`` refuses an ``Expand`` whose shape is computed at run time (its output size
    is set by input values). Only states read by broadcasting arithmetic alone (``MatMul``,
    ``Mul``, ``Add``, ``Sub``: a GRU or SimpleRNN cell's first step) are replaced, where one row
    of zeros gives the same values; ``keras_graph`` then runs the graph on a batch of two to
    prove the shapes still work out. Returns the nodes replaced.
    """
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: _dims(v) for v in inferred.graph.value_info}
    constants = {t.name: t for t in model.graph.initializer}
    readers: dict[str, set[str]] = {o.name: {"graph output"} for o in model.graph.output}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    replaced = []
    for node in model.graph.node:
        value = _zeros_source(node, constants)
        if value is None:
            continue
        dims = shapes.get(node.output[0])
        # Only the batch dimension may be unknown: every other size is fixed by the signature.
        if value.any() or not dims or dims[0] is not None or any(d is None for d in dims[1:]):
            continue
        if not readers.get(node.output[0], set()) <= _BROADCASTING_OPS:
            continue
        zeros = np.zeros([1, *dims[1:]], dtype=value.dtype)
        model.graph.initializer.append(numpy_helper.from_array(zeros, node.output[0]))
        replaced.append(node)
    for node in replaced:
        model.graph.node.remove(node)
    if replaced:
        prune_dead_nodes(model)
    return len(replaced)


def _ort_refusal(model: onnx.ModelProto, signature_shape: tuple) -> str | None:
    """Why ONNX Runtime will not load the graph or run it on two rows of zeros (None when it does)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rows = np.zeros((2, *signature_shape[1:]), dtype=np.float32)
        out = session.run(None, {session.get_inputs()[0].name: rows})[0]
    except Exception as exc:  # ORT raises its own exception types (InvalidGraph, NotImplemented, ...)
        return f"{type(exc).__name__}: {exc}"
    if out.shape[:1] != (2,):
        return f"two input rows gave output shape {out.shape}"
    return None


def keras_graph(native: Any, family: Family, n_features: int, seq_len: int | None) -> ConvertedGraph:
    in_shape, out_shape = _io_shapes(native)
    signature_shape = _check_input(in_shape, family, n_features, seq_len)
    if len(out_shape) not in (1, 2) or (len(out_shape) == 2 and out_shape[1] is None):
        raise ConversionError(f"family {family.name!r}: Keras output shape {out_shape} is not (None, K)")
    k = 1 if len(out_shape) == 1 else int(out_shape[1])
    model = _traced_graph(native, signature_shape)
    replace_erfc(model)
    drop_zero_initial_states(model)
    broadcast_zero_states(model)
    refusal = _ort_refusal(model, signature_shape)
    if refusal is not None:
        ops = sorted({n.op_type for n in model.graph.node})
        raise ConversionError(
            f"family {family.name!r}: ONNX Runtime refuses the tf2onnx graph ({refusal}); ops used: {', '.join(ops)}"
        )
    model = conform(model, n_features, k, seq_len=seq_len if family.input_rank == 3 else None)
    columns = ("prediction",) if k == 1 else tuple(f"prediction{i}" for i in range(k))
    return finish(model, columns, KERAS_ADAPTER.converter, KERAS_ADAPTER.libraries)


# The test writer builds these families as keras.Sequential (how most Keras models are written)
# and the others as functional models, so that the runs it writes exercise both.
SEQUENTIAL_FAMILIES = frozenset({"mlp", "lstm"})


def _layer_chain(name: str, hidden: int) -> list | None:
    """The layers between input standardisation and the output Dense, for families that are one chain."""
    from keras import layers

    if name == "mlp":
        return [layers.Dense(hidden, activation="relu"), layers.Dense(hidden // 2, activation="relu")]
    if name in ("cnn1d", "tab_cnn"):
        return [layers.Conv1D(hidden, 3, padding="causal", activation="relu"), layers.GlobalAveragePooling1D()]
    if name in ("lstm", "tab_lstm"):
        return [layers.LSTM(hidden)]
    return None


def _functional_body(name: str, hidden: int):
    """``build(x)``: the same place in the model for every Keras family (attention needs a graph, not a chain)."""
    from keras import layers

    def attention(x):
        a = layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
        return layers.LayerNormalization()(layers.Add()([x, a]))

    def build(x):
        chain = _layer_chain(name, hidden)
        if chain is not None:
            for layer in chain:
                x = layer(x)
            return x
        if name in ("transformer", "tab_transformer"):
            return layers.GlobalAveragePooling1D()(attention(layers.Dense(hidden)(x)))
        if name == "cnn1d_transformer":
            x = layers.Conv1D(hidden, 3, padding="causal", activation="relu")(x)
            return layers.GlobalAveragePooling1D()(attention(x))
        raise ValueError(f"no Keras architecture for {name}")

    return build


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
        import keras

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
        standardised_y = ((target - y_mean) / y_std).astype(np.float32)
        unscale = keras.layers.Rescaling(scale=y_std, offset=y_mean, name="to_target_units")

        def fit(core):
            core.compile(optimizer="adam", loss="mse")
            core.fit(data, standardised_y, epochs=size.epochs, batch_size=64, verbose=0)

        if family.name in SEQUENTIAL_FAMILIES:
            model = keras.Sequential(
                [inputs, scale, *_layer_chain(family.name, size.hidden), keras.layers.Dense(1)], name=family.name
            )
            fit(model)
            model.add(unscale)  # after training: the saved model answers in y's units
        else:
            standardised = keras.layers.Dense(1)(_functional_body(family.name, size.hidden)(scale(inputs)))
            fit(keras.Model(inputs, standardised))
            model = keras.Model(inputs, unscale(standardised), name=family.name)  # shares the trained layers
        return KERAS, lambda p: model.save(str(p))


KERAS_ADAPTER = KerasAdapter()
