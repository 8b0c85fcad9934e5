"""Keras 3 conversion: Sequential and functional models, saved to ``.keras`` and ``.h5``, reloaded
through fastinfer's loader path (``KERAS_FILE.load`` / ``H5_FILE.load`` on the file's bytes),
converted, and checked against the reloaded model's own ``model(x)`` on the parity gate's probes
and on fresh rows.

Models are tiny and trained for one epoch on 48 rows, once per session (TensorFlow and tf2onnx
are imported by the fixtures only).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fastinfer import families as fam
from fastinfer.adapters.keras import H5_FILE, KERAS_ADAPTER, KERAS_FILE, SEQUENTIAL_FAMILIES
from fastinfer.converters import check_graph, convert
from fastinfer.converters.parity import check_parity, probe_rows
from fastinfer.errors import ConversionError, ModelLoadError
from fastinfer.testing import TrainSize
from tests._hardening import hostile

N_FEATURES = 4
SEQ_LEN = 6
N_ROWS = 48
SCALES = np.array([0.01, 1.0, 50.0, 1e3], dtype=np.float32)  # returns, z-scores, RSI, volume


def _standardize(layers, data):
    norm = layers.Normalization(axis=-1)
    norm.adapt(data)
    return norm


def _sequential_mlp(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            _standardize(layers, data),
            layers.Dense(8, activation="gelu"),  # exact GELU: tf2onnx emits Erfc
            layers.Dropout(0.2),
            layers.BatchNormalization(),
            layers.Dense(4, activation="relu"),
            layers.Dense(1),
        ]
    )


def _functional_mlp(keras, layers, data):
    inp = keras.Input((N_FEATURES,))
    h = layers.Dense(8, activation="gelu")(_standardize(layers, data)(inp))
    h = layers.BatchNormalization()(layers.Dropout(0.2)(h))
    h = layers.Concatenate()([h, layers.Dense(4, activation="relu")(h)])
    return keras.Model(inp, layers.Dense(1)(h))


def _sequential_lstm(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((SEQ_LEN, N_FEATURES)),
            _standardize(layers, data),
            layers.LSTM(8, return_sequences=True),
            layers.Dropout(0.2),
            layers.LSTM(4),
            layers.Dense(1),
        ]
    )


def _functional_lstm(keras, layers, data):
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    h = layers.LSTM(8)(_standardize(layers, data)(inp))
    return keras.Model(inp, layers.Dense(1)(layers.BatchNormalization()(h)))


def _sequential_gru(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((None, N_FEATURES)),  # any length: traced at the run's sequence length
            _standardize(layers, data),
            layers.GRU(8, return_sequences=True),
            layers.GRU(4),
            layers.Dense(1),
        ]
    )


def _functional_gru(keras, layers, data):
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    h = layers.GRU(8, reset_after=False)(_standardize(layers, data)(inp))  # the reset-before cell variant
    return keras.Model(inp, layers.Dense(1)(layers.Dropout(0.2)(h)))


def _sequential_simple_rnn(keras, layers, data):
    return keras.Sequential(
        [keras.Input((SEQ_LEN, N_FEATURES)), _standardize(layers, data), layers.SimpleRNN(8), layers.Dense(1)]
    )


def _sequential_bidirectional_gru(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((SEQ_LEN, N_FEATURES)),
            _standardize(layers, data),
            layers.Bidirectional(layers.GRU(6)),
            layers.Dense(1),
        ]
    )


def _functional_bidirectional_lstm(keras, layers, data):
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    h = layers.Bidirectional(layers.LSTM(6, return_sequences=True), merge_mode="sum")(_standardize(layers, data)(inp))
    return keras.Model(inp, layers.Dense(1)(layers.GlobalAveragePooling1D()(h)))


def _sequential_backwards_lstm(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((SEQ_LEN, N_FEATURES)),
            _standardize(layers, data),
            layers.LSTM(6, go_backwards=True),
            layers.Dense(1),
        ]
    )


def _sequential_average_pooling_cnn(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((SEQ_LEN, N_FEATURES)),
            _standardize(layers, data),
            layers.Conv1D(6, 2, activation="relu6"),
            layers.AveragePooling1D(2),
            layers.UpSampling1D(2),
            layers.GlobalMaxPooling1D(),
            layers.Dense(1),
        ]
    )


def _sequential_activations_mlp(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            _standardize(layers, data),
            layers.Dense(8, activation="hard_sigmoid"),
            layers.Dense(8, activation="hard_silu"),
            layers.UnitNormalization(),
            layers.Dense(8, activation="softsign"),
            layers.Dense(8, activation="mish"),
            layers.Dense(1),
        ]
    )


def _sequential_masked_lstm(keras, layers, data):
    """Steps of all zeros (a symbol's history padded in front) are skipped by the LSTM."""
    return keras.Sequential([keras.Input((SEQ_LEN, N_FEATURES)), layers.Masking(0.0), layers.LSTM(6), layers.Dense(1)])


def _functional_masked_bidirectional_gru(keras, layers, data):
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    h = layers.Bidirectional(layers.GRU(4))(layers.Masking(0.0)(inp))
    return keras.Model(inp, layers.Dense(1)(h))


def _functional_around_sequential(keras, layers, data):
    block = keras.Sequential([keras.Input((SEQ_LEN, N_FEATURES)), layers.GRU(6, return_sequences=True)], name="block")
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    return keras.Model(inp, layers.Dense(1)(layers.LSTM(4)(block(_standardize(layers, data)(inp)))))


def _sequential_cnn(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((SEQ_LEN, N_FEATURES)),
            _standardize(layers, data),
            layers.Conv1D(8, 3, padding="causal", activation="relu"),
            layers.BatchNormalization(),
            layers.Conv1D(8, 3, padding="same"),
            layers.GlobalAveragePooling1D(),
            layers.Dense(1),
        ]
    )


