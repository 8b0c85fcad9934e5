"""TARGETS P5: sequence buffers and the cross-process ring, each against its baselines.

Run: ``.venv/bin/python -m pytest benchmarks/bench_buffers.py --benchmark-only``

* ``seq-push-get`` (one symbol, T=60, F=200 as in the spec): fastinfer
  ``push_and_get_sequence(out=…)`` (one jitted call over the mirrored ring) vs the floor, a
  bare numpy slice copy of a (T, F) window, and vs ``push`` then ``get_sequence`` (two calls),
  the upstream ``np.roll`` on every push, ``collections.deque`` + ``np.stack``. Target: within
  2× the slice copy.
* ``seq-batch`` (100 symbols, T=60, F=32, one bar): ``push_all_and_get_batch(out=…)`` vs
  ``push_all`` then ``get_batch`` (two calls), a per-symbol ``np.roll`` loop and a per-symbol
  deque + ``np.stack`` loop.
* ``spsc`` (records of 8 float64 from a producer process to this one): the shared-memory
  ring, one record per call and in batches, vs ``multiprocessing.Queue``. Target: ≥ 10×.

Ratios are recorded in the shared groups of ``benchmarks/conftest.py`` (printed at the end of
the run, summarised by ``fastinfer bench``).
"""

from __future__ import annotations

import collections
import multiprocessing as mp

import numpy as np
import pytest

from fastinfer.buffers import SeqBufferManager
from fastinfer.kernels.spsc import SPSCRing

T, F = 60, 200
N_SYM, F_BATCH = 100, 32
WIDTH = 8
N_RECORDS = 100_000
SPSC_BATCH = 256

# Shared ratio groups (benchmarks/conftest.py); P5's targets are read from their names.
PUSH_GET = "P5 push + get_sequence, T=60 F=200"
BATCH = "seq buffers, 100 symbols one bar"
SPSC_ONE = "P5 SPSC ring, one record per call"
SPSC_MANY = "P5 SPSC ring, batches of 256"


# ---------------------------------------------------------------- one symbol


@pytest.fixture(scope="module")
def rows():
    return np.random.default_rng(0).standard_normal((4096, F)).astype(np.float32)


def _cycle(rows):
    state = {"k": 0}

    def next_row():
        state["k"] = (state["k"] + 1) & 4095
        return rows[state["k"]]

    return next_row


def _full_buffer(rows) -> SeqBufferManager:
    buffer = SeqBufferManager(T, F, "AAPL")
    for row in rows[:T]:
        buffer.push(row)
    return buffer


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_fastinfer(benchmark, record_ratio, rows):
    buffer = _full_buffer(rows)
    out = np.empty((1, T, F), dtype=np.float32)
    next_row = _cycle(rows)

    def step():
        buffer.push_and_get_sequence("AAPL", next_row(), out)

    step()  # compile (or load from cache) the kernel before pytest-benchmark calibrates its rounds
    benchmark(step)
    record_ratio(PUSH_GET, subject=True, name="fastinfer push_and_get_sequence(out=)")


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_fastinfer_two_calls(benchmark, record_ratio, rows):
    buffer = _full_buffer(rows)
    out = np.empty((1, T, F), dtype=np.float32)
    next_row = _cycle(rows)

    def step():
        buffer.push("AAPL", next_row())
        buffer.get_sequence("AAPL", out=out)

    step()
    benchmark(step)
    record_ratio(PUSH_GET, name="fastinfer push then get_sequence(out=), two calls")


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_bare_slice_copy(benchmark, record_ratio, rows):
    window = rows[:T].copy()
    out = np.empty((1, T, F), dtype=np.float32)
    next_row = _cycle(rows)

    def step():
        next_row()  # the same per-call bookkeeping as the others
        out[0] = window[:]

    benchmark(step)
    record_ratio(PUSH_GET, name="bare numpy slice copy of the window")


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_np_roll(benchmark, record_ratio, rows):
    state = {"buf": rows[:T].copy()}
    next_row = _cycle(rows)

    def step():
        buf = np.roll(state["buf"], -1, axis=0)
        buf[-1] = next_row()
        state["buf"] = buf
        return buf[np.newaxis]

    benchmark(step)
    record_ratio(PUSH_GET, name="np.roll per push")


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_deque_stack(benchmark, record_ratio, rows):
    dq = collections.deque(rows[:T], maxlen=T)
    next_row = _cycle(rows)

    def step():
        dq.append(next_row())
        return np.stack(dq)[np.newaxis]

    benchmark(step)
    record_ratio(PUSH_GET, name="deque + np.stack")


# ---------------------------------------------------------------- many symbols, one bar


@pytest.fixture(scope="module")
def blocks():
    return np.random.default_rng(1).standard_normal((64, N_SYM, F_BATCH)).astype(np.float32)


