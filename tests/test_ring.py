"""fastinfer.kernels.ring (mirrored rings) against references built with numpy concatenation."""

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
    data, state = ring.allocate(n_sym, t, f)
    history: list[list[np.ndarray]] = [[] for _ in range(n_sym)]
    out = np.empty((1, t, f), dtype=np.float32)
    both = np.empty((2, t, f), dtype=np.float32)
    for _step in range(25 * t + 7):  # many full cycles, ending mid-cycle
        s = int(rng.integers(n_sym))
        row = rng.standard_normal(f)  # float64 in, float32 stored
        if _step % 2:
            assert ring.push(data, state, s, row, ring.NO_STAMP, 0) == ring.OK
        else:  # push + read in one call, into the second slot of a batch-shaped out
            assert ring.push_read(data, state, s, row, ring.NO_STAMP, 0, both, 1, pad) == ring.OK
        history[s].append(row)
        if not _step % 2:
            np.testing.assert_array_equal(both[1], reference(history[s], t, f, pad))
        for k in range(n_sym):
            assert ring.read(data, state, k, out, 0, pad) == ring.OK
            np.testing.assert_array_equal(out[0], reference(history[k], t, f, pad))
            # The mirror: both halves hold the same rows, so the window never wraps.
            np.testing.assert_array_equal(data[k, :t], data[k, t:])
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
        read_back = np.empty((idx.size, t, f), dtype=np.float32)
        if _step % 2:
            assert ring.push_block(*a, idx, block, bad, True, ring.NO_STAMP, 0) == 0
        else:
            assert ring.push_block_read(*a, idx, block, bad, True, ring.NO_STAMP, 0, read_back, pad) == 0
        for i, s in enumerate(idx):
            assert ring.push(*b, s, block[i], ring.NO_STAMP, 0) == ring.OK
        np.testing.assert_array_equal(a[1], b[1])
        one = np.empty((1, t, f), dtype=np.float32)
        if not _step % 2:
            for i, s in enumerate(idx):
                ring.read(*b, s, one, 0, pad)
                np.testing.assert_array_equal(read_back[i], one[0])
        sel = rng.permutation(n_sym).astype(np.int64)
        out = np.empty((n_sym, t, f), dtype=np.float32)
        assert ring.read_batch(*a, sel, out, pad) == ring.OK
        for i, s in enumerate(sel):
            ring.read(*b, s, one, 0, pad)
            np.testing.assert_array_equal(out[i], one[0])


@pytest.mark.parametrize(
    "value,dtype",
    [(v, np.float64) for v in (np.nan, -np.nan, np.inf, -np.inf, 1e300)]  # 1e300 overflows float32 to inf
    + [(v, np.float32) for v in (np.nan, -np.nan, np.inf, -np.inf)],
)
def test_nonfinite_row_is_rejected_and_not_written(value, dtype):
    data, state = ring.allocate(2, 4, 3)
    ring.push(data, state, 0, np.ones(3), ring.NO_STAMP, 0)
    before = data.copy(), state.copy()
    row = np.array([1.0, 2.0, value], dtype=dtype)
    out = np.full((1, 4, 3), 7.0, dtype=np.float32)
    assert ring.push(data, state, 0, row, ring.NO_STAMP, 0) == 2
    assert ring.push_read(data, state, 0, row, ring.NO_STAMP, 0, out, 0, ring.PAD_ZEROS) == 2
    np.testing.assert_array_equal(data, before[0])
    np.testing.assert_array_equal(state, before[1])
    assert (out == 7.0).all()  # a refused push reads nothing


def test_finite_extremes_are_stored_bit_exactly():
    """The float32 fast check tests exponent bits: the largest, smallest, subnormal and signed-zero
    floats are finite and go in unchanged, bit for bit."""
    f32 = np.finfo(np.float32)
    row = np.array([f32.max, -f32.max, f32.tiny, f32.smallest_subnormal, -0.0, 0.0, 1.0], dtype=np.float32)
    data, state = ring.allocate(1, 2, row.size)
    assert ring.push(data, state, 0, row, ring.NO_STAMP, 0) == ring.OK
    out = np.empty((1, 2, row.size), dtype=np.float32)
    ring.read(data, state, 0, out, 0, ring.PAD_ZEROS)
    assert out[0, -1].tobytes() == row.tobytes()
    strided = np.repeat(row, 2)[::2]  # a non-contiguous row takes the element-wise path
    assert ring.push(data, state, 0, strided, ring.NO_STAMP, 0) == ring.OK
    ring.read(data, state, 0, out, 0, ring.PAD_ZEROS)
    assert out[0, -1].tobytes() == row.tobytes()
    strided_out = np.zeros((1, 2, 2 * row.size), dtype=np.float32)[:, :, ::2]  # and a non-contiguous out
    ring.read(data, state, 0, strided_out, 0, ring.PAD_ZEROS)
    np.testing.assert_array_equal(strided_out, out)


