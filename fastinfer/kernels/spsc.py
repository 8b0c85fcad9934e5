"""Single-producer single-consumer ring of fixed-size records over ``multiprocessing.shared_memory``.

A market-data process ``put``s records (a bar or a feature row, plus an int64 sequence
number); an inference process ``get``s them: no locks, no pickling, no syscalls on the fast
path. One process (or thread) may produce and one may consume; each side owns one counter.

Segment layout (bytes)::

    0     header   int64[16]: magic, version, capacity, width, dtype code
    128   head     int64: records ever published (written by the producer only); dropped at 136
    256   tail     int64: records ever consumed  (written by the consumer only)
    384   seqs     int64[capacity]
    ...   payload  dtype[capacity, width]   (64-byte aligned)

``head`` and ``tail`` live on separate 128-byte lines so the two sides do not false-share.
They only grow (int64 will not wrap), slot = counter & (capacity - 1), and because they are
in the segment a restarted consumer that attaches again resumes at the first record it has
not consumed, and a restarted producer continues at ``next_seq``. ``peek_many`` + ``commit``
consume only once the records are processed, so a consumer killed in between sees them again.

Memory ordering. numba has no atomics, so this module emits the few LLVM instructions it
needs through ``numba.extending.intrinsic``: relaxed ("monotonic") 8-byte loads/stores of
``head``/``tail`` and acquire/release fences. The protocol is Lamport's SPSC queue:

* producer: read ``tail`` (relaxed), **acquire fence**, check space, write the seq numbers
  and payloads into the free slots, **release fence**, store ``head + n`` (relaxed);
* consumer: read ``head`` (relaxed), **acquire fence**, copy the slots below ``head``,
  **release fence**, store ``tail + n`` (relaxed).

A release fence followed by a relaxed store synchronises with a relaxed load followed by an
acquire fence that reads that store (C++11 fence-fence synchronisation, which LLVM
implements), so a consumer that sees ``head = h`` sees every slot written before ``h`` was
published: a record is never read before it is complete (no torn reads). Symmetrically the
producer never overwrites a slot before the consumer's copy of it has finished. Counters are
aligned int64, so the relaxed accesses are single, untearable loads/stores. On x86-64 (TSO)
the fences compile to nothing but still stop the compiler from moving memory accesses across
them; on AArch64 they become ``dmb`` barriers. Waiting (spin, then ``sched_yield``, then short
sleeps) happens in Python between kernel calls, so no kernel loops on a shared counter.

Full ring: ``on_full="block"`` waits up to ``timeout`` seconds and then raises
``TimeoutError``; ``on_full="drop"`` drops the record and counts it in the segment
(``dropped``), so the consumer can account for every sequence number.

Lifetime (the owner rule). The segment lives until someone calls ``unlink()``, not as long as
the process that created it: neither ``create`` nor ``attach`` registers it with Python's
resource tracker (which would unlink it when that process exits, SIGKILL included, taking the
unconsumed records with it). So a producer or consumer that dies, normally or not, can be
restarted and ``attach`` by name, resuming where the counters say. The *owner* is the process
that created the ring (``create``); it calls ``unlink()`` once both sides are done, or leaves
the ring as a ``with`` block, which unlinks it. If the owner dies for good, any process may
``attach`` and ``unlink()`` it (``SPSCRing.remove(name)`` does both); a ring nobody unlinks
stays in ``/dev/shm`` until reboot.

Leaf module apart from ``errors``: a segment that is not a sound ring is a ``StateError`` (a
``ValueError``) naming it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from multiprocessing import shared_memory

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..errors import StateError

MAGIC = 0x5350_5343_5249_4E47  # "SPSCRING"
VERSION = 1

# int64 indices into the control block (the first 384 bytes).
_CAPACITY, _WIDTH, _DTYPE = 2, 3, 4
HEAD = 16  # byte 128
DROPPED = 17  # byte 136, producer-owned like head
TAIL = 32  # byte 256
_CTRL_WORDS = 48  # 384 bytes
_SEQS_OFFSET = 384

_DTYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float64), 2: np.dtype(np.int64)}
_CODES = {v: k for k, v in _DTYPES.items()}


# ------------------------------------------------------------------ LLVM intrinsics


@intrinsic
def _load_relaxed(typingctx, arr, i):
    """``arr[i]`` as a relaxed atomic int64 load."""
    sig = types.int64(arr, types.intp)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        return builder.load_atomic(ptr, "monotonic", 8)

    return sig, codegen


@intrinsic
def _store_relaxed(typingctx, arr, i, value):
    """``arr[i] = value`` as a relaxed atomic int64 store."""
    sig = types.void(arr, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        builder.store_atomic(args[2], ptr, "monotonic", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fence_acquire(typingctx):
    def codegen(context, builder, signature, args):
        builder.fence("acquire")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _fence_release(typingctx):
    def codegen(context, builder, signature, args):
        builder.fence("release")
        return context.get_dummy_value()

    return types.void(), codegen


# ------------------------------------------------------------------ kernels


@njit(cache=True, nogil=True)
def put_batch(ctrl, seqs, payload, records, rec_seqs, start):
    """Publish ``records[start:]`` (with ``rec_seqs[start:]``) as far as there is room.

    Returns how many were published (0 when the ring is full).
    """
    cap = seqs.shape[0]
    head = ctrl[HEAD]  # only this side writes head
    tail = _load_relaxed(ctrl, TAIL)
    _fence_acquire()  # the consumer finished reading the slots it released
    n = min(cap - (head - tail), records.shape[0] - start)
    if n <= 0:
        return 0
    mask = cap - 1
    w = payload.shape[1]
    for k in range(n):
        slot = (head + k) & mask
        seqs[slot] = rec_seqs[start + k]
        for j in range(w):
            payload[slot, j] = records[start + k, j]
    _fence_release()  # the slots are complete before head says so
    _store_relaxed(ctrl, HEAD, head + n)
    return n


@njit(cache=True, nogil=True)
def try_put(ctrl, seqs, payload, record, seq):
    """Publish one record (``seq`` < 0: records offered so far, published + dropped);
    returns 1, or 0 when the ring is full."""
    cap = seqs.shape[0]
    head = ctrl[HEAD]
    tail = _load_relaxed(ctrl, TAIL)
    _fence_acquire()
    if head - tail >= cap:
        return 0
    if seq < 0:
        seq = head + ctrl[DROPPED]
    slot = head & (cap - 1)
    seqs[slot] = seq
    for j in range(payload.shape[1]):
        payload[slot, j] = record[j]
    _fence_release()
    _store_relaxed(ctrl, HEAD, head + 1)
    return 1


@njit(cache=True, nogil=True)
def peek_batch(ctrl, seqs, payload, out, out_seqs):
    """Copy up to ``len(out)`` unconsumed records without consuming them; returns how many."""
    cap = seqs.shape[0]
    tail = ctrl[TAIL]
    head = _load_relaxed(ctrl, HEAD)
    _fence_acquire()
    n = min(head - tail, out.shape[0], out_seqs.shape[0])
    if n <= 0:
        return 0
    mask = cap - 1
    w = payload.shape[1]
    for k in range(n):
        slot = (tail + k) & mask
        out_seqs[k] = seqs[slot]
        for j in range(w):
            out[k, j] = payload[slot, j]
    return n


@njit(cache=True, nogil=True)
def commit(ctrl, n):
    """Consume ``n`` records already peeked; returns n, or -1 if fewer than n are published."""
    tail = ctrl[TAIL]
    head = _load_relaxed(ctrl, HEAD)
    if n < 0 or n > head - tail:
        return -1
    _fence_release()  # the peeked copies are done before the producer may reuse the slots
    _store_relaxed(ctrl, TAIL, tail + n)
    return n


@njit(cache=True, nogil=True)
def get_batch(ctrl, seqs, payload, out, out_seqs):
    """Consume up to ``len(out)`` records into ``out`` / ``out_seqs``; returns how many."""
    n = peek_batch(ctrl, seqs, payload, out, out_seqs)
    if n:
        commit(ctrl, n)  # releases the slots only after the copies
    return n


@njit(cache=True, nogil=True)
def try_get(ctrl, seqs, payload, out, seq_box):
    """Consume one record into ``out`` (its seq into ``seq_box[0]``); returns 1, or 0 if empty."""
    cap = seqs.shape[0]
    tail = ctrl[TAIL]
    head = _load_relaxed(ctrl, HEAD)
    _fence_acquire()
    if head == tail:
        return 0
    slot = tail & (cap - 1)
    seq_box[0] = seqs[slot]
    for j in range(payload.shape[1]):
        out[j] = payload[slot, j]
    _fence_release()
    _store_relaxed(ctrl, TAIL, tail + 1)
    return 1


@njit(cache=True, nogil=True)
def add_dropped(ctrl, n):
    """Producer side: count ``n`` dropped records."""
    _store_relaxed(ctrl, DROPPED, ctrl[DROPPED] + n)


# ------------------------------------------------------------------ Python side


def _segment_size(capacity: int, width: int, dtype: np.dtype) -> tuple[int, int]:
    payload_offset = -(-(_SEQS_OFFSET + 8 * capacity) // 64) * 64
    return payload_offset, payload_offset + capacity * width * dtype.itemsize


@contextlib.contextmanager
def _untracked():
    """Keep ``SharedMemory`` away from the resource tracker (Python < 3.13, no ``track=False``).

    The tracker unlinks every segment a process registered when that process exits (SIGKILL
    included): a ring would die with whichever side created or attached it. Registering and
    unregistering are both suppressed, so the tracker never hears of the segment at all.
    """
    from multiprocessing import resource_tracker

    register, unregister = resource_tracker.register, resource_tracker.unregister
    resource_tracker.register = resource_tracker.unregister = lambda *args, **kwargs: None
    try:
        yield
    finally:
        resource_tracker.register, resource_tracker.unregister = register, unregister


def _open_segment(name: str | None, size: int = 0) -> shared_memory.SharedMemory:
    """Create (``size`` > 0) or attach a segment the resource tracker does not know about."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, create=size > 0, size=size, track=False)
    with _untracked():
        return shared_memory.SharedMemory(name=name, create=size > 0, size=size)