@pytest.mark.benchmark(group="seq-batch")
def test_seq_batch_fastinfer_batch(benchmark, record_ratio, blocks):
    buffer = SeqBufferManager(T, F_BATCH, symbols=[f"S{i}" for i in range(N_SYM)])
    out = np.empty((N_SYM, T, F_BATCH), dtype=np.float32)
    state = {"k": 0}

    def step():
        state["k"] = (state["k"] + 1) & 63
        buffer.push_all_and_get_batch(blocks[state["k"]], out)

    step()
    benchmark(step)
    record_ratio(BATCH, subject=True, name="fastinfer push_all_and_get_batch(out=)")


@pytest.mark.benchmark(group="seq-batch")
def test_seq_batch_fastinfer_two_calls(benchmark, record_ratio, blocks):
    buffer = SeqBufferManager(T, F_BATCH, symbols=[f"S{i}" for i in range(N_SYM)])
    out = np.empty((N_SYM, T, F_BATCH), dtype=np.float32)
    idx = buffer.indices(buffer.symbols)
    state = {"k": 0}

    def step():
        state["k"] = (state["k"] + 1) & 63
        buffer.push_all(blocks[state["k"]])
        buffer.get_batch(idx, out=out)

    step()
    benchmark(step)
    record_ratio(BATCH, name="fastinfer push_all then get_batch(out=), two calls")


@pytest.mark.benchmark(group="seq-batch")
def test_seq_batch_np_roll_loop(benchmark, record_ratio, blocks):
    bufs = [np.zeros((T, F_BATCH), dtype=np.float32) for _ in range(N_SYM)]
    state = {"k": 0}

    def step():
        state["k"] = (state["k"] + 1) & 63
        block = blocks[state["k"]]
        for s in range(N_SYM):
            bufs[s] = np.roll(bufs[s], -1, axis=0)
            bufs[s][-1] = block[s]
        return np.stack(bufs)

    benchmark(step)
    record_ratio(BATCH, name="np.roll per symbol")


@pytest.mark.benchmark(group="seq-batch")
def test_seq_batch_deque_stack_loop(benchmark, record_ratio, blocks):
    dqs = [collections.deque([np.zeros(F_BATCH, np.float32)] * T, maxlen=T) for _ in range(N_SYM)]
    state = {"k": 0}

    def step():
        state["k"] = (state["k"] + 1) & 63
        block = blocks[state["k"]]
        for s in range(N_SYM):
            dqs[s].append(block[s])
        return np.stack([np.stack(dq) for dq in dqs])

    benchmark(step)
    record_ratio(BATCH, name="deque + np.stack per symbol")


# ---------------------------------------------------------------- across processes


def _spsc_producer(conn, name: str) -> None:
    ring = SPSCRing.attach(name, timeout=60.0)
    records = np.random.default_rng(2).standard_normal((N_RECORDS, WIDTH))
    while (msg := conn.recv()) is not None:
        n, batch = msg
        if batch:
            for start in range(0, n, batch):
                ring.put_many(records[start : start + batch])
        else:
            for i in range(n):
                ring.put(records[i])
    ring.close()


def _queue_producer(conn, queue) -> None:
    records = np.random.default_rng(2).standard_normal((N_RECORDS, WIDTH))
    while (msg := conn.recv()) is not None:
        for i in range(msg):
            queue.put(records[i])


def _serve(target, *args):
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    return parent, proc


@pytest.fixture(scope="module")
def spsc_ring():
    ring = SPSCRing.create(4096, WIDTH, timeout=60.0)
    conn, proc = _serve(_spsc_producer, ring.name)
    yield ring, conn
    conn.send(None)
    proc.join(30)
    ring.close()
    ring.unlink()


@pytest.mark.benchmark(group="spsc")
@pytest.mark.parametrize("batch", [0, SPSC_BATCH], ids=["single", "batch"])
def test_spsc_fastinfer_spsc(benchmark, record_ratio, spsc_ring, batch):
    ring, conn = spsc_ring
    one = np.empty(WIDTH)
    out = np.empty((SPSC_BATCH, WIDTH))
    seqs = np.empty(SPSC_BATCH, dtype=np.int64)

    def transfer():
        conn.send((N_RECORDS, batch))
        got = 0
        if batch:
            while got < N_RECORDS:
                got += ring.get_many(out, seqs, timeout=None)
        else:
            while got < N_RECORDS:
                ring.get(one, timeout=None)
                got += 1

    transfer()  # the producer's first round compiles/loads its kernels
    benchmark.pedantic(transfer, rounds=3, iterations=1)
    record_ratio(
        SPSC_MANY if batch else SPSC_ONE,
        subject=True,
        name=f"fastinfer SPSCRing.{'get_many' if batch else 'get'}, {N_RECORDS:,} records",
    )


@pytest.mark.benchmark(group="spsc")
def test_spsc_mp_queue(benchmark, record_ratio):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue(maxsize=4096)
    conn, proc = _serve(_queue_producer, queue)

    def transfer():
        conn.send(N_RECORDS)
        for _ in range(N_RECORDS):
            queue.get()

    try:
        benchmark.pedantic(transfer, rounds=2, iterations=1)
    finally:
        conn.send(None)
        proc.join(30)
    for group in (SPSC_ONE, SPSC_MANY):
        record_ratio(group, name=f"multiprocessing.Queue, {N_RECORDS:,} records")