def _sequential_pooling_cnn(keras, layers, data):
    return keras.Sequential(
        [
            keras.Input((SEQ_LEN, N_FEATURES)),
            _standardize(layers, data),
            layers.Conv1D(8, 3, padding="same", activation="relu"),
            layers.MaxPooling1D(2),
            layers.LeakyReLU(),
            layers.Conv1D(8, 2, activation="elu"),
            layers.GlobalMaxPooling1D(),
            layers.Dense(8, activation="selu"),
            layers.Dense(4, activation="softplus"),
            layers.Dense(1),
        ]
    )


def _functional_cnn(keras, layers, data):
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    h = layers.Conv1D(8, 3, activation="relu")(_standardize(layers, data)(inp))
    return keras.Model(inp, layers.Dense(1)(layers.GlobalAveragePooling1D()(layers.Dropout(0.2)(h))))


def _functional_mha(keras, layers, data):
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    h = layers.Dense(8)(_standardize(layers, data)(inp))
    a = layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.1)(h, h)
    h = layers.LayerNormalization()(layers.Add()([h, a]))
    h = layers.Dense(8, activation="gelu")(h)
    return keras.Model(inp, layers.Dense(1)(layers.GlobalAveragePooling1D()(h)))


def _functional_attention(keras, layers, data):
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    h = layers.Dense(8)(_standardize(layers, data)(inp))
    h = layers.Add()([h, layers.Attention()([h, h])])
    return keras.Model(inp, layers.Dense(1)(layers.GlobalAveragePooling1D()(h)))


def _functional_cnn_transformer(keras, layers, data):
    inp = keras.Input((SEQ_LEN, N_FEATURES))
    h = layers.Conv1D(8, 3, padding="causal", activation="relu")(_standardize(layers, data)(inp))
    h = layers.LayerNormalization()(h + layers.MultiHeadAttention(num_heads=2, key_dim=4)(h, h))  # operator +
    return keras.Model(inp, layers.Dense(1)(layers.GlobalAveragePooling1D()(h)))


