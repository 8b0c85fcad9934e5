"""SeqBufferManager: the spec's API, many symbols, readiness, bad rows, bar-time TTL, state files."""

from __future__ import annotations

import json
import os
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from fastinfer import atomic
from fastinfer import state as state_envelope
from fastinfer.buffers import KIND, VERSION, SeqBufferManager, timestamp_ns
from fastinfer.config import ModelSettings
from fastinfer.errors import InferenceError, StateError


def reference(rows: list[np.ndarray], t: int, padding: str) -> np.ndarray:
    kept = np.array(rows[-t:], dtype=np.float32)
    npad = t - len(kept)
    front = (
        np.repeat(kept[:1], npad, axis=0) if padding == "repeat_first" else np.zeros((npad, kept.shape[1]), np.float32)
    )
    return np.concatenate([front, kept])[None]


def filled(manager: SeqBufferManager, rng, bars: int) -> SeqBufferManager:
    for _ in range(bars):
        manager.push_all(rng.standard_normal((manager.n_symbols, manager.n_features)))
    return manager


# ---------------------------------------------------------------- the spec's API


def test_spec_single_symbol_api():
    rng = np.random.default_rng(0)
    buffer = SeqBufferManager(seq_len=60, n_features=200, symbol="AAPL")
    rows = []
    for _ in range(150):  # 2.5 cycles
        row = rng.standard_normal((1, 200))
        buffer.push(row)  # (1, n_features) as in the spec
        rows.append(row[0])
    sequence = buffer.get_sequence()
    assert sequence.shape == (1, 60, 200) and sequence.dtype == np.float32
    np.testing.assert_array_equal(sequence, reference(rows, 60, "repeat_first"))
    assert buffer.symbols == ["AAPL"] and buffer.get_sequence("AAPL").tobytes() == sequence.tobytes()


def test_positional_signature_and_anonymous_symbol():
    buffer = SeqBufferManager(4, 2)
    buffer.push(np.array([1.0, 2.0]))
    buffer.push([3, 4])
    np.testing.assert_array_equal(buffer.get_sequence()[0], [[1, 2], [1, 2], [1, 2], [3, 4]])
    assert buffer.symbols == [None] and buffer.count() == 2


@pytest.mark.parametrize("padding", ["repeat_first", "zeros"])
def test_wraparound_many_cycles_matches_concatenation(padding):
    rng = np.random.default_rng(1)
    t, f = 9, 5
    buffer = SeqBufferManager(t, f, symbols=["A", "B", "C"], padding=padding)
    history = {s: [] for s in buffer.symbols}
    out = np.empty((1, t, f), dtype=np.float32)
    for _ in range(40 * t + 4):
        s = buffer.symbols[int(rng.integers(3))]
        row = rng.standard_normal(f).astype(np.float32)
        buffer.push(s, row)
        history[s].append(row)
        if history[s]:
            np.testing.assert_array_equal(buffer.get_sequence(s, out=out), reference(history[s], t, padding))


def test_padding_and_warmup_come_from_settings():
    settings = ModelSettings(seq_buffer_size=6, seq_warmup_bars=3, seq_padding="zeros")
    buffer = SeqBufferManager(None, 2, "X", settings=settings)
    assert (buffer.seq_len, buffer.warmup_bars, buffer.padding) == (6, 3, "zeros")
    for k in range(1, 4):
        assert not buffer.ready()
        buffer.push([k, k])
    assert buffer.ready()
    np.testing.assert_array_equal(buffer.get_sequence()[0, :3], 0)
    # Default warmup (20) is capped at a shorter seq_len; explicit too-large values are refused.
    assert SeqBufferManager(5, 1).warmup_bars == 5
    with pytest.raises(ValueError, match="warmup_bars"):
        SeqBufferManager(5, 1, warmup_bars=6)
    with pytest.raises(ValueError, match="padding"):
        SeqBufferManager(5, 1, padding="edge")


