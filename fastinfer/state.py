"""One versioned, checksummed envelope for every saved state (buffers, features, predictor).

A saved state is a JSON object::

    {"format": "fastinfer.state", "kind": "seqbuffer", "version": 2,
     "sha256": "<hex>", "payload": {...}}

``sha256`` covers a canonical encoding of ``payload`` (``canonical``: sorted keys, no spaces,
ASCII, no NaN), so a flipped byte anywhere in the payload, a truncated file or a state of
another kind or version is a ``StateError`` naming the field, never a silently different
state. The checksum catches accidental damage; like every checksum a writer can recompute it
(signatures are for runs, not for states a process writes for itself).

API (``fastinfer.state``)::

    wrap(kind, version, payload) -> dict                  # the envelope, JSON-safe
    unwrap(obj, kind, versions, *, source="state") -> (version, payload)
    save(path, kind, version, payload) -> None            # atomic (fastinfer.atomic)
    load(path, kind, versions) -> (version, payload)      # bounded read + unwrap
    encode_array(array) -> {"dtype", "shape", "data"}     # little-endian bytes, base64
    decode_array(obj, field, *, dtype, shape=None, finite=False, source="state") -> np.ndarray
    integer(value, field, lo, hi, *, source="state") -> int   # a bounded int field
    short_repr(value) -> str                              # a repr safe to put in an error
    parse_json(raw, *, max_bytes, max_depth) -> Any       # JSON that cannot exhaust the parser

``kind`` names the owner ("seqbuffer", "features", "predictor"); ``versions`` is the set of
payload versions the reader understands. Arrays travel as ``encode_array`` dicts inside the
payload: ``decode_array`` checks dtype (exactly the one expected: a float16 array where
float32 state belongs is refused, not cast), shape (``None`` in ``shape`` matches any
length), byte count and, with ``finite=True``, that no value is NaN/inf. Every integer a
state carries goes through ``integer`` with explicit bounds, so a 5,000-digit int or a
stamp of 2**63 is a ``StateError`` naming the field rather than an ``OverflowError`` later.

Leaf module apart from ``errors`` and ``atomic``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import read_regular, write_atomic_json
from .errors import StateError

FORMAT = "fastinfer.state"
# A state holds at most a few symbols x sequence rows; 1 GiB is far above any real one and
# keeps a hostile file from being read into memory whole.
MAX_STATE_BYTES = 1 << 30
MAX_STATE_DEPTH = 16  # envelope, payload, per-key maps, array dicts: a handful of levels
_ENVELOPE_KEYS = frozenset({"format", "kind", "version", "sha256", "payload"})
# Arrays a state may carry: numeric and boolean, little-endian, never float16 (no kernel reads it).
ARRAY_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "|b1", "|u1"})


class JSONLimitError(ValueError):
    """JSON that is too big, too deep or not JSON; callers re-raise it as their typed error."""


def _depth(obj: Any) -> int:
    depth, frontier = 0, [obj]
    while frontier:
        depth += 1
        frontier = [
            v
            for o in frontier
            for v in (o.values() if isinstance(o, dict) else o if isinstance(o, list) else ())
            if isinstance(v, (dict, list))
        ]
    return depth


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's pairs as a dict, refusing a key given twice: JSON leaves its meaning open (this
    parser keeps the last, others the first), so two readers could see two different files."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(f"key {short_repr(key)} is given twice")
    return obj


def parse_json(raw: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """``json.loads`` that cannot crash its caller: size, nesting and number text bounded.

    ``JSONLimitError`` for: more than ``max_bytes``; not UTF-8 / not JSON; an object with a key
    given twice; nesting that exhausts the parser's recursion (100k-deep arrays) or exceeds
    ``max_depth``; an integer literal over Python's digit limit (~4,300 digits).
    """
    if len(raw) > max_bytes:
        raise JSONLimitError(f"{len(raw)} bytes (limit {max_bytes})")
    try:
        data = json.loads(raw, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise JSONLimitError("nested deeper than the JSON parser can follow") from None
    except _DuplicateKey as exc:
        raise JSONLimitError(str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, the int digit limit
        raise JSONLimitError(f"not valid JSON ({type(exc).__name__}: {str(exc)[:80]})") from None
    if _depth(data) > max_depth:
        raise JSONLimitError(f"nested deeper than {max_depth} levels")
    return data


def canonical(payload: Any) -> bytes:
    """The bytes the checksum covers: sorted keys, no whitespace, ASCII, NaN refused."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def wrap(kind: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    """The envelope for ``payload`` (a JSON-safe dict) of ``kind`` at ``version``."""
    return {
        "format": FORMAT,
        "kind": kind,
        "version": version,
        "sha256": hashlib.sha256(canonical(payload)).hexdigest(),
        "payload": payload,
    }


def unwrap(obj: Any, kind: str, versions: Collection[int], *, source: str = "state") -> tuple[int, dict[str, Any]]:
    """``(version, payload)`` of an envelope; ``StateError`` naming the field when the object is
    not an envelope, is of another kind, of a version not in ``versions``, or fails its checksum."""
    if not isinstance(obj, dict):
        raise StateError(f"{source}: expected a state object, got {type(obj).__name__}")
    missing = sorted(_ENVELOPE_KEYS - set(obj))
    if missing:
        raise StateError(f"{source}: field {missing[0]!r}: missing (not a fastinfer state envelope)")
    extra = sorted(set(obj) - _ENVELOPE_KEYS)
    if extra:
        raise StateError(f"{source}: field {extra[0]!r}: unexpected in a state envelope")
    if obj["format"] != FORMAT:
        raise StateError(f"{source}: field 'format': {short_repr(obj['format'])} is not {FORMAT!r}")
    if obj["kind"] != kind:
        raise StateError(f"{source}: field 'kind': {short_repr(obj['kind'])} is not {kind!r}")
    version = obj["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in versions:
        raise StateError(
            f"{source}: field 'version': {short_repr(version)} is not one this fastinfer reads "
            f"({', '.join(map(str, sorted(versions)))})"
        )
    payload = obj["payload"]
    if not isinstance(payload, dict):
        raise StateError(f"{source}: field 'payload': expected an object, got {type(payload).__name__}")
    try:
        digest = hashlib.sha256(canonical(payload)).hexdigest()
    except (ValueError, TypeError, RecursionError):  # NaN / non-JSON values put in by hand
        raise StateError(f"{source}: field 'payload': not canonical JSON") from None
    if obj["sha256"] != digest:
        raise StateError(f"{source}: field 'sha256': does not match the payload (corrupt or edited state)")
    return version, payload


def save(path: str | Path, kind: str, version: int, payload: dict[str, Any]) -> None:
    """Write ``wrap(kind, version, payload)`` atomically: a crash keeps the previous file."""
    write_envelope(path, wrap(kind, version, payload))


def write_envelope(path: str | Path, envelope: dict[str, Any]) -> None:
    """Write a ``wrap``ped state atomically; a path that cannot take it (a folder, a missing or
    read-only folder, a full disk) is a ``StateError`` naming it, and the previous file stays."""
    try:
        write_atomic_json(path, envelope)
    except OSError as exc:
        raise StateError(f"{path}: cannot write state ({exc.strerror or exc})") from None


def read_bounded(path: str | Path, *, source: str | None = None) -> Any:
    """The JSON in a state file, read through ``parse_json`` (``StateError`` naming the file).

    A missing file raises ``FileNotFoundError`` (the caller decides whether that is a first
    start or an error)."""
    path = Path(path)
    source = source or str(path)
    try:
        raw = read_regular(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"{source}: cannot read state ({exc.strerror})") from None
    try:
        return parse_json(raw, max_bytes=MAX_STATE_BYTES, max_depth=MAX_STATE_DEPTH)
    except JSONLimitError as exc:
        raise StateError(f"{source}: not a valid state file ({exc})") from None


def load(path: str | Path, kind: str, versions: Collection[int]) -> tuple[int, dict[str, Any]]:
    """``unwrap`` of the JSON in ``path`` (bounded read; errors name the file)."""
    return unwrap(read_bounded(path), kind, versions, source=str(path))


# ---------------------------------------------------------------- fields


def short_repr(value: Any, _level: int = 0) -> str:
    """A bounded repr for error messages: a hostile value may be huge (a 5,000-digit int cannot
    even be repr'd under Python's digit limit), and an error must never print it whole."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, (str, bytes)):  # paths and names: long enough to recognise
        return repr(value[:200]) + ("..." if len(value) > 200 else "")
    if isinstance(value, (list, tuple)) and len(value) <= 6 and _level < 2:
        return "[" + ", ".join(short_repr(v, _level + 1) for v in value) + "]"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)}>"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def integer(value: Any, field: str, lo: int, hi: int, *, source: str = "state") -> int:
    """``value`` if it is an int (not a bool) in [lo, hi], else ``StateError`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise StateError(f"{source}: field {field!r}: {short_repr(value)} is not an integer in [{lo}, {hi}]")
    return value


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}``: the array's little-endian bytes in C order, base64."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def decode_array(
    obj: Any,
    field: str,
    *,
    dtype: str | np.dtype,
    shape: tuple[int | None, ...] | None = None,
    finite: bool = False,
    source: str = "state",
) -> np.ndarray:
    """The array ``encode_array`` wrote, checked: ``StateError`` naming ``field`` for another
    dtype, another shape (``None`` entries match any length), a byte count that does not fill
    the shape, bad base64, or (``finite``) a NaN/inf value. Returns a writable copy."""
    want = np.dtype(dtype).str
    if want not in ARRAY_DTYPES:
        raise ValueError(f"decode_array: {want} is not a state dtype ({sorted(ARRAY_DTYPES)})")  # a caller's bug

    def fail(problem: str) -> StateError:
        return StateError(f"{source}: field {field!r}: {problem}")

    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise fail("expected an array object with dtype, shape and data")
    if obj["dtype"] != want:
        raise fail(f"dtype {short_repr(obj['dtype'])}, expected {want!r}")
    dims = obj["shape"]
    if not isinstance(dims, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
        raise fail(f"shape {short_repr(dims)} is not a list of non-negative integers")
    if shape is not None and (len(dims) != len(shape) or any(s is not None and s != d for s, d in zip(shape, dims))):
        raise fail(f"shape {short_repr(dims)}, expected {list(shape)}")
    if not isinstance(obj["data"], str):
        raise fail("data is not a base64 string")
    itemsize = np.dtype(want).itemsize
    count = 1
    for d in dims:
        count *= d  # Python ints: a hostile shape cannot overflow, it just fails the size check
    if -(-len(obj["data"]) // 4) * 3 < count * itemsize:  # decoded size bound, before decoding
        raise fail(f"data is shorter than the {count} x {itemsize} bytes its shape needs")
    try:
        raw = base64.b64decode(obj["data"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise fail(f"not valid base64 ({exc})") from None
    if len(raw) != count * itemsize:
        raise fail(f"{len(raw)} bytes, expected {count * itemsize} for shape {dims} of {want}")
    array = np.frombuffer(raw, dtype=want).reshape(dims).copy()
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise fail("contains NaN/inf")
    return array