def _unlink_segment(shm: shared_memory.SharedMemory) -> None:
    if sys.version_info >= (3, 13):
        shm.unlink()  # track=False: unlink does not talk to the tracker either
        return
    with _untracked():
        shm.unlink()


class SPSCRing:
    """One side of a shared-memory SPSC ring. Build with ``create`` (owner) or ``attach``.

    The segment outlives every process using it until ``unlink()`` (see the owner rule in
    the module docstring).

    ``on_full``: "block" (wait, then ``TimeoutError`` after ``timeout`` seconds) or "drop"
    (drop and count). Waiting spins ``spin`` times, then yields the CPU ``yields`` times,
    then sleeps in 50 µs steps.
    """

    def __init__(
        self,
        shm: shared_memory.SharedMemory,
        *,
        owner: bool,
        on_full: str = "block",
        timeout: float = 1.0,
        spin: int = 100,
        yields: int = 1000,
    ):
        if on_full not in ("block", "drop"):
            raise ValueError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        self._shm = shm
        self._owner = owner
        self.on_full = on_full
        self.timeout = float(timeout)
        self.spin = int(spin)
        self.yields = int(yields)
        if shm.size < _SEQS_OFFSET:
            raise StateError(f"shared memory {shm.name!r}: {shm.size} bytes, smaller than an SPSC ring's header")
        ctrl = np.ndarray((_CTRL_WORDS,), dtype=np.int64, buffer=shm.buf)
        if ctrl[0] != MAGIC or ctrl[1] != VERSION:
            raise StateError(f"shared memory {shm.name!r} is not an SPSC ring of version {VERSION}")
        capacity, width, code = int(ctrl[_CAPACITY]), int(ctrl[_WIDTH]), int(ctrl[_DTYPE])
        if code not in _DTYPES or capacity < 1 or capacity & (capacity - 1) or width < 1:
            raise StateError(f"shared memory {shm.name!r}: corrupt SPSC header")
        dtype = _DTYPES[code]
        payload_offset, size = _segment_size(capacity, width, dtype)
        if shm.size < size:
            raise StateError(f"shared memory {shm.name!r}: {shm.size} bytes, header needs {size}")
        head, tail, dropped = int(ctrl[HEAD]), int(ctrl[TAIL]), int(ctrl[DROPPED])
        # The counters only grow from 0 and head is never more than a ring ahead of tail; other
        # values would have the consumer read slots nobody published.
        if not (0 <= tail <= head <= tail + capacity) or dropped < 0:
            raise StateError(
                f"shared memory {shm.name!r}: corrupt SPSC counters (head {head}, tail {tail}, "
                f"dropped {dropped}, capacity {capacity})"
            )
        self._ctrl = ctrl
        self._seqs = np.ndarray((capacity,), dtype=np.int64, buffer=shm.buf, offset=_SEQS_OFFSET)
        self._payload = np.ndarray((capacity, width), dtype=dtype, buffer=shm.buf, offset=payload_offset)
        self._seq_box = np.zeros(1, dtype=np.int64)
        self.capacity, self.width, self.dtype = capacity, width, dtype
        self._shape = (width,)

    @classmethod
    def create(cls, capacity: int, width: int, dtype=np.float64, *, name: str | None = None, **options) -> SPSCRing:
        """A new segment for ``capacity`` (rounded up to a power of two) records of ``width``
        values of ``dtype`` (float32, float64 or int64). The creator owns it: ``unlink()`` it
        when both sides are done; until then it survives the creator's exit or death."""
        dtype = np.dtype(dtype)
        if dtype not in _CODES:
            raise ValueError(f"dtype must be float32, float64 or int64, got {dtype}")
        if capacity < 1 or width < 1:
            raise ValueError(f"capacity and width must be positive, got {capacity}, {width}")
        capacity = 1 << (int(capacity) - 1).bit_length()
        _, size = _segment_size(capacity, width, dtype)
        shm = _open_segment(name, size)
        ctrl = np.ndarray((_CTRL_WORDS,), dtype=np.int64, buffer=shm.buf)
        ctrl[:] = 0
        ctrl[[1, _CAPACITY, _WIDTH, _DTYPE]] = VERSION, capacity, width, _CODES[dtype]
        ctrl[0] = MAGIC  # last: an attacher never sees a half-written header as valid
        del ctrl
        try:
            return cls(shm, owner=True, **options)
        except BaseException:
            shm.close()
            _unlink_segment(shm)
            raise

    @classmethod
    def attach(cls, name: str, **options) -> SPSCRing:
        """Open an existing ring by name (either side). Consumption resumes at ``tail``.

        ``FileNotFoundError`` when no ring has that name; ``StateError`` when the name is not
        usable or the segment is not a sound ring."""
        try:
            shm = _open_segment(name)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:  # a bad name (EINVAL), an empty segment (mmap refuses it)
            raise StateError(f"shared memory {str(name)[:200]!r}: cannot attach ({exc})") from None
        try:
            return cls(shm, owner=False, **options)
        except BaseException:
            shm.close()
            raise

    # -------------------------------------------------------------- waiting

    def _wait(self, tries: int, deadline: float | None) -> bool:
        """Back off after ``tries`` failed attempts; False once ``deadline`` has passed."""
        if tries < self.spin:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if tries < self.spin + self.yields:
            os.sched_yield()
        else:
            time.sleep(50e-6)
        return True

    # -------------------------------------------------------------- producer

    def _record(self, record) -> np.ndarray:
        if type(record) is not np.ndarray or record.dtype != self.dtype:
            record = np.asarray(record, dtype=self.dtype)
        if record.shape != self._shape:
            raise ValueError(f"record has shape {record.shape}, expected ({self.width},)")
        return record

    def put(self, record, seq: int | None = None) -> bool:
        """Publish one record; ``seq`` defaults to the number of records offered so far
        (published + dropped), so drops show up as gaps. Returns False if it was dropped."""
        record = self._record(record)
        if seq is None:
            seq = -1  # the kernel numbers it: published + dropped so far
        elif seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        if try_put(self._ctrl, self._seqs, self._payload, record, seq):
            return True
        if self.on_full == "drop":
            add_dropped(self._ctrl, 1)
            return False
        deadline = time.monotonic() + self.timeout
        tries = 0
        while not try_put(self._ctrl, self._seqs, self._payload, record, seq):
            tries += 1
            if not self._wait(tries, deadline):
                raise TimeoutError(f"SPSC ring {self.name!r}: full for {self.timeout} s (is the consumer running?)")
        return True

    def put_many(self, records, seqs=None) -> int:
        """Publish a (n, width) block; returns how many were published (the rest, in drop
        mode, were dropped and counted). In block mode a timeout raises ``TimeoutError``
        after publishing what fitted (``head`` tells how far it got)."""
        if type(records) is not np.ndarray or records.dtype != self.dtype:
            records = np.asarray(records, dtype=self.dtype)
        if records.ndim != 2 or records.shape[1] != self.width:
            raise ValueError(f"records have shape {records.shape}, expected (n, {self.width})")
        n = records.shape[0]
        if seqs is None:
            first = int(self._ctrl[HEAD] + self._ctrl[DROPPED])
            seqs = np.arange(first, first + n, dtype=np.int64)
        elif type(seqs) is not np.ndarray or seqs.dtype != np.int64 or seqs.shape != (n,):
            seqs = np.asarray(seqs, dtype=np.int64)
            if seqs.shape != (n,):
                raise ValueError(f"seqs have shape {seqs.shape}, expected ({n},)")
        done = put_batch(self._ctrl, self._seqs, self._payload, records, seqs, 0)
        if done == n:
            return n
        if self.on_full == "drop":
            add_dropped(self._ctrl, n - done)
            return done
        deadline = time.monotonic() + self.timeout
        tries = 0
        while done < n:
            k = put_batch(self._ctrl, self._seqs, self._payload, records, seqs, done)
            if k:
                done += k
                tries = 0
                deadline = time.monotonic() + self.timeout
                continue
            tries += 1
            if not self._wait(tries, deadline):
                raise TimeoutError(f"SPSC ring {self.name!r}: full for {self.timeout} s after {done} of {n} records")
        return n

    # -------------------------------------------------------------- consumer

    def get(self, out: np.ndarray, timeout: float | None = 0.0) -> int | None:
        """Consume one record into ``out`` ((width,), the ring's dtype); returns its seq, or
        None if nothing arrived (``timeout``: 0 = don't wait, None = wait forever)."""
        if type(out) is not np.ndarray or out.dtype != self.dtype or out.shape != self._shape:
            raise ValueError(f"out must be a ({self.width},) {self.dtype} array")
        if try_get(self._ctrl, self._seqs, self._payload, out, self._seq_box):
            return int(self._seq_box[0])
        if timeout == 0.0:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        tries = 0
        while not try_get(self._ctrl, self._seqs, self._payload, out, self._seq_box):
            tries += 1
            if not self._wait(tries, deadline):
                return None
        return int(self._seq_box[0])

    def get_many(
        self, out: np.ndarray, out_seqs: np.ndarray, timeout: float | None = 0.0, *, commit: bool = True
    ) -> int:
        """Consume up to ``len(out)`` records into ``out`` ((n, width)) and ``out_seqs``
        (int64); returns how many (0 if none arrived within ``timeout``).

        ``commit=False`` only copies them (``peek``): call ``commit(n)`` once they are
        processed, so a consumer that crashes in between gets them again after a restart
        (at-least-once; a consumer that records the last sequence number it processed can skip
        the repeats and so process each record once).
        """
        if (
            type(out) is not np.ndarray
            or out.dtype != self.dtype
            or out.ndim != 2
            or out.shape[1] != self.width
            or type(out_seqs) is not np.ndarray
            or out_seqs.dtype != np.int64
            or out_seqs.ndim != 1
        ):
            raise ValueError(f"out must be (n, {self.width}) {self.dtype} and out_seqs (n,) int64")
        kernel = get_batch if commit else peek_batch
        n = kernel(self._ctrl, self._seqs, self._payload, out, out_seqs)
        if n or timeout == 0.0:
            return n
        deadline = None if timeout is None else time.monotonic() + timeout
        tries = 0
        while True:
            n = kernel(self._ctrl, self._seqs, self._payload, out, out_seqs)
            if n:
                return n
            tries += 1
            if not self._wait(tries, deadline):
                return 0

    def peek_many(self, out: np.ndarray, out_seqs: np.ndarray, timeout: float | None = 0.0) -> int:
        """``get_many(..., commit=False)``: copy without consuming."""
        return self.get_many(out, out_seqs, timeout, commit=False)

    def commit(self, n: int) -> None:
        """Consume ``n`` records returned by ``peek_many`` (the consumer's acknowledgement)."""
        if commit(self._ctrl, int(n)) < 0:
            raise ValueError(f"commit({n}): only {len(self)} record(s) are waiting")

    # -------------------------------------------------------------- state, lifetime

    @property
    def next_seq(self) -> int:
        """The sequence number ``put`` gives the next record (published + dropped): where a
        restarted producer continues."""
        return int(self._ctrl[HEAD] + self._ctrl[DROPPED])

    @property
    def name(self) -> str:
        return self._shm.name

    @property
    def head(self) -> int:
        """Records ever published."""
        return int(self._ctrl[HEAD])

    @property
    def tail(self) -> int:
        """Records ever consumed (where a re-attached consumer resumes)."""
        return int(self._ctrl[TAIL])

    @property
    def dropped(self) -> int:
        """Records dropped because the ring was full (drop mode)."""
        return int(self._ctrl[DROPPED])

    def __len__(self) -> int:
        """Records published and not yet consumed (0 if the other side wrote nonsense since attach)."""
        return max(0, self.head - self.tail)

    def close(self) -> None:
        """Detach this process (the segment lives on until the owner unlinks it)."""
        if self._ctrl is None:
            return
        # Views into the buffer must go before the mapping can be closed.
        self._ctrl = self._seqs = self._payload = None
        self._shm.close()

    def unlink(self) -> None:
        """Remove the segment's name (the owner does this once both sides are done); processes
        still attached keep their mapping until they ``close``."""
        _unlink_segment(self._shm)

    @classmethod
    def remove(cls, name: str) -> None:
        """Unlink the ring called ``name`` from any process (e.g. after its owner died for good)."""
        ring = cls.attach(name)
        ring.close()
        ring.unlink()

    def __enter__(self) -> SPSCRing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if self._owner:
            self.unlink()

    def __repr__(self) -> str:
        state = "closed" if self._ctrl is None else f"head={self.head} tail={self.tail} dropped={self.dropped}"
        return f"SPSCRing(capacity={self.capacity}, width={self.width}, dtype={self.dtype}, {state})"


def warmup() -> None:
    """Compile every kernel for float64 and float32 records on a tiny private ring."""
    for dtype in (np.float64, np.float32):
        ring = SPSCRing.create(2, 2, dtype)
        try:
            rec = np.ones((2, 2), dtype=dtype)
            seqs = np.arange(2, dtype=np.int64)
            ring.put(rec[0])
            ring.get(np.empty(2, dtype=dtype))
            ring.put_many(rec, seqs)
            ring.commit(ring.peek_many(np.empty((2, 2), dtype=dtype), np.empty(2, dtype=np.int64)))
            ring.put_many(rec, seqs)
            ring.get_many(np.empty((2, 2), dtype=dtype), np.empty(2, dtype=np.int64))
            add_dropped(ring._ctrl, 0)
        finally:
            ring.close()
            ring.unlink()