def test_empty_symbol_reads_zeros_under_either_padding():
    for padding in ("repeat_first", "zeros"):
        buffer = SeqBufferManager(3, 2, symbols=["A"], padding=padding)
        np.testing.assert_array_equal(buffer.get_sequence("A"), np.zeros((1, 3, 2)))


# ---------------------------------------------------------------- many symbols


def test_batch_push_and_get_equal_per_symbol():
    rng = np.random.default_rng(2)
    names = [f"S{i}" for i in range(7)]
    batch = SeqBufferManager(5, 3, symbols=names)
    single = SeqBufferManager(5, 3, symbols=names)
    for _bar in range(23):
        block = rng.standard_normal((7, 3))
        batch.push_all(block)
        for name, row in zip(names, block):
            single.push(name, row)
        sub = rng.permutation(7)[:4]
        subset = [names[i] for i in sub]
        batch.push_many(subset, block[sub] * 2)
        for i in sub:
            single.push(names[i], block[i] * 2)
    order = list(rng.permutation(names))
    got = batch.get_batch(order)
    for i, name in enumerate(order):
        np.testing.assert_array_equal(got[i], single.get_sequence(name)[0])
    # Names, ints and a precomputed index array give the same batch.
    idx = batch.indices(order)
    np.testing.assert_array_equal(batch.get_batch(list(idx)), got)
    out = np.empty_like(got)
    assert batch.get_batch(idx, out=out) is out
    np.testing.assert_array_equal(out, got)
    np.testing.assert_array_equal(batch.get_batch(), single.get_batch(names))


# ---------------------------------------------------------------- one call per bar (#19.4)


@pytest.mark.parametrize("padding", ["repeat_first", "zeros"])
def test_push_and_get_sequence_equals_push_then_get_sequence(padding):
    rng = np.random.default_rng(11)
    t, f = 7, 4
    fused = SeqBufferManager(t, f, symbols=["A", "B"], padding=padding, warmup_bars=3, ttl=10)
    split = SeqBufferManager(t, f, symbols=["A", "B"], padding=padding, warmup_bars=3, ttl=10)
    out3, out2 = np.empty((1, t, f), dtype=np.float32), np.empty((t, f), dtype=np.float32)
    stamp = 0
    for step in range(30 * t + 3):  # many laps of the mirror, a ttl gap now and then
        stamp += 25 if step % 37 == 36 else 1
        s = "AB"[int(rng.integers(2))]
        row = rng.standard_normal(f) if step % 3 else rng.standard_normal(f).astype(np.float32)
        out = out3 if step % 2 else out2
        assert fused.push_and_get_sequence(s, row, out, timestamp=stamp) is out
        split.push(s, row, timestamp=stamp)
        np.testing.assert_array_equal(out.reshape(1, t, f), split.get_sequence(s))
        assert (fused.count(s), fused.ready(s, now=stamp)) == (split.count(s), split.ready(s, now=stamp))
    assert fused.to_dict() == split.to_dict()
    # Without out it allocates one; symbol None is the default symbol, as in push(features).
    spec = SeqBufferManager(3, 2, "X", padding=padding)
    first = [[1.0, 2.0]] * 3 if padding == "repeat_first" else [[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]]
    np.testing.assert_array_equal(spec.push_and_get_sequence(None, [1.0, 2.0]), [first])
    # A refused row changes neither the buffer nor out.
    before, out_before = fused.to_dict(), out3.copy()
    with pytest.raises(InferenceError, match="non-finite value nan at column 1"):
        fused.push_and_get_sequence(s, [0.0, np.nan, 0.0, 0.0], out3, timestamp=stamp)
    with pytest.raises(InferenceError, match="older than its newest row"):
        fused.push_and_get_sequence(s, np.zeros(f), out3, timestamp=stamp - 1)  # s's newest is at stamp
    with pytest.raises(InferenceError, match=r"out has shape \(1, 6, 4\)"):
        fused.push_and_get_sequence(s, np.zeros(f), np.empty((1, 6, f), np.float32), timestamp=stamp)
    assert fused.to_dict() == before
    np.testing.assert_array_equal(out3, out_before)


