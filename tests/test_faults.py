"""Faults across real processes: SIGKILL in the middle of a state write leaves a complete old or
new file; the SPSC ring survives a consumer restart and a producer restart."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from fastinfer.buffers import SeqBufferManager
from fastinfer.features import StreamingFeatures
from fastinfer.kernels.spsc import SPSCRing
from fastinfer.lock import Lock, LockEntry, read_lock, write_lock

from ._hardening import hostile

KILLS = 6  # per kind of state: each a fresh child killed at a random moment
CTX = mp.get_context("fork")  # the children only write files / touch shared memory: fork is quick


# ---------------------------------------------------------------- atomic state files under SIGKILL


def _lock_versions(root: Path) -> list[Lock]:
    entries = [
        LockEntry(
            f"fwd_ret_{i}m",
            "CROSS_SECTIONAL",
            "ridge",
            None,
            None,
            f"targets/t{i}/model.joblib",
            f"{i:064x}",
            "native",
            reason="r" * 2000,
        )
        for i in range(300)
    ]  # ~700 KB: slow to write
    return [Lock(entries, created=f"v{k}") for k in range(2)]


def _buffer_versions() -> list[SeqBufferManager]:
    out = []
    for k in range(2):
        b = SeqBufferManager(60, 40, symbols=[f"S{i}" for i in range(100)])
        b.push_all(np.full((100, 40), float(k + 1)))
        out.append(b)
    return out


def _feature_versions() -> list[StreamingFeatures]:
    out = []
    for k in range(2):
        sf = StreamingFeatures([f"S{i}" for i in range(2000)])
        bar = np.full(2000, 100.0 + k)
        sf.update(bar, bar, bar, bar, bar)
        out.append(sf)
    return out


def _write_forever(kind: str, path: str, ready, writes) -> None:
    """Child: alternate between two versions of one state file until killed; counts writes."""
    from fastinfer.atomic import write_atomic_json

    root = Path(path).parent
    versions = {"lock": _lock_versions(root), "buffer": _buffer_versions(), "features": _feature_versions()}[kind]
    ready.set()
    k = 0
    while True:
        v = versions[k % 2]
        if kind == "lock":
            write_lock(root, v)
        elif kind == "buffer":
            v.save(path)
        else:
            write_atomic_json(path, v.state_dict())
        k += 1
        writes.value = k


def _read(kind: str, path: Path):
    """The version a state file holds (loading it fully, as a restart would)."""
    if kind == "lock":
        return read_lock(path.parent).created
    if kind == "buffer":
        return float(SeqBufferManager.load(path).get_sequence("S0")[0, -1, 0])
    return float(StreamingFeatures.from_state_dict(json.loads(path.read_text()))._state.closes[0, 0])


def _temps(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(".tmp")}


@pytest.mark.parametrize("kind", ["lock", "buffer", "features"])
def test_sigkill_mid_write_leaves_a_complete_version(tmp_path, kind):
    path = tmp_path / ("fastinfer.lock.json" if kind == "lock" else f"{kind}.json")
    rng = np.random.default_rng(7)
    allowed = {"lock": {"v0", "v1"}, "buffer": {1.0, 2.0}, "features": {100.0, 101.0}}[kind]
    seen, mid_write = set(), 0
    for attempt in range(KILLS):
        hostile("crash mid-write (SIGKILL)", f"{kind} #{attempt}")
        ready, writes = CTX.Event(), CTX.Value("i", 0)
        child = CTX.Process(target=_write_forever, args=(kind, str(path), ready, writes), daemon=True)
        child.start()
        assert ready.wait(60)
        start = writes.value
        deadline = time.monotonic() + 60
        while writes.value <= start and time.monotonic() < deadline:  # this child completed a write
            time.sleep(0.001)
        assert writes.value > start, "the writer never completed a write"
        temps = _temps(tmp_path)
        if attempt % 2:  # at a random moment (serialising, writing, renaming)
            time.sleep(float(rng.uniform(0.0, 0.05)))
        else:  # as soon as the writer's temp file appears: inside the write itself
            while not _temps(tmp_path) - temps and time.monotonic() < deadline:
                pass
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        mid_write += bool(_temps(tmp_path) - temps)
        value = _read(kind, path)  # whatever moment it died at: one complete version that loads
        assert value in allowed
        seen.add(value)
    assert mid_write, "no kill landed inside a write (no temp file left behind): the test proved nothing"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert all(p.startswith(f".{path.name}.") for p in leftovers)  # only the dead writers' temp files


# ---------------------------------------------------------------- SPSC ring restarts

WIDTH = 4
N = 20_000


def _payload(seqs: np.ndarray) -> np.ndarray:
    seqs = np.asarray(seqs, dtype=np.int64)
    v = ((seqs[:, None] * 2_654_435_761 + np.arange(WIDTH - 1) * 97) % 1_000_003).astype(np.float64)
    return np.column_stack([v, v.sum(axis=1)])


def _consume(name: str, counts_name: str, n: int) -> None:
    """Child consumer: peek, record each record (count per seq), then commit; until n are done."""
    ring = SPSCRing.attach(name)
    shm = shared_memory.SharedMemory(name=counts_name)
    counts = np.ndarray((n,), dtype=np.int64, buffer=shm.buf)
    out, seqs = np.empty((64, WIDTH)), np.empty(64, dtype=np.int64)
    while ring.tail < n:
        k = ring.peek_many(out, seqs, timeout=0.05)
        for j in range(k):
            assert (out[j] == _payload(seqs[j : j + 1])[0]).all()  # never torn
            counts[seqs[j]] += 1
        ring.commit(k)


def _produce(name: str, n: int) -> None:
    """Child producer: attach and continue at the ring's next sequence number."""
    ring = SPSCRing.attach(name, timeout=30.0)
    while ring.next_seq < n:
        start = ring.next_seq
        seqs = np.arange(start, min(start + 50, n), dtype=np.int64)
        ring.put_many(_payload(seqs), seqs)
        time.sleep(0.0005)  # a feed's pace: restarts then land mid-stream


