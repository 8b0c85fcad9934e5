"""Properties (hypothesis): no input crashes the library with anything but its own typed errors,
and no good state is changed by a bad input. Bounded and derandomized, so CI is reproducible."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastinfer import artifacts, config
from fastinfer import state as envelope
from fastinfer.buffers import KIND, VERSION, SeqBufferManager
from fastinfer.errors import FastInferError, InferenceError, ModelLoadError, StateError
from fastinfer.features import FeatureBuilder, StreamingFeatures
from fastinfer.loader import ModelLoader
from fastinfer.lock import LOCK_FILE, read_lock

from ._hardening import example
from .conftest import TARGET

BOUNDED = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _mutations(good: dict) -> st.SearchStrategy:
    """A valid document with keys replaced, removed or added: reaches the deep validation paths."""
    keys = st.sampled_from(sorted(good)) | st.text(max_size=10)
    return st.lists(st.tuples(keys, st.one_of(json_values, st.just(KeyError))), min_size=1, max_size=4)


def _apply(doc: dict, edits) -> dict:
    doc = json.loads(json.dumps(doc))
    for key, value in edits:
        if value is KeyError:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


# ---------------------------------------------------------------- parsers


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory, full_run):
    dest = tmp_path_factory.mktemp("props") / full_run.name
    shutil.copytree(full_run, dest)
    loc = next(loc for loc in artifacts.discover(dest) if loc.family.name == "ridge")
    good = json.loads((loc.path / artifacts.META_FILE).read_text())
    return dest, loc, good


@BOUNDED
@given(doc=json_values)
def test_any_json_as_meta_is_a_spec_or_a_model_load_error(meta_run, doc):
    example("meta parser: arbitrary JSON")
    root, loc, _ = meta_run
    (loc.path / artifacts.META_FILE).write_text(json.dumps(doc))
    try:
        spec = artifacts.read_spec(loc, root)
    except ModelLoadError as exc:
        assert exc.family == "ridge" and exc.target == TARGET
        return
    assert spec.feature_list  # only a well-formed meta gets here


@BOUNDED
@given(data=st.data())
def test_mutated_meta_is_a_spec_or_a_model_load_error(meta_run, data):
    example("meta parser: mutated valid meta")
    root, loc, good = meta_run
    doc = _apply(good, data.draw(_mutations(good)))
    (loc.path / artifacts.META_FILE).write_text(json.dumps(doc))
    try:
        spec = artifacts.read_spec(loc, root)
    except ModelLoadError:
        return
    assert spec.model_path.resolve().is_relative_to(root.resolve())  # never a path outside the run
    assert spec.sequence_length is None or 0 < spec.sequence_length <= 100_000


@pytest.fixture(scope="module")
def lock_run(tmp_path_factory, compiled_run):
    dest = tmp_path_factory.mktemp("props_lock") / compiled_run.name
    shutil.copytree(compiled_run, dest)
    return dest, json.loads((dest / LOCK_FILE).read_text())


@BOUNDED
@given(data=st.data())
def test_mutated_lock_is_a_lock_or_a_state_error(lock_run, data):
    example("lock parser: mutated entries")
    root, good = lock_run
    doc = json.loads(json.dumps(good))
    k = data.draw(st.integers(0, len(doc["entries"]) - 1))
    doc["entries"][k] = _apply(doc["entries"][k], data.draw(_mutations(doc["entries"][k])))
    if data.draw(st.booleans()):
        doc = _apply(doc, data.draw(_mutations(doc)))
    (root / LOCK_FILE).write_text(json.dumps(doc))
    try:
        lock = read_lock(root)
    except StateError:
        return
    for e in lock.entries:  # what passes is usable: typed fields, confined paths
        assert isinstance(e.output, dict) and isinstance(e.feature_order, list)
        assert (root / e.native_file).resolve().is_relative_to(root.resolve())


@BOUNDED
@given(raw=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_as_lock_is_a_lock_or_a_state_error(lock_run, raw):
    example("lock parser: arbitrary bytes")
    root, _ = lock_run
    (root / LOCK_FILE).write_bytes(raw)
    with contextlib.suppress(StateError):
        read_lock(root)


config_docs = st.dictionaries(
    st.sampled_from(["models", "executor", "predictor", "live_trading", "x"]),
    st.dictionaries(
        st.sampled_from(
            [
                "lazy_load",
                "seq_buffer_size",
                "seq_warmup_bars",
                "providers",
                "nan_policy",
                "interval_rel_tol",
                "verify_signature",
                "trusted_public_key",
                "family_priority",
                "forest_kernel",
                "bogus",
            ]
        ),
        json_values,
        max_size=4,
    )
    | json_values,
    max_size=3,
)


@BOUNDED
@given(doc=config_docs | json_values)
def test_any_config_is_settings_or_a_config_error(doc):
    example("config parser")
    from fastinfer.errors import ConfigError

    try:
        s = config.from_dict(doc)
    except ConfigError:
        return
    assert isinstance(s, config.Settings) and s.models.seq_warmup_bars <= s.models.seq_buffer_size


# ---------------------------------------------------------------- the feature / predict path


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, -0.0, 1e308, -1e308, 5e-324]
)


@BOUNDED
@given(bars=st.lists(st.tuples(*[st.lists(finite_or_not, min_size=3, max_size=3)] * 5), min_size=1, max_size=30))
def test_streaming_features_never_raise_and_bad_bars_change_nothing(bars):
    """Any bar: no exception; a symbol whose bar has a non-finite value keeps its exact state."""
    example("streaming features: arbitrary bars")
    sf = StreamingFeatures(["A", "B", "C"], dtype=np.float64)
    for o, h, lo, c, v in bars:
        arrays = [np.array(x, dtype=np.float64) for x in (o, h, lo, c, v)]
        bad = ~np.logical_and.reduce([np.isfinite(a) for a in arrays])
        before = [a.copy() for a in sf._state]
        sf.update(*arrays)
        for old, new in zip(before, sf._state):
            np.testing.assert_array_equal(new[bad], old[bad])
        np.testing.assert_array_equal(sf.stale, bad)


buffer_rows = hnp.arrays(
    st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.bool_, np.complex128, ">f8"]),
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
    elements=None,
) | st.lists(finite_or_not, max_size=6)


@BOUNDED
@given(row=buffer_rows)
def test_buffer_push_is_stored_or_an_inference_error_and_a_rejected_row_changes_nothing(row):
    example("sequence buffer: arbitrary rows")
    buffer = SeqBufferManager(4, 3, "S")
    buffer.push(np.array([1.0, 2.0, 3.0]))
    before = buffer.to_dict()
    try:
        buffer.push(row)
    except InferenceError:
        assert buffer.to_dict() == before
        return
    assert buffer.count() == 2 and np.isfinite(buffer.get_sequence()).all()


@BOUNDED
@given(rows=st.lists(buffer_rows, min_size=1, max_size=12), stamps=st.lists(st.integers(-5, 40), max_size=12))
def test_push_and_get_sequence_is_push_then_get_sequence(rows, stamps):
    """The one-call path over the mirrored ring and the two-call path agree on every row, bad
    rows and bar times included: same outcome, same sequence, same state."""
    example("sequence buffer: push_and_get_sequence vs push + get_sequence")
    fused, split = (SeqBufferManager(4, 3, "S", ttl=10, padding="zeros") for _ in range(2))
    out = np.full((1, 4, 3), 9.0, dtype=np.float32)
    for k, row in enumerate(rows):
        stamp = stamps[k] if k < len(stamps) else 41 + k
        before = out.copy()
        try:
            fused.push_and_get_sequence("S", row, out, timestamp=stamp)
        except InferenceError as exc:
            np.testing.assert_array_equal(out, before)
            with pytest.raises(InferenceError) as info:
                split.push("S", row, timestamp=stamp)
            assert str(info.value) == str(exc)
            continue
        split.push("S", row, timestamp=stamp)
        np.testing.assert_array_equal(out, split.get_sequence("S"))
    assert fused.to_dict() == split.to_dict()


@pytest.fixture(scope="module")
def buffer_state():
    buffer = SeqBufferManager(3, 2, symbols=["A", "B"], ttl=60)
    buffer.push_all(np.array([[1.0, 2.0], [3.0, 4.0]]), timestamp=10**18)
    return envelope.unwrap(buffer.to_dict(), KIND, {VERSION})[1]


@BOUNDED
@given(edits=st.data())
def test_any_buffer_payload_is_a_buffer_or_a_state_error(buffer_state, edits):
    """Payloads with fields replaced, removed or added, re-wrapped so the checksum passes: only
    the fields' own checks stand between them and the ring kernels."""
    example("sequence buffer state: mutated payloads")
    payload = _apply(buffer_state, edits.draw(_mutations(buffer_state)))
    try:
        wrapped = envelope.wrap(KIND, VERSION, payload)
    except ValueError:  # NaN/inf: no writer produces it, but JSON's Infinity literal reads as one
        wrapped = {"format": envelope.FORMAT, "kind": KIND, "version": VERSION, "sha256": "0", "payload": payload}
    try:
        restored = SeqBufferManager.from_dict(wrapped)
    except StateError:
        return
    restored.push_all(np.ones((restored.n_symbols, restored.n_features)), timestamp=2 * 10**18)
    assert np.isfinite(restored.get_batch()).all()