@pytest.mark.parametrize("strict", [True, False])
def test_push_all_and_get_batch_equals_push_all_then_get_batch(strict):
    rng = np.random.default_rng(12)
    names = [f"S{i}" for i in range(9)]
    fused = SeqBufferManager(6, 3, symbols=names, warmup_bars=2)
    split = SeqBufferManager(6, 3, symbols=names, warmup_bars=2)
    out = np.empty((9, 6, 3), dtype=np.float32)
    for bar in range(40):
        block = rng.standard_normal((9, 3))
        if bar % 5 == 4:
            block[int(rng.integers(9)), int(rng.integers(3))] = np.nan
        before = out.copy()
        if strict and bar % 5 == 4:
            with pytest.raises(InferenceError, match="block rejected, nothing written"):
                fused.push_all_and_get_batch(block, out, timestamp=bar, strict=True)
            np.testing.assert_array_equal(out, before)  # a refused block reads nothing either
            with pytest.raises(InferenceError):
                split.push_all(block, timestamp=bar, strict=True)
        else:
            assert fused.push_all_and_get_batch(block, out, timestamp=bar, strict=strict) is out
            split.push_all(block, timestamp=bar, strict=strict)
            np.testing.assert_array_equal(fused.rejected_columns, split.rejected_columns)
        np.testing.assert_array_equal(out, split.get_batch())
        np.testing.assert_array_equal(fused.ready_mask(bar), split.ready_mask(bar))
    assert fused.to_dict() == split.to_dict()
    with pytest.raises(InferenceError, match="older than the newest row"):
        fused.push_all_and_get_batch(np.ones((9, 3)), out, timestamp=0)
    with pytest.raises(InferenceError, match=r"out has shape \(9, 5, 3\)"):
        fused.push_all_and_get_batch(np.ones((9, 3)), np.empty((9, 5, 3), np.float32), timestamp=99)
    with pytest.raises(InferenceError, match=r"out has shape \(9, 6, 3\) and dtype float64"):
        fused.push_all_and_get_batch(np.ones((9, 3)), np.empty((9, 6, 3)), timestamp=99)
    assert fused.to_dict() == split.to_dict()  # none of the refused calls wrote anything


def test_symbols_register_on_first_push_and_growth_keeps_data():
    rng = np.random.default_rng(3)
    buffer = SeqBufferManager(4, 2, symbols=["A"])
    rows = {}
    for i in range(40):  # grows 1 → 2 → 4 → … → 64
        name = f"N{i}"
        rows[name] = rng.standard_normal((3, 2)).astype(np.float32)
        for row in rows[name]:
            buffer.push(name, row)
    assert buffer.symbols == ["A", *list(rows)] and buffer.index("N5") == 6
    for name, r in rows.items():
        np.testing.assert_array_equal(buffer.get_sequence(name)[0, 1:], r)
    assert buffer.count("A") == 0 and buffer.get_sequence(6).tobytes() == buffer.get_sequence("N5").tobytes()


def test_unknown_symbol_and_default_errors():
    buffer = SeqBufferManager(4, 2, symbols=["A", "B"])
    with pytest.raises(InferenceError, match="unknown symbol 'Z'"):
        buffer.get_sequence("Z")
    with pytest.raises(InferenceError, match="pass the symbol"):
        buffer.push([1.0, 2.0])
    with pytest.raises(InferenceError, match="out of range"):
        buffer.get_sequence(2)
    with pytest.raises(InferenceError, match="out of range"):
        buffer.get_batch(np.array([0, 5], dtype=np.int64))


