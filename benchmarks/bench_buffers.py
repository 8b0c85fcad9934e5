"""TARGETS P5: sequence buffers and the cross-process ring, each against its baselines.

Run: ``.venv/bin/python -m pytest benchmarks/bench_buffers.py --benchmark-only``

* ``seq-push-get`` (one symbol, T=60, F=200 as in the spec): fastinfer push +
  get_sequence(out=…) vs the upstream ``np.roll`` on every push, ``collections.deque`` +
  ``np.stack``, and the floor: a bare numpy slice copy of a (T, F) window. Target: within 2×
  the slice copy.
* ``seq-batch`` (100 symbols, T=60, F=32, one bar): push_all + get_batch(out=…) vs a
  per-symbol ``np.roll`` loop and a per-symbol deque + ``np.stack`` loop.
* ``spsc`` (records of 8 float64 from a producer process to this one): the shared-memory
  ring, one record per call and in batches, vs ``multiprocessing.Queue``. Target: ≥ 10×.

Ratios are printed at the end of the module.
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

_results: dict[str, dict[str, tuple[float, float]]] = collections.defaultdict(dict)

# (group, measured, baseline, target text)
_RATIOS = [
    ("seq-push-get", "fastinfer", "bare_slice_copy", "≤ 2× (P5)"),
    ("seq-push-get", "np_roll", "fastinfer", ""),
    ("seq-push-get", "deque_stack", "fastinfer", ""),
    ("seq-batch", "np_roll_loop", "fastinfer_batch", ""),
    ("seq-batch", "deque_stack_loop", "fastinfer_batch", ""),
    ("spsc", "mp_queue", "fastinfer_spsc_single", "≥ 10× (P5)"),
    ("spsc", "mp_queue", "fastinfer_spsc_batch", "≥ 10× (P5)"),
]


class _RatioReport:
    """Prints the ratios after pytest-benchmark's tables (terminal summary, last)."""

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        write = terminalreporter.write_line
        write("")
        write("bench_buffers: ratios of mean (median) times, same run")
        for group, slow, fast, target in _RATIOS:
            a, b = _results[group].get(slow), _results[group].get(fast)
            if a is None or b is None:
                continue
            write(f"  {group:13s} {slow} / {fast} = {a[0] / b[0]:7.2f}× ({a[1] / b[1]:.2f}×)  {target}")
        for name in ("fastinfer_spsc_single", "fastinfer_spsc_batch", "mp_queue"):
            if name in _results["spsc"]:
                write(f"  spsc {name}: {N_RECORDS / _results['spsc'][name][1] / 1e6:.3f} M records/s (median)")


@pytest.fixture(scope="module", autouse=True)
def report(request):
    plugin = _RatioReport()
    request.config.pluginmanager.register(plugin, "bench_buffers_ratios")
    yield


def _record(benchmark, group: str, name: str) -> None:
    _results[group][name] = (benchmark.stats.stats.mean, benchmark.stats.stats.median)


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


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_fastinfer(benchmark, rows):
    buffer = SeqBufferManager(T, F, "AAPL")
    out = np.empty((1, T, F), dtype=np.float32)
    for row in rows[:T]:
        buffer.push(row)
    next_row = _cycle(rows)

    def step():
        buffer.push("AAPL", next_row())
        buffer.get_sequence("AAPL", out=out)

    benchmark(step)
    _record(benchmark, "seq-push-get", "fastinfer")


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_bare_slice_copy(benchmark, rows):
    window = rows[:T].copy()
    out = np.empty((1, T, F), dtype=np.float32)
    next_row = _cycle(rows)

    def step():
        next_row()  # the same per-call bookkeeping as the others
        out[0] = window[:]

    benchmark(step)
    _record(benchmark, "seq-push-get", "bare_slice_copy")


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_np_roll(benchmark, rows):
    state = {"buf": rows[:T].copy()}
    next_row = _cycle(rows)

    def step():
        buf = np.roll(state["buf"], -1, axis=0)
        buf[-1] = next_row()
        state["buf"] = buf
        return buf[np.newaxis]

    benchmark(step)
    _record(benchmark, "seq-push-get", "np_roll")


@pytest.mark.benchmark(group="seq-push-get")
def test_seq_push_get_deque_stack(benchmark, rows):
    dq = collections.deque(rows[:T], maxlen=T)
    next_row = _cycle(rows)

    def step():
        dq.append(next_row())
        return np.stack(dq)[np.newaxis]

    benchmark(step)
    _record(benchmark, "seq-push-get", "deque_stack")


# ---------------------------------------------------------------- many symbols, one bar


@pytest.fixture(scope="module")
def blocks():
    return np.random.default_rng(1).standard_normal((64, N_SYM, F_BATCH)).astype(np.float32)


@pytest.mark.benchmark(group="seq-batch")
def test_seq_batch_fastinfer_batch(benchmark, blocks):
    buffer = SeqBufferManager(T, F_BATCH, symbols=[f"S{i}" for i in range(N_SYM)])
    out = np.empty((N_SYM, T, F_BATCH), dtype=np.float32)
    idx = buffer.indices(buffer.symbols)
    state = {"k": 0}

    def step():
        state["k"] = (state["k"] + 1) & 63
        buffer.push_all(blocks[state["k"]])
        buffer.get_batch(idx, out=out)

    benchmark(step)
    _record(benchmark, "seq-batch", "fastinfer_batch")


@pytest.mark.benchmark(group="seq-batch")
def test_seq_batch_np_roll_loop(benchmark, blocks):
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
    _record(benchmark, "seq-batch", "np_roll_loop")


@pytest.mark.benchmark(group="seq-batch")
def test_seq_batch_deque_stack_loop(benchmark, blocks):
    dqs = [collections.deque([np.zeros(F_BATCH, np.float32)] * T, maxlen=T) for _ in range(N_SYM)]
    state = {"k": 0}

    def step():
        state["k"] = (state["k"] + 1) & 63
        block = blocks[state["k"]]
        for s in range(N_SYM):
            dqs[s].append(block[s])
        return np.stack([np.stack(dq) for dq in dqs])

    benchmark(step)
    _record(benchmark, "seq-batch", "deque_stack_loop")


# ---------------------------------------------------------------- across processes


def _spsc_producer(conn, name: str) -> None:
    ring = SPSCRing.attach(name, timeout=60.0)
    records = np.random.default_rng(2).standard_normal((N_RECORDS, WIDTH))
    while (msg := conn.recv()) is not None:
        n, batch = msg
        if batch:
            for start in range(0, n, batch):
                ring.put_many(records[start:start + batch])
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
def test_spsc_fastinfer_spsc(benchmark, spsc_ring, batch):
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
    _record(benchmark, "spsc", "fastinfer_spsc_batch" if batch else "fastinfer_spsc_single")


@pytest.mark.benchmark(group="spsc")
def test_spsc_mp_queue(benchmark):
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
    _record(benchmark, "spsc", "mp_queue")
