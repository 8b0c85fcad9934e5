"""The shared-memory SPSC ring: in-process semantics and a two-process stress test."""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing import shared_memory

import numpy as np
import pytest

from fastinfer.kernels import spsc
from fastinfer.kernels.spsc import SPSCRing

WIDTH = 8


def payload(seqs: np.ndarray) -> np.ndarray:
    """Records that are a function of their seq: 7 values plus a weighted checksum (exact in float64)."""
    seqs = np.asarray(seqs, dtype=np.int64)
    cols = np.arange(WIDTH - 1, dtype=np.int64)
    values = ((seqs[:, None] * 2_654_435_761 + cols * 97_531 + 12_345) % 1_000_003).astype(np.float64)
    checksum = values @ np.arange(1, WIDTH, dtype=np.float64)
    return np.column_stack([values, checksum])


def verify(seqs: np.ndarray, records: np.ndarray) -> None:
    np.testing.assert_array_equal(records[:, -1], records[:, :-1] @ np.arange(1, WIDTH, dtype=np.float64))
    np.testing.assert_array_equal(records, payload(seqs))


@pytest.fixture
def ring_factory():
    made = []

    def make(*args, **kwargs):
        ring = SPSCRing.create(*args, **kwargs)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        ring.close()
        ring.unlink()


# ---------------------------------------------------------------- in process


def test_wraparound_many_cycles_single_and_batch(ring_factory):
    rng = np.random.default_rng(20)
    ring = ring_factory(16, WIDTH)
    assert ring.capacity == 16
    sent = got = 0
    out = np.empty((40, WIDTH))
    out_seqs = np.empty(40, dtype=np.int64)
    one = np.empty(WIDTH)
    while got < 5000:  # ~300 laps of the ring
        n = min(int(rng.integers(1, 17)), ring.capacity - len(ring))
        if rng.random() < 0.3 and n:
            assert ring.put(payload([sent])[0])
            sent += 1
        elif n:
            seqs = np.arange(sent, sent + n)
            assert ring.put_many(payload(seqs)) == n  # default seqs continue the count
            sent += n
        if rng.random() < 0.3:
            seq = ring.get(one)
            if seq is not None:
                assert seq == got
                verify(np.array([seq]), one[None])
                got += 1
        else:
            k = ring.get_many(out[: int(rng.integers(1, 41))], out_seqs)
            np.testing.assert_array_equal(out_seqs[:k], np.arange(got, got + k))
            verify(out_seqs[:k], out[:k])
            got += k
    assert ring.head == sent and ring.tail == got and ring.dropped == 0


def test_capacity_rounds_up_and_empty_get(ring_factory):
    ring = ring_factory(5, 2, np.float32)
    assert ring.capacity == 8 and ring.dtype == np.float32
    assert ring.get(np.empty(2, dtype=np.float32)) is None
    assert ring.get(np.empty(2, dtype=np.float32), timeout=0.01) is None
    with pytest.raises(ValueError, match="shape"):
        ring.put([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="out must be"):
        ring.get(np.empty(3, dtype=np.float32))


def test_drop_mode_counts_exactly(ring_factory):
    ring = ring_factory(8, WIDTH, on_full="drop")
    results = [ring.put(payload([i])[0]) for i in range(20)]
    assert results == [True] * 8 + [False] * 12 and ring.dropped == 12
    assert ring.put_many(payload(np.arange(20, 30))) == 0 and ring.dropped == 22
    out, seqs = np.empty((8, WIDTH)), np.empty(8, dtype=np.int64)
    assert ring.get_many(out, seqs) == 8
    np.testing.assert_array_equal(seqs, np.arange(8))
    assert ring.put_many(payload(np.arange(30, 40))) == 8 and ring.dropped == 24
    ring.get_many(out, seqs)
    np.testing.assert_array_equal(seqs, np.arange(30, 38))  # default seqs count offered records


def test_block_mode_times_out_without_changing_the_ring(ring_factory):
    ring = ring_factory(4, WIDTH, timeout=0.05)
    ring.put_many(payload(np.arange(4)))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="full"):
        ring.put(payload([4])[0])
    assert 0.04 <= time.monotonic() - start < 2.0
    with pytest.raises(TimeoutError, match="0 of 2"):
        ring.put_many(payload(np.arange(4, 6)))
    assert (ring.head, ring.tail, ring.dropped) == (4, 0, 0)