# case -> (family, builder). Attention needs two inputs to one layer, so it has no Sequential form.
CASES = {
    "sequential_mlp": ("mlp", _sequential_mlp),
    "functional_mlp": ("mlp", _functional_mlp),
    "sequential_lstm": ("lstm", _sequential_lstm),
    "functional_lstm": ("tab_lstm", _functional_lstm),
    "sequential_gru": ("lstm", _sequential_gru),
    "functional_gru": ("tab_lstm", _functional_gru),
    "sequential_simple_rnn": ("lstm", _sequential_simple_rnn),
    "sequential_bidirectional_gru": ("lstm", _sequential_bidirectional_gru),
    "functional_bidirectional_lstm": ("tab_lstm", _functional_bidirectional_lstm),
    "sequential_backwards_lstm": ("lstm", _sequential_backwards_lstm),
    "sequential_masked_lstm": ("lstm", _sequential_masked_lstm),
    "functional_masked_bidirectional_gru": ("tab_lstm", _functional_masked_bidirectional_gru),
    "functional_around_sequential": ("tab_lstm", _functional_around_sequential),
    "sequential_cnn": ("cnn1d", _sequential_cnn),
    "sequential_average_pooling_cnn": ("cnn1d", _sequential_average_pooling_cnn),
    "sequential_activations_mlp": ("mlp", _sequential_activations_mlp),
    "functional_cnn": ("tab_cnn", _functional_cnn),
    "sequential_pooling_cnn": ("tab_cnn", _sequential_pooling_cnn),
    "functional_mha": ("transformer", _functional_mha),
    "functional_attention": ("tab_transformer", _functional_attention),
    "functional_cnn_transformer": ("cnn1d_transformer", _functional_cnn_transformer),
}
# Keras 3 saves these to .h5 but cannot rebuild them from it: keras.layers.Attention, `h + a`
# between Keras tensors (saved as an Add layer, which takes a list), and Masking in a functional model.
H5_UNREADABLE = {"functional_attention", "functional_cnn_transformer", "functional_masked_bidirectional_gru"}
FORMATS = {"keras": KERAS_FILE, "h5": H5_FILE}
CONVERTIBLE = [(case, "keras") for case in CASES] + [(case, "h5") for case in CASES if case not in H5_UNREADABLE]