@BOUNDED
@given(doc=json_values)
def test_any_json_as_a_state_envelope_is_a_state_error(doc):
    example("state envelope: arbitrary JSON")
    with pytest.raises(StateError):
        envelope.unwrap(doc, KIND, {VERSION})
    with pytest.raises(StateError):
        SeqBufferManager.from_dict(doc)


@pytest.fixture(scope="module")
def ridge_and_trees(full_run):
    loader = ModelLoader(full_run)
    return [loader.load(TARGET, f) for f in ("ridge", "lightgbm")]


@BOUNDED
@given(
    X=hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int32, np.bool_, np.uint8]),
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
        elements=None,
    ),
    policy=st.sampled_from(["reject", "pass"]),
)
def test_predict_returns_or_raises_inference_error_and_never_sees_inf(ridge_and_trees, X, policy):
    example("LoadedModel.predict: arbitrary arrays")
    for model in ridge_and_trees:
        model.nan_policy = policy
        copy = X.copy()
        try:
            out = model.predict(X)
        except InferenceError as exc:
            assert model.family.name in str(exc)
        else:
            assert out.dtype == np.float64 and out.shape[0] == (X.shape[0] if X.ndim == 2 else 1)
            assert not np.isinf(out).any()  # inf inputs never reach the model
        finally:
            model.nan_policy = "reject"
        np.testing.assert_array_equal(X, copy)  # the input is never modified