# ---------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    "row,match",
    [
        (np.array([1.0, np.nan, 3.0]), r"'AAPL'.*non-finite value nan at column 1"),
        (np.array([1.0, 2.0, np.inf]), r"'AAPL'.*column 2"),
        (np.array([1.0, 2.0]), r"'AAPL'.*shape \(2,\)"),
        (np.ones((2, 3)), r"'AAPL'.*shape \(2, 3\)"),
        (np.array(["a", "b", "c"]), r"'AAPL'.*dtype"),
    ],
)
def test_bad_row_is_rejected_and_buffer_unchanged(row, match):
    buffer = SeqBufferManager(4, 3, "AAPL")
    buffer.push(np.arange(3.0))
    before = buffer.to_dict()
    with pytest.raises(InferenceError, match=match):
        buffer.push(row)
    assert buffer.to_dict() == before


def test_push_all_strict_and_lenient():
    buffer = SeqBufferManager(4, 2, symbols=["A", "B", "C"])
    block = np.array([[1.0, 2.0], [3.0, np.inf], [5.0, 6.0]])
    with pytest.raises(InferenceError, match=r"symbol 'B' column 1.*nothing written"):
        buffer.push_all(block)
    assert [buffer.count(s) for s in "ABC"] == [0, 0, 0]
    assert buffer.push_all(block, strict=False) == 1
    assert [buffer.count(s) for s in "ABC"] == [1, 0, 1]
    assert list(buffer.rejected_columns) == [-1, 1, -1]
    with pytest.raises(InferenceError, match=r"shape \(2, 2\)"):
        buffer.push_all(block[:2])


# ---------------------------------------------------------------- time-to-live in bar time


def test_ttl_driven_by_historical_bar_time():
    # Daily bars from 2004, replayed now: only the bars' own stamps matter.
    buffer = SeqBufferManager(5, 1, symbols=["GOOG", "MSFT"], warmup_bars=2, ttl=timedelta(days=4))
    day = datetime(2004, 8, 19)
    for k in range(4):
        buffer.push_all(np.full((2, 1), float(k)), timestamp=day + timedelta(days=k))
    assert buffer.ready("GOOG", now=day + timedelta(days=4))
    assert not buffer.ready("GOOG", now=day + timedelta(days=8))  # last bar 5 days before
    # A weekend-plus gap within ttl keeps history; a longer gap starts over.
    buffer.push("GOOG", [10.0], timestamp=day + timedelta(days=7))
    assert buffer.count("GOOG") == 5
    buffer.push("GOOG", [20.0], timestamp=day + timedelta(days=12))
    assert buffer.count("GOOG") == 1 and not buffer.ready("GOOG")
    np.testing.assert_array_equal(buffer.get_sequence("GOOG")[0, :, 0], [20.0] * 5)
    # expire(now) empties every symbol idle longer than ttl (MSFT's last bar: day 3).
    assert list(buffer.ready_mask(now=day + timedelta(days=12))) == [False, False]
    assert buffer.expire(day + timedelta(days=12)) == 1
    assert buffer.count("MSFT") == 0 and buffer.last_timestamp("MSFT") == timestamp_ns(day + timedelta(days=3))


def test_ttl_requires_bar_time_and_rejects_going_back():
    buffer = SeqBufferManager(3, 1, "X", ttl=60)
    with pytest.raises(InferenceError, match="timestamp is required"):
        buffer.push([1.0])
    buffer.push([1.0], timestamp=np.datetime64("2020-03-02T10:00"))
    with pytest.raises(InferenceError, match="older than its newest"):
        buffer.push([2.0], timestamp=np.datetime64("2020-03-02T09:59"))
    assert buffer.count() == 1