def _rows(rng: np.random.Generator, n: int, family: fam.Family) -> np.ndarray:
    shape = (n, N_FEATURES) if family.input_rank == 2 else (n, SEQ_LEN, N_FEATURES)
    return (rng.normal(size=shape) * SCALES).astype(np.float32)


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """case -> (in-memory model, {format: file bytes}), every model trained one epoch on N_ROWS rows."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("keras_models")
    out = {}
    for case, (family_name, build) in CASES.items():
        family = fam.resolve(family_name)
        rng = np.random.default_rng(len(out))
        X = _rows(rng, N_ROWS, family)
        flat = X if family.input_rank == 2 else X[:, -1, :]
        y = (flat[:, 0] / SCALES[0] + np.tanh(flat[:, 1]) - flat[:, 2] / SCALES[2]).astype(np.float32)
        model = build(keras, layers, X)
        model.compile(optimizer="adam", loss="mse")
        model.fit(X, y, epochs=1, batch_size=16, verbose=0)
        files = {}
        for fmt in FORMATS:
            path = folder / f"{case}.{fmt}"
            model.save(str(path))
            files[fmt] = path.read_bytes()
        out[case] = (model, files)
    return out


@pytest.fixture(scope="session")
def loaded(saved):
    cache = {}

    def get(case: str, fmt: str):
        if (case, fmt) not in cache:
            cache[case, fmt] = FORMATS[fmt].load(saved[case][1][fmt])
        return cache[case, fmt]

    return get


@pytest.fixture(scope="session")
def converted(loaded):
    cache = {}

    def get(case: str, fmt: str):
        if (case, fmt) not in cache:
            family = fam.resolve(CASES[case][0])
            model = loaded(case, fmt)
            cache[case, fmt] = (model, convert(model, family, N_FEATURES, SEQ_LEN if family.sequential else None))
        return cache[case, fmt]

    return get


def _ops(graph) -> set[str]:
    return {n.op_type for n in graph.model.graph.node}


@pytest.mark.parametrize("case,fmt", CONVERTIBLE)
def test_graph_matches_the_reloaded_model_on_probes_and_fresh_rows(case, fmt, saved, converted):
    family = fam.resolve(CASES[case][0])
    model, graph = converted(case, fmt)
    check_graph(graph.model)
    fresh = _rows(np.random.default_rng(100), 64, family)
    # The reloaded file is the model that was saved (both formats store float32 weights exactly).
    np.testing.assert_array_equal(KERAS_ADAPTER.predict(model, fresh), KERAS_ADAPTER.predict(saved[case][0], fresh))
    seq = SEQ_LEN if family.sequential else None
    probes = probe_rows(family, N_FEATURES, rng_seed=0, seq_len=seq, feature_scale=SCALES)
    on_probes = check_parity(model, graph, probes, family)
    assert on_probes.passed, on_probes.reason
    on_fresh = check_parity(model, graph, fresh, family)
    assert on_fresh.passed, on_fresh.reason
    print(
        f"\nKERAS PARITY {case} .{fmt} ({family.name}): tol={on_fresh.tolerance:g} "
        f"probes(n={on_probes.n_rows}) max_rel={on_probes.max_rel:.3g}; "
        f"fresh(n={on_fresh.n_rows}) max_rel={on_fresh.max_rel:.3g}; ops={','.join(sorted(_ops(graph)))}"
    )


@pytest.mark.parametrize("case", ["sequential_lstm", "functional_lstm", "functional_bidirectional_lstm"])
def test_lstm_layers_become_onnx_lstm_nodes(case, converted):
    """tf2onnx fuses Keras 3's LSTM into ONNX's LSTM op (one node per layer, a Bidirectional
    wrapper's two directions in one; zero states left out)."""
    model, graph = converted(case, "keras")
    n_lstm = sum(1 for layer in model.layers if type(layer).__name__ in ("LSTM", "Bidirectional"))
    nodes = [n for n in graph.model.graph.node if n.op_type == "LSTM"]
    assert len(nodes) == n_lstm >= 1
    assert all(len(n.input) <= 5 or not any(n.input[5:]) for n in nodes)


UNROLLED = ["sequential_gru", "functional_gru", "sequential_simple_rnn", "sequential_bidirectional_gru"]


@pytest.mark.parametrize("case", [*UNROLLED, "sequential_backwards_lstm"])
def test_gru_and_simple_rnn_layers_are_unrolled_on_a_copy_and_the_model_is_left_as_it_was(case, loaded, converted):
    """tf2onnx cannot fuse Keras 3's GRU / SimpleRNN (it would leave a Loop; a Bidirectional GRU
    too) nor an LSTM that reads backwards (a run-time Expand): traced unrolled instead."""
    model = loaded(case, "keras")
    before = KERAS_ADAPTER.predict(model, _rows(np.random.default_rng(5), 8, fam.resolve("lstm")))
    _, graph = converted(case, "keras")
    assert not {"Loop", "Scan", "Expand", "GRU", "LSTM"} & _ops(graph)  # steps as plain ops, states as constants
    recurrent = []
    for layer in model.layers:
        recurrent += [layer.forward_layer, layer.backward_layer] if hasattr(layer, "forward_layer") else [layer]
    recurrent = [layer for layer in recurrent if type(layer).__name__ in ("GRU", "SimpleRNN", "LSTM")]
    assert recurrent and not any(layer.unroll for layer in recurrent)
    after = KERAS_ADAPTER.predict(model, _rows(np.random.default_rng(5), 8, fam.resolve("lstm")))
    np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("case", ["sequential_masked_lstm", "functional_masked_bidirectional_gru"])
def test_masked_steps_are_skipped_as_keras_skips_them(case, converted):
    """Masking(0.0): rows padded with zero steps in front, in the middle, or all zeros give Keras's
    outputs (the recurrent layers are unrolled, each step keeping the state where the mask is off)."""
    model, graph = converted(case, "keras")
    assert not {"Loop", "Scan", "Expand", "ConstantOfShape"} & _ops(graph)
    rows = _rows(np.random.default_rng(7), 16, fam.resolve("lstm"))
    rows[:4, :3] = 0.0  # history padded in front
    rows[4:8, 2:4] = 0.0  # a gap
    rows[8] = 0.0  # nothing at all
    session = ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: rows})[0].ravel()
    want = KERAS_ADAPTER.predict(model, rows).ravel()
    # float32 recurrences over 6 steps: 1e-5 of the output scale (the parity gate's order of error)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("case", sorted(H5_UNREADABLE))
def test_h5_file_keras_cannot_rebuild_is_refused_naming_the_fix(case, saved, tmp_path):
    import keras

    path = tmp_path / "model.h5"
    path.write_bytes(saved[case][1]["h5"])
    with pytest.raises((TypeError, ValueError)):  # control: Keras itself fails to rebuild the file it saved
        keras.models.load_model(str(path), compile=False)
    with pytest.raises(ModelLoadError, match=r"cannot rebuild this model from \.h5.*save it as \.keras"):
        H5_FILE.load(path.read_bytes())