@BOUNDED
@given(frame=st.data())
def test_feature_builder_returns_or_raises_feature_build_error(frame):
    example("FeatureBuilder: arbitrary frames")
    import pandas as pd

    n = frame.draw(st.integers(0, 30))
    cols = frame.draw(
        st.lists(st.sampled_from(["open", "High", "low", "Close", "volume", "Date", "x"]), unique=True, max_size=7)
    )
    data = {c: frame.draw(st.lists(finite_or_not, min_size=n, max_size=n)) for c in cols}
    df = pd.DataFrame(data)
    if frame.draw(st.booleans()) and n:
        df.index = pd.to_datetime(frame.draw(st.lists(st.integers(0, 10**18), min_size=n, max_size=n)))
    try:
        out = FeatureBuilder().build(df)
    except FastInferError as exc:
        assert type(exc).__name__ == "FeatureBuildError"
        return
    assert out.shape == (14,)


@pytest.fixture(scope="module")
def live(market_run, goog):
    """A predictor warmed on 75 stamped bars (its LSTM buffer holds stamped rows from bar 60) and that state."""
    from fastinfer.features import ohlcv_arrays
    from fastinfer.predictor import LivePredictor

    predictor = LivePredictor(market_run, ["A", "B", "C"], 1440.0)
    a = ohlcv_arrays(goog.iloc[1000:1075])
    for t in range(75):
        predictor.on_bar(
            *(
                np.array([x[t], x[t] * 1.1, x[t] * 0.9])
                for x in (a["open"], a["high"], a["low"], a["close"], a["volume"])
            ),
            timestamp=goog.index[1000 + t],
        )
    assert all(b.last_timestamp(0) is not None for b in predictor.buffers.values())
    return predictor, predictor.state_dict(), int(goog.index[1074].value)