def test_timestamps_timezone_aware_pandas_numpy_and_int_agree():
    ns = 1_583_143_200_000_000_000  # 2020-03-02 10:00 UTC
    new_york = timezone(timedelta(hours=-5))
    stamps = [
        datetime(2020, 3, 2, 10, tzinfo=UTC),
        datetime(2020, 3, 2, 5, tzinfo=new_york),
        datetime(2020, 3, 2, 10),  # naive = UTC
        pd.Timestamp("2020-03-02 05:00", tz="America/New_York"),
        pd.Timestamp("2020-03-02 10:00"),
        np.datetime64("2020-03-02T10:00:00.000000000"),
        ns,
    ]
    assert {timestamp_ns(s) for s in stamps} == {ns}
    assert timestamp_ns(pd.Timestamp("2020-03-02 10:00:00.000000001", tz="UTC")) == ns + 1
    for bad in (1.5, "2020-03-02", np.datetime64("NaT"), pd.NaT, True):
        with pytest.raises(InferenceError):
            timestamp_ns(bad)
    buffer = SeqBufferManager(3, 1, "X", ttl=pd.Timedelta(minutes=30))
    buffer.push([1.0], timestamp=stamps[3])
    buffer.push([2.0], timestamp=datetime(2020, 3, 2, 10, 29, tzinfo=UTC))
    assert buffer.count() == 2 and buffer.ttl == timedelta(minutes=30)


OUT_OF_RANGE = [
    10**30,
    2**63,
    -(2**63) - 5,
    datetime(3000, 1, 1),
    datetime(1, 1, 1),
    datetime(9999, 12, 31, tzinfo=timezone(timedelta(hours=-5))),
    np.datetime64("3000-01-01"),
    np.datetime64("1500-01-01", "s"),
    np.datetime64(10**9, "Y"),
]


@pytest.mark.parametrize("ts", OUT_OF_RANGE, ids=repr)
def test_timestamp_outside_int64_ns_is_an_inference_error_not_a_wrapped_value(ts):
    # numpy's cast of datetime64('3000-01-01') to [ns] wraps to a time in 1830; an int past
    # int64 used to reach the numba kernel and fail there with a TypingError / OverflowError.
    with pytest.raises(InferenceError, match="outside the int64 nanosecond range"):
        timestamp_ns(ts)
    buffer = SeqBufferManager(3, 1, "X", ttl=3600)
    buffer.push([1.0], timestamp=10**18)
    before = buffer.to_dict()
    for call in (
        lambda: buffer.push([2.0], timestamp=ts),
        lambda: buffer.push_all(np.ones((1, 1)), timestamp=ts),
        lambda: buffer.check_timestamp(ts),
        lambda: buffer.ready_mask(ts),
        lambda: buffer.expire(ts),
    ):
        with pytest.raises(InferenceError):
            call()
    assert buffer.to_dict() == before


def test_datetime64_of_any_unit_converts_exactly():
    ns = 1_583_143_200_000_000_000  # 2020-03-02 10:00 UTC
    for unit in ("D", "h", "m", "s", "ms", "us", "ns"):
        assert timestamp_ns(np.datetime64("2020-03-02T10:00").astype(f"datetime64[{unit}]")) == (
            ns if unit != "D" else ns - 10 * 3_600 * 10**9
        )
    assert timestamp_ns(np.datetime64("2020-03")) == timestamp_ns(datetime(2020, 3, 1))
    assert timestamp_ns(np.datetime64("2262-04-11T23:47:16.854775807")) == 2**63 - 1  # the last one
    assert timestamp_ns(np.datetime64(1_500_999, "ps")) == 1_500  # finer than ns: truncated


def test_check_timestamp_refuses_exactly_what_push_all_would_and_changes_nothing():
    buffer = SeqBufferManager(4, 2, symbols=["A", "B", "C"])
    assert buffer.check_timestamp(5) == 5  # nothing stamped yet: any time goes
    buffer.push_many(["A", "B"], np.ones((2, 2)), timestamp=100)
    buffer.push("B", [2.0, 2.0], timestamp=200)  # B is newest; C never stamped
    before = buffer.to_dict()
    for ts, ok in ((150, False), (199, False), (200, True), (201, True), (None, True), ("200", False), (1.0, False)):
        if ok:
            stamp = buffer.check_timestamp(ts)
            assert stamp == ts or ts is None
        else:
            with pytest.raises(InferenceError) as checked:
                buffer.check_timestamp(ts)
            with pytest.raises(InferenceError) as pushed:
                buffer.push_all(np.zeros((3, 2)), timestamp=ts)
            assert str(checked.value) == str(pushed.value)  # the same refusal, same words
        assert buffer.to_dict() == before
    timed = SeqBufferManager(4, 1, "X", ttl=60)
    with pytest.raises(InferenceError, match="timestamp is required when ttl is set"):
        timed.check_timestamp(None)
    with pytest.raises(InferenceError, match="timestamp is required when ttl is set"):
        timed.push_all(np.ones((1, 1)))


