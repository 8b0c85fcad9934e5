"""Faults across real processes: SIGKILL in the middle of a state write leaves a complete old or
new file; the SPSC ring survives a consumer restart, a producer restart, and its creator's
death or exit."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
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


def _produce(name: str, n: int, limit=None) -> None:
    """Child producer: attach and continue at the ring's next sequence number; with ``limit``
    (a shared int) it publishes no sequence number at or past ``limit.value`` until raised."""
    ring = SPSCRing.attach(name, timeout=30.0)
    while ring.next_seq < n:
        start = ring.next_seq
        stop = min(start + 50, n, n if limit is None else limit.value)
        if stop > start:
            seqs = np.arange(start, stop, dtype=np.int64)
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


CONSUMER_KILLS = 5
AHEAD = 200  # records the producer may publish past a kill point, so a kill lands mid-batch


def test_consumer_restart_resumes_at_the_last_committed_sequence_number():
    """Exactly CONSUMER_KILLS consumers are SIGKILLed, each while records it has not consumed
    wait in the stream: the producer is held at ``limit`` (a kill point + AHEAD) until the kill,
    so no machine is fast enough for the stream to end first (it once did, at random sleeps)."""
    ring = SPSCRing.create(256, WIDTH, timeout=30.0)
    shm, counts = _attach_counts(N)
    rng = np.random.default_rng(8)
    # Tails at which the running consumer is killed: distinct, spread over the stream, increasing.
    kill_points = np.sort(rng.choice(np.arange(AHEAD, N - 2 * AHEAD), size=CONSUMER_KILLS, replace=False))
    limit = CTX.Value("q", 0, lock=False)
    killed_at = []
    try:
        producer = CTX.Process(target=_produce, args=(ring.name, N, limit), daemon=True)
        producer.start()
        for k, point in enumerate(kill_points):
            hostile("process restart", f"consumer SIGKILL #{k}")
            limit.value = int(point) + AHEAD
            before = ring.tail
            child = CTX.Process(target=_consume, args=(ring.name, shm.name, N), daemon=True)
            child.start()
            deadline = time.monotonic() + 120
            while ring.tail < point:  # the consumer is working through records below the limit
                assert child.exitcode is None, f"consumer died by itself ({child.exitcode})"
                assert time.monotonic() < deadline, f"stalled at tail {ring.tail}, head {ring.head}"
                time.sleep(0.0002)
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            assert child.exitcode == -signal.SIGKILL
            killed_at.append(ring.tail)
            assert before < ring.tail < N  # it made progress, and died with the stream unfinished
        limit.value = N
        last = CTX.Process(target=_consume, args=(ring.name, shm.name, N), daemon=True)
        last.start()
        last.join(120)
        producer.join(30)
        assert last.exitcode == 0 and producer.exitcode == 0
        assert len(killed_at) == CONSUMER_KILLS and killed_at == sorted(killed_at)
        # No record lost; a record is seen twice only if its consumer died between processing it
        # and committing it (at most one batch per kill), and the seq numbers expose exactly those.
        assert (counts >= 1).all()
        assert int((counts - 1).sum()) <= 64 * CONSUMER_KILLS
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


# ---------------------------------------------------------------- the ring outlives its creator (#16.6)

CREATOR = """
import sys, time
import numpy as np
from multiprocessing import resource_tracker
from fastinfer.kernels.spsc import SPSCRing

ring = SPSCRing.create(64, 4)
seqs = np.arange(40, dtype=np.int64)
ring.put_many(np.arange(160, dtype=np.float64).reshape(40, 4) * 1.5, seqs)
resource_tracker.ensure_running()  # the tracker that would unlink a tracked segment at our exit
print(ring.name, resource_tracker._resource_tracker._pid, flush=True)
if sys.argv[1] == "exit":
    ring.close()  # detach without unlinking, and exit normally
    sys.exit(0)
time.sleep(600)  # until SIGKILLed
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", ["SIGKILL", "exit"])
def test_ring_outlives_its_creator_until_unlinked(how):
    """A fresh interpreter (its own resource tracker) creates a ring, fills it and dies; once
    its tracker has exited too, another process attaches and reads every record."""
    hostile("process restart", f"ring creator {how}")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    creator = subprocess.Popen(
        [sys.executable, "-c", CREATOR, how], stdout=subprocess.PIPE, text=True, env=env, cwd=root
    )
    name, tracker = creator.stdout.readline().split()
    if how == "SIGKILL":
        creator.kill()
    assert creator.wait(60) == (-signal.SIGKILL if how == "SIGKILL" else 0)
    deadline = time.monotonic() + 60
    while not _gone(int(tracker)):  # the tracker cleans up (unlinks what it tracks) as it exits
        assert time.monotonic() < deadline, "the creator's resource tracker never exited"
        time.sleep(0.01)
    ring = SPSCRing.attach(name)  # FileNotFoundError if the segment died with its creator
    try:
        out, seqs = np.empty((64, 4)), np.empty(64, dtype=np.int64)
        assert ring.get_many(out, seqs) == 40 and len(ring) == 0
        np.testing.assert_array_equal(seqs[:40], np.arange(40))
        np.testing.assert_array_equal(out[:40], np.arange(160, dtype=np.float64).reshape(40, 4) * 1.5)
    finally:
        ring.close()
        ring.unlink()
    with pytest.raises(FileNotFoundError):  # unlinked means gone
        SPSCRing.attach(name)