DAY_NS = 86_400 * 10**9
GARBAGE_TIMES = (
    st.text(max_size=8)
    | st.floats()
    | st.booleans()
    | st.integers(2**63, 10**30)
    | st.integers(-(10**30), -(2**63))
    | st.sampled_from(
        [np.datetime64("NaT"), np.datetime64("3000-01-01"), np.datetime64(10**9, "Y"), b"2020", [1], object()]
    )
)
# (kind, value): "later"/"same"/"earlier" are relative to the predictor's newest bar time.
bar_times = (
    st.tuples(st.just("none"), st.none())
    | st.tuples(st.just("later"), st.integers(1, 30 * DAY_NS))
    | st.tuples(st.just("same"), st.none())
    | st.tuples(st.just("earlier"), st.integers(1, 30 * DAY_NS))
    | st.tuples(st.just("garbage"), GARBAGE_TIMES)
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    bars=st.lists(
        st.tuples(*[st.lists(finite_or_not | st.floats(50, 150), min_size=3, max_size=3)] * 5, bar_times),
        min_size=1,
        max_size=8,
    )
)
def test_on_bar_never_raises_never_outputs_inf_and_bad_bars_keep_state(live, bars):
    """Any bar values and bar times: on_bar returns or (for a bar time that is not a time, or is
    older than the newest bar) raises ``InferenceError`` leaving the whole state as it was; no
    output is inf; a symbol with a non-finite value in its bar gets NaN outputs and keeps its
    exact indicator and sequence state."""
    example("LivePredictor.on_bar: arbitrary bars")
    live, warm, last = live
    live.load_state_dict(warm)  # every example starts from the same warm, stamped state
    buffers = list(live.buffers.values())
    for o, h, lo, c, v, (kind, value) in bars:
        arrays = [np.array(x, dtype=np.float64) for x in (o, h, lo, c, v)]
        bad = ~np.logical_and.reduce([np.isfinite(a) for a in arrays])
        if kind in ("none", "garbage"):
            timestamp = value
        else:
            timestamp = last + value if kind == "later" else last if kind == "same" else last - value
        if kind == "earlier" or kind == "garbage":
            before = live.state_dict()
            with pytest.raises(InferenceError, match="timestamp"):
                live.on_bar(*arrays, timestamp=timestamp)
            assert live.state_dict() == before  # indicators, buffers, bar count, bar time: all as they were
            continue
        feats = [a.copy() for a in live.features._state]
        seqs = [(b._data.copy(), b._state.copy()) for b in buffers]
        out = live.on_bar(*arrays, timestamp=timestamp)
        last = last if timestamp is None else timestamp
        assert live.last_timestamp == last
        assert not np.isinf(out).any() and not np.isinf(live.plan.tabular_input).any()
        assert np.isnan(out[bad]).all()
        for old, new in zip(feats, live.features._state):
            np.testing.assert_array_equal(new[bad], old[bad])
        for (data, state), b in zip(seqs, buffers):
            np.testing.assert_array_equal(b._data[bad], data[bad])
            np.testing.assert_array_equal(b._state[bad], state[bad])