# ---------------------------------------------------------------- state


def test_to_dict_from_dict_round_trip_exact():
    rng = np.random.default_rng(4)
    buffer = SeqBufferManager(6, 3, "B", symbols=["A", "B", "C"], warmup_bars=2, padding="zeros", ttl=3600)
    for k in range(8):  # wrapped for some symbols, partial for others
        buffer.push("A", rng.standard_normal(3), timestamp=1_000_000_000 * k)
        if k % 3 == 0:
            buffer.push("B", rng.standard_normal(3).astype(np.float32) * 1e-30, timestamp=1_000_000_000 * k)
    state = buffer.to_dict()
    assert (
        (state["format"], state["kind"], state["version"])
        == ("fastinfer.state", KIND, VERSION)
        == (
            state_envelope.FORMAT,
            "seqbuffer",
            2,
        )
    )
    text = json.dumps(state)
    restored = SeqBufferManager.from_dict(json.loads(text))
    assert restored.to_dict() == state
    np.testing.assert_array_equal(restored.get_batch(["A", "B", "C"]), buffer.get_batch(["A", "B", "C"]))
    assert (restored.symbols, restored.warmup_bars, restored.padding, restored.ttl_ns) == (
        ["A", "B", "C"],
        2,
        "zeros",
        3600 * 10**9,
    )
    assert restored.last_timestamp("A") == 7 * 10**9 and restored.last_timestamp("C") is None
    assert restored.count("B") == 3
    # Future pushes behave identically after the restore.
    for target in (buffer, restored):
        target.push("A", np.ones(3), timestamp=8 * 10**9)
        target.push([2.0, 2.0, 2.0], timestamp=9 * 10**9)  # default symbol B survives the round trip
    assert restored.to_dict() == buffer.to_dict()
    anonymous = SeqBufferManager(3, 2)
    anonymous.push([1.0, 2.0])
    assert SeqBufferManager.from_dict(anonymous.to_dict()).to_dict() == anonymous.to_dict()


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    buffer = filled(SeqBufferManager(10, 4, symbols=["A", "B"]), rng, 13)
    path = tmp_path / "state" / "buffer.json"
    buffer.save(path)
    loaded = SeqBufferManager.load(path, seq_len=10, n_features=4)
    assert loaded.to_dict() == buffer.to_dict()
    # The spec's own persistence route works as well.
    atomic.write_atomic_json(tmp_path / "spec.json", buffer.to_dict())
    assert SeqBufferManager.from_dict(atomic.read_json(tmp_path / "spec.json")).to_dict() == buffer.to_dict()


def test_crash_between_temp_write_and_rename_keeps_old_state(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    buffer = filled(SeqBufferManager(5, 2, symbols=["A"]), rng, 3)
    path = tmp_path / "buffer.json"
    buffer.save(path)
    old_bytes = path.read_bytes()
    filled(buffer, rng, 4)

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StateError, match=r"buffer.json: cannot write state \(simulated crash"):
        buffer.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffer.json"]  # no temp file left
    assert SeqBufferManager.load(path).count("A") == 3


def _payload_cases():
    """Payloads a writer could produce but that are wrong: re-wrapped, so the checksum passes
    and each field's own check must catch them."""

    def rows(change):
        def apply(p):
            p["rows"] = dict(p["rows"], **change(p["rows"]))

        return apply

    return {
        "counts": lambda p: p.update(counts=[99]),
        "symbols": lambda p: p.update(symbols=[1]),
        "padding": lambda p: p.update(padding="edge"),
        "stamps": lambda p: p.update(stamps=["x"]),
        "seq_len": lambda p: p.update(seq_len=0),
        "rows": rows(lambda r: {"dtype": "<f2"}),
    }