def test_consumer_resumes_after_reattach(ring_factory):
    producer = ring_factory(64, WIDTH)
    producer.put_many(payload(np.arange(50)))
    out, seqs = np.empty((20, WIDTH)), np.empty(20, dtype=np.int64)
    consumer = SPSCRing.attach(producer.name)
    assert consumer.get_many(out, seqs) == 20
    consumer.close()  # a "restart"
    consumer = SPSCRing.attach(producer.name)
    assert consumer.tail == 20
    assert consumer.get_many(out, seqs) == 20
    np.testing.assert_array_equal(seqs, np.arange(20, 40))
    consumer.close()


def test_attach_validates_the_segment():
    with pytest.raises(FileNotFoundError):
        SPSCRing.attach("fastinfer_no_such_ring")
    other = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(ValueError, match="not an SPSC ring"):
            SPSCRing.attach(other.name)
    finally:
        other.close()
        other.unlink()


def test_warmup_compiles():
    spsc.warmup()


# ---------------------------------------------------------------- two processes

N_STRESS = 1_000_000


def _producer(name: str, n: int, seed: int, single_every: int) -> None:
    ring = SPSCRing.attach(name, timeout=30.0)
    rng = np.random.default_rng(seed)
    sent = 0
    while sent < n:
        if single_every and rng.integers(single_every) == 0:
            ring.put(payload([sent])[0], seq=sent)
            sent += 1
            continue
        k = min(int(rng.integers(1, 600)), n - sent)
        seqs = np.arange(sent, sent + k, dtype=np.int64)
        assert ring.put_many(payload(seqs), seqs) == k
        sent += k
    ring.close()


def _drop_producer(name: str, n: int) -> None:
    ring = SPSCRing.attach(name, on_full="drop")
    for start in range(0, n, 100):
        seqs = np.arange(start, min(start + 100, n), dtype=np.int64)
        records = payload(seqs)
        for i in range(seqs.size):  # one at a time, as a feed handler would
            ring.put(records[i], seq=int(seqs[i]))
    ring.close()


def _spawn(target, *args):
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def test_two_process_stress_nothing_lost_duplicated_or_torn(ring_factory):
    ring = ring_factory(1024, WIDTH)
    proc = _spawn(_producer, ring.name, N_STRESS, 21, 50)
    rng = np.random.default_rng(22)
    out, seqs, one = np.empty((700, WIDTH)), np.empty(700, dtype=np.int64), np.empty(WIDTH)
    got = 0
    deadline = time.monotonic() + 120
    while got < N_STRESS:
        assert time.monotonic() < deadline, f"stalled after {got} records"
        if rng.integers(50) == 0:
            seq = ring.get(one, timeout=1.0)
            if seq is None:
                continue
            assert seq == got
            verify(np.array([seq]), one[None])
            got += 1
            continue
        k = ring.get_many(out[: int(rng.integers(1, 701))], seqs, timeout=1.0)
        np.testing.assert_array_equal(seqs[:k], np.arange(got, got + k))  # no loss, no duplicate
        verify(seqs[:k], out[:k])  # no torn record
        got += k
        if k == 0 and not proc.is_alive():
            break
    proc.join(30)
    assert proc.exitcode == 0
    assert got == N_STRESS and ring.head == N_STRESS and ring.tail == N_STRESS and ring.dropped == 0
    assert ring.get(one) is None


def test_two_process_drop_mode_accounts_for_every_record(ring_factory):
    n = 100_000
    ring = ring_factory(64, WIDTH)
    proc = _spawn(_drop_producer, ring.name, n)
    out, seqs = np.empty((16, WIDTH)), np.empty(16, dtype=np.int64)
    received = []
    while proc.is_alive() or len(ring):
        k = ring.get_many(out, seqs, timeout=0.01)
        if k:
            verify(seqs[:k], out[:k])
            received.append(seqs[:k].copy())
            time.sleep(0.0002)  # a slow consumer, so the producer has to drop
    proc.join(30)
    assert proc.exitcode == 0
    got = np.concatenate(received)
    assert np.all(np.diff(got) > 0)  # in order, no duplicates
    assert got.size + ring.dropped == n and ring.head == got.size
    missing = np.setdiff1d(np.arange(n), got)
    assert missing.size == ring.dropped > 0