def test_block_strict_writes_nothing_nonstrict_skips_bad_rows():
    data, state = ring.allocate(3, 4, 2)
    empty = state.copy()
    idx = np.arange(3, dtype=np.int64)
    bad = np.empty(3, dtype=np.int64)
    block = np.array([[1, 2], [np.nan, 0], [5, 6]], dtype=np.float32)
    out = np.full((3, 4, 2), 7.0, dtype=np.float32)
    assert ring.push_block(data, state, idx, block, bad, True, ring.NO_STAMP, 0) == 1
    assert ring.push_block_read(data, state, idx, block, bad, True, ring.NO_STAMP, 0, out, ring.PAD_ZEROS) == 1
    assert list(bad) == [-1, 0, -1]
    np.testing.assert_array_equal(state, empty)
    assert (out == 7.0).all()  # strict and refused: nothing written, nothing read
    assert ring.push_block_read(data, state, idx, block, bad, False, ring.NO_STAMP, 0, out, ring.PAD_ZEROS) == 1
    assert list(state[:, ring.COUNT]) == [1, 0, 1]
    np.testing.assert_array_equal(out[:, -1], [[1, 2], [0, 0], [5, 6]])  # the skipped symbol reads as before
    assert not out[:, :-1].any()


def test_bad_index_and_shape_codes_write_nothing():
    data, state = ring.allocate(2, 3, 2)
    empty = state.copy()
    out = np.empty((1, 3, 2), dtype=np.float32)
    assert ring.push(data, state, 2, np.ones(2), ring.NO_STAMP, 0) == ring.BAD_INDEX
    assert ring.push(data, state, -1, np.ones(2), ring.NO_STAMP, 0) == ring.BAD_INDEX
    assert ring.push(data, state, 0, np.ones(3), ring.NO_STAMP, 0) == ring.BAD_SHAPE
    assert ring.read(data, state, 5, out, 0, 0) == ring.BAD_INDEX
    assert ring.read(data, state, 0, out, 1, 0) == ring.BAD_OUT
    assert ring.read(data, state, 0, np.empty((1, 2, 2), dtype=np.float32), 0, 0) == ring.BAD_OUT
    assert ring.push_read(data, state, 0, np.ones(2), ring.NO_STAMP, 0, np.empty((1, 3, 3), np.float32), 0, 0) == (
        ring.BAD_OUT
    )
    bad = np.empty(2, dtype=np.int64)
    assert (
        ring.push_block(data, state, np.array([0, 7]), np.ones((2, 2)), bad, True, ring.NO_STAMP, 0) == ring.BAD_INDEX
    )
    out2 = np.empty((1, 3, 2), dtype=np.float32)
    assert ring.push_block_read(data, state, np.array([0, 1]), np.ones((2, 2)), bad, True, 1, 0, out2, 0) == (
        ring.BAD_OUT
    )
    assert ring.read_batch(data, state, np.array([0, 1]), out2, 0) == ring.BAD_OUT
    np.testing.assert_array_equal(state, empty)
    assert not data.any()


def test_stamps_ttl_and_expiry():
    data, state = ring.allocate(2, 4, 1)
    for ts in (100, 110, 120):
        assert ring.push(data, state, 0, np.array([float(ts)]), ts, 15) == ring.OK
    assert state[0, ring.COUNT] == 3
    assert ring.push(data, state, 0, np.array([1.0]), 119, 15) == ring.BAD_TIME
    # A gap longer than ttl empties the ring before the new row goes in.
    assert ring.push(data, state, 0, np.array([200.0]), 200, 15) == ring.OK
    assert state[0, ring.COUNT] == 1 and state[0, ring.STAMP] == 200
    ring.push(data, state, 1, np.array([1.0]), 150, 15)
    assert ring.expire_before(state, 160) == 1  # symbol 1 (stamp 150) only
    assert list(state[:, ring.COUNT]) == [1, 0]


def test_warmup_compiles():
    ring.warmup()