@pytest.mark.parametrize(
    "case,family,n_features,seq_len,message",
    [
        ("sequential_mlp", "lstm", N_FEATURES, SEQ_LEN, r"'lstm' takes \(N, T, F\) = \(None, 6, 4\).*\(None, 4\)"),
        ("functional_mha", "mlp", N_FEATURES, None, r"'mlp' takes \(N, F\) = \(None, 4\).*\(None, 6, 4\)"),
        ("sequential_lstm", "tab_lstm", N_FEATURES, SEQ_LEN + 1, r"\(None, 7, 4\).*\(None, 6, 4\)"),
        ("functional_mlp", "mlp", N_FEATURES + 1, None, r"\(None, 5\).*\(None, 4\)"),
    ],
)
def test_input_shape_that_disagrees_with_the_family_is_a_conversion_error_naming_both(
    case, family, n_features, seq_len, message, loaded
):
    hostile("keras conversion", f"{case} converted as {family} with F={n_features}, T={seq_len}")
    with pytest.raises(ConversionError, match=message):
        convert(loaded(case, "keras"), family, n_features, seq_len)


def test_model_without_a_defined_input_is_a_conversion_error():
    import keras

    hostile("keras conversion", "Sequential model never built on an input")
    with pytest.raises(ConversionError, match="no defined input.*keras.Input"):
        convert(keras.Sequential([keras.layers.Dense(1)]), "mlp", N_FEATURES)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_python_lambda_layers_are_refused_by_safe_mode_in_both_formats(fmt, tmp_path):
    import keras

    hostile("keras file", f"python lambda layer in .{fmt}")
    inp = keras.Input((N_FEATURES,))
    model = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2.0)(inp))
    path = tmp_path / f"lambda.{fmt}"
    model.save(str(path))
    with pytest.raises(ValueError, match="Lambda"):
        FORMATS[fmt].load(path.read_bytes())


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The test writer's trainer, one model per kind: family -> (y, file bytes)."""
    folder = tmp_path_factory.mktemp("keras_trainer")
    size = TrainSize(epochs=1, hidden=8)
    out = {}
    for name in ("mlp", "lstm", "tab_lstm", "cnn1d"):
        family = fam.resolve(name)
        rng = np.random.default_rng(7)
        X = _rows(rng, N_ROWS, family)
        y = 100.0 + 5.0 * (X if family.input_rank == 2 else X[:, -1, :])[:, 1] + rng.normal(size=N_ROWS)
        file_name, save = KERAS_ADAPTER.train(family, X, y, size, seed=0)
        assert file_name == "model.keras"
        save(folder / f"{name}.keras")
        out[name] = (y, (folder / f"{name}.keras").read_bytes())
    return out


@pytest.mark.parametrize("name", ["mlp", "lstm", "tab_lstm", "cnn1d"])
def test_trainer_writes_sequential_and_functional_models_that_convert(name, trained):
    import keras

    family = fam.resolve(name)
    y, data = trained[name]
    model = KERAS_FILE.load(data)
    assert isinstance(model, keras.Sequential) == (name in SEQUENTIAL_FAMILIES)
    # Inputs standardised inside the model, output mapped back to y's units.
    standardize, to_target = model.get_layer("standardize"), model.get_layer("to_target_units")
    assert type(standardize).__name__ == "Normalization" and model.layers[-1] is to_target
    np.testing.assert_allclose(to_target.get_config()["offset"], y.mean(), rtol=1e-6)
    np.testing.assert_allclose(to_target.get_config()["scale"], y.std(), rtol=1e-6)
    graph = convert(model, family, N_FEATURES, SEQ_LEN if family.sequential else None)
    probes = probe_rows(family, N_FEATURES, rng_seed=1, seq_len=SEQ_LEN if family.sequential else None)
    report = check_parity(model, graph, probes, family)
    assert report.passed, report.reason


def test_a_keras2_archive_is_rewritten_without_unpacking_it_in_memory(tmp_path):
    """A Keras 2 .keras file gets its config rewritten for Keras 3 on a private copy: the other
    entries are streamed across, so an entry that unpacks to 256 MiB (1 MB on disk) costs no memory."""
    import tracemalloc
    import zipfile

    from fastinfer.adapters.keras import _as_keras3

    hostile("Keras file", "Keras 2 .keras archive padded with an entry of 256 MiB of zeros")
    source = Path(__file__).parent / "data" / "models" / "public2" / "tfkeras215_mlp_sequential_keras2format.keras"
    path = tmp_path / "model.keras"
    shutil.copyfile(source, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z, z.open("pad", "w") as pad:
        for _ in range(256):
            pad.write(bytes(1 << 20))
    tracemalloc.start()
    try:
        _as_keras3(path, ".keras")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("pad").file_size == 256 << 20
        assert '"time_major"' not in z.read("config.json").decode()
    KERAS_FILE.load(path.read_bytes())  # Keras 3 opens the rewritten archive