@pytest.mark.parametrize("field", list(_payload_cases()))
def test_bad_payload_field_is_rejected_naming_file_and_field(tmp_path, field):
    buffer = filled(SeqBufferManager(5, 2, symbols=["A"]), np.random.default_rng(8), 6)
    version, payload = state_envelope.unwrap(buffer.to_dict(), KIND, {VERSION})
    _payload_cases()[field](payload)
    path = tmp_path / "buffer.json"
    path.write_text(json.dumps(state_envelope.wrap(KIND, version, payload)))
    with pytest.raises(StateError, match=rf"buffer\.json: field '{field}'"):
        SeqBufferManager.load(path)


def _envelope_cases():
    def flip_rows(s):
        raw = bytearray(s["payload"]["rows"]["data"].encode())
        raw[10] = ord("A") if raw[10] != ord("A") else ord("B")
        s["payload"]["rows"]["data"] = raw.decode()

    return {
        "sha256": flip_rows,  # one flipped byte anywhere in the payload
        "version": lambda s: s.update(version=3),
        "kind": lambda s: s.update(kind="features"),
        "format": lambda s: s.update(format="other"),
        "payload": lambda s: s.pop("payload"),
    }


@pytest.mark.parametrize("field", list(_envelope_cases()))
def test_corrupt_envelope_is_rejected_naming_file_and_field(tmp_path, field):
    buffer = filled(SeqBufferManager(5, 2, symbols=["A"]), np.random.default_rng(8), 6)
    state = buffer.to_dict()
    _envelope_cases()[field](state)
    path = tmp_path / "buffer.json"
    path.write_text(json.dumps(state))
    with pytest.raises(StateError, match=rf"buffer\.json: field '{field}'"):
        SeqBufferManager.load(path)


def test_truncated_or_mismatched_file_is_rejected(tmp_path):
    buffer = filled(SeqBufferManager(5, 2, symbols=["A"]), np.random.default_rng(9), 2)
    path = tmp_path / "buffer.json"
    buffer.save(path)
    with pytest.raises(StateError, match=r"buffer\.json: field 'seq_len': state has 5, expected 60"):
        SeqBufferManager.load(path, seq_len=60)
    with pytest.raises(StateError, match=r"field 'n_features': state has 2, expected 200"):
        SeqBufferManager.load(path, n_features=200)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(StateError, match=r"buffer\.json: not a valid state file"):
        SeqBufferManager.load(path)
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(StateError, match=r"buffer\.json"):
        SeqBufferManager.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(StateError, match="expected a state object"):
        SeqBufferManager.load(path)


# ---------------------------------------------------------------- allocation (TARGETS M1)


def test_hot_path_allocates_nothing_per_bar():
    rng = np.random.default_rng(10)
    names = [f"S{i}" for i in range(16)]
    buffer = SeqBufferManager(30, 8, symbols=names)
    idx = buffer.indices(names[::2])
    rows = rng.standard_normal((1100, 16, 8)).astype(np.float32)
    out_one = np.empty((1, 30, 8), dtype=np.float32)
    out_batch = np.empty((8, 30, 8), dtype=np.float32)

    out_all = np.empty((16, 30, 8), dtype=np.float32)

    def bar(k):
        buffer.push_all(rows[k])
        buffer.push_all_and_get_batch(rows[k], out_all)
        buffer.push_and_get_sequence("S2", rows[k, 2], out_one)
        buffer.push("S3", rows[k, 3])
        buffer.push(5, rows[k, 5])
        buffer.get_sequence("S1", out=out_one)
        buffer.get_batch(idx, out=out_batch)
        buffer.ready("S1")

    for k in range(100):  # warm-up: compile, caches
        bar(k)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for k in range(100, 1100):
            bar(k)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # Everything but tracemalloc's own snapshot and this loop's counter.
    mine = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    growth = sum(d.size_diff for d in after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename"))
    assert growth <= 0
