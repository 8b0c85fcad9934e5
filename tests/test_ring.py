"""fastinfer.kernels.ring against references built with numpy concatenation."""

from __future__ import annotations

import numpy as np
import pytest

from fastinfer.kernels import ring


def reference(rows: list[np.ndarray], t: int, f: int, pad: int) -> np.ndarray:
    """The chronological (t, f) sequence from the list of every row ever pushed."""
    kept = np.array(rows[-t:], dtype=np.float32).reshape(-1, f)
    npad = t - kept.shape[0]
    if pad == ring.PAD_REPEAT_FIRST and kept.shape[0]:
        front = np.repeat(kept[:1], npad, axis=0)
    else:
        front = np.zeros((npad, f), dtype=np.float32)
    return np.concatenate([front, kept])


@pytest.mark.parametrize("pad", [ring.PAD_ZEROS, ring.PAD_REPEAT_FIRST])
@pytest.mark.parametrize("t,f", [(1, 1), (5, 3), (17, 8)])
def test_wraparound_many_cycles_matches_concatenation(t, f, pad):
    rng = np.random.default_rng(1000 * t + f)
    n_sym = 3
    data, state, stamps = ring.allocate(n_sym, t, f)
    history: list[list[np.ndarray]] = [[] for _ in range(n_sym)]
    out = np.empty((t, f), dtype=np.float32)
    for _step in range(25 * t + 7):  # many full cycles, ending mid-cycle
        s = int(rng.integers(n_sym))
        row = rng.standard_normal(f)  # float64 in, float32 stored
        assert ring.push(data, state, stamps, s, row, ring.NO_STAMP, 0) == ring.OK
        history[s].append(row)
        for k in range(n_sym):
            assert ring.read(data, state, k, out, pad) == ring.OK
            np.testing.assert_array_equal(out, reference(history[k], t, f, pad))
        assert state[s, ring.COUNT] == min(len(history[s]), t)


@pytest.mark.parametrize("pad", [ring.PAD_ZEROS, ring.PAD_REPEAT_FIRST])
def test_batch_push_and_read_equal_per_symbol(pad):
    rng = np.random.default_rng(7)
    n_sym, t, f = 6, 7, 4
    a = ring.allocate(n_sym, t, f)
    b = ring.allocate(n_sym, t, f)
    bad = np.empty(n_sym, dtype=np.int64)
    for _step in range(40):
        # A random subset in random order, as push_block over an index array.
        idx = rng.permutation(n_sym)[: int(rng.integers(1, n_sym + 1))].astype(np.int64)
        block = rng.standard_normal((idx.size, f)).astype(np.float32)
        assert ring.push_block(*a, idx, block, bad, True, ring.NO_STAMP, 0) == 0
        for i, s in enumerate(idx):
            assert ring.push(*b, s, block[i], ring.NO_STAMP, 0) == ring.OK
        np.testing.assert_array_equal(a[1], b[1])
        sel = rng.permutation(n_sym).astype(np.int64)
        out = np.empty((n_sym, t, f), dtype=np.float32)
        assert ring.read_batch(*a[:2], sel, out, pad) == ring.OK
        one = np.empty((t, f), dtype=np.float32)
        for i, s in enumerate(sel):
            ring.read(*b[:2], s, one, pad)
            np.testing.assert_array_equal(out[i], one)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e300])
def test_nonfinite_row_is_rejected_and_not_written(value):
    data, state, stamps = ring.allocate(2, 4, 3)
    ring.push(data, state, stamps, 0, np.ones(3), ring.NO_STAMP, 0)
    before = data.copy(), state.copy()
    row = np.array([1.0, 2.0, value])  # 1e300 overflows float32 to inf
    assert ring.push(data, state, stamps, 0, row, ring.NO_STAMP, 0) == 2
    np.testing.assert_array_equal(data, before[0])
    np.testing.assert_array_equal(state, before[1])


def test_block_strict_writes_nothing_nonstrict_skips_bad_rows():
    data, state, stamps = ring.allocate(3, 4, 2)
    idx = np.arange(3, dtype=np.int64)
    bad = np.empty(3, dtype=np.int64)
    block = np.array([[1, 2], [np.nan, 0], [5, 6]], dtype=np.float32)
    assert ring.push_block(data, state, stamps, idx, block, bad, True, ring.NO_STAMP, 0) == 1
    assert list(bad) == [-1, 0, -1]
    assert not state.any()
    assert ring.push_block(data, state, stamps, idx, block, bad, False, ring.NO_STAMP, 0) == 1
    assert list(state[:, ring.COUNT]) == [1, 0, 1]


def test_bad_index_and_shape_codes_write_nothing():
    data, state, stamps = ring.allocate(2, 3, 2)
    out = np.empty((3, 2), dtype=np.float32)
    assert ring.push(data, state, stamps, 2, np.ones(2), ring.NO_STAMP, 0) == ring.BAD_INDEX
    assert ring.push(data, state, stamps, -1, np.ones(2), ring.NO_STAMP, 0) == ring.BAD_INDEX
    assert ring.push(data, state, stamps, 0, np.ones(3), ring.NO_STAMP, 0) == ring.BAD_SHAPE
    assert ring.read(data, state, 5, out, 0) == ring.BAD_INDEX
    assert ring.read(data, state, 0, np.empty((2, 2), dtype=np.float32), 0) == ring.BAD_SHAPE
    bad = np.empty(2, dtype=np.int64)
    assert (
        ring.push_block(data, state, stamps, np.array([0, 7]), np.ones((2, 2)), bad, True, ring.NO_STAMP, 0)
        == ring.BAD_INDEX
    )
    assert ring.read_batch(data, state, np.array([0, 1]), np.empty((1, 3, 2), dtype=np.float32), 0) == ring.BAD_SHAPE
    assert not state.any() and not data.any()


def test_stamps_ttl_and_expiry():
    data, state, stamps = ring.allocate(2, 4, 1)
    for ts in (100, 110, 120):
        assert ring.push(data, state, stamps, 0, np.array([ts]), ts, 15) == ring.OK
    assert state[0, ring.COUNT] == 3
    assert ring.push(data, state, stamps, 0, np.array([1.0]), 119, 15) == ring.BAD_TIME
    # A gap longer than ttl empties the ring before the new row goes in.
    assert ring.push(data, state, stamps, 0, np.array([200.0]), 200, 15) == ring.OK
    assert state[0, ring.COUNT] == 1 and stamps[0] == 200
    ring.push(data, state, stamps, 1, np.array([1.0]), 150, 15)
    assert ring.expire_before(state, stamps, 160) == 1  # symbol 1 (stamp 150) only
    assert list(state[:, ring.COUNT]) == [1, 0]


def test_warmup_compiles():
    ring.warmup()