def _attach_counts(n):
    shm = shared_memory.SharedMemory(create=True, size=8 * n)
    counts = np.ndarray((n,), dtype=np.int64, buffer=shm.buf)
    counts[:] = 0
    return shm, counts


@pytest.fixture(autouse=True, scope="module")
def compiled_kernels():
    from fastinfer.kernels import spsc

    spsc.warmup()  # forked children inherit compiled kernels instead of compiling inside the kill window


def test_consumer_restart_resumes_at_the_last_committed_sequence_number():
    ring = SPSCRing.create(256, WIDTH, timeout=30.0)
    shm, counts = _attach_counts(N)
    rng = np.random.default_rng(8)
    kills = tails = 0
    try:
        producer = CTX.Process(target=_produce, args=(ring.name, N), daemon=True)
        producer.start()
        deadline = time.monotonic() + 120
        while ring.tail < N:
            assert time.monotonic() < deadline, (
                f"stalled at tail {ring.tail}, head {ring.head}, producer {producer.exitcode}"
            )
            hostile("process restart", f"consumer SIGKILL #{kills}")
            before = ring.tail
            child = CTX.Process(target=_consume, args=(ring.name, shm.name, N), daemon=True)
            child.start()
            time.sleep(float(rng.uniform(0.02, 0.15)))
            if child.is_alive() and ring.tail < N:
                os.kill(child.pid, signal.SIGKILL)
                kills += 1
            child.join(10)
            assert child.exitcode in (0, -signal.SIGKILL), child.exitcode  # a consumer never fails by itself
            tails += ring.tail > before
        producer.join(30)
        assert producer.exitcode == 0 and kills >= 3 and tails >= 1
        # No record lost; a record is seen twice only if its consumer died between processing it
        # and committing it (at most one batch per kill), and the seq numbers expose exactly those.
        assert (counts >= 1).all()
        assert int((counts - 1).sum()) <= 64 * kills
        assert ring.tail == ring.head == N and len(ring) == 0
    finally:
        del counts
        shm.close()
        shm.unlink()
        ring.close()
        ring.unlink()


def test_producer_restart_continues_the_sequence():
    ring = SPSCRing.create(256, WIDTH)
    rng = np.random.default_rng(9)
    received = []
    out, seqs = np.empty((128, WIDTH)), np.empty(128, dtype=np.int64)
    kills = 0
    try:
        while ring.next_seq < N or len(ring):
            if ring.next_seq < N:
                hostile("process restart", f"producer SIGKILL #{kills}")
                child = CTX.Process(target=_produce, args=(ring.name, N), daemon=True)
                child.start()
                deadline = time.monotonic() + float(rng.uniform(0.02, 0.1))
                while time.monotonic() < deadline:  # consume while it produces
                    k = ring.get_many(out, seqs, timeout=0.005)
                    received.append((seqs[:k].copy(), out[:k].copy()))
                if child.is_alive():
                    os.kill(child.pid, signal.SIGKILL)
                    kills += 1
                child.join(10)
            k = ring.get_many(out, seqs, timeout=0.01)
            received.append((seqs[:k].copy(), out[:k].copy()))
        got = np.concatenate([s for s, _ in received])
        records = np.concatenate([r for _, r in received])
        np.testing.assert_array_equal(got, np.arange(N))  # in order, none lost, none twice
        np.testing.assert_array_equal(records, _payload(got))  # none torn by a producer dying mid-batch
        assert kills >= 2 and ring.dropped == 0
    finally:
        ring.close()
        ring.unlink()
