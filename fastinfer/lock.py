"""The compiled manifest ``fastinfer.lock.json`` at the run root.

One entry per model: where its native file and ONNX graph are (relative to the run root),
their sha256, how the graph was made (converter, opsets, library versions), its I/O
contract, the feature order it reads, the parity figures, and whether it is served from
ONNX, stays native (with the reason) or failed to open (with the reason: every other model of the
run stays servable). Written atomically; validated on read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import inside, parse_json_limited, read_json_limited
from .atomic import write_atomic_json
from .errors import StateError
from .state import short_repr

LOCK_FILE = "fastinfer.lock.json"
LOCK_VERSION = 1
STATUSES = ("onnx", "native", "failed")
ONNX_FILE = "model.onnx"


@dataclass
class LockEntry:
    target: str
    view: str
    family: str
    universe: str | None
    symbol: str | None
    native_file: str  # relative to the run root
    native_sha256: str
    status: str  # "onnx", "native", or "failed" (could not be opened; ``reason`` says why)
    reason: str = ""  # why it stays native
    onnx_file: str | None = None
    onnx_sha256: str | None = None
    converter: str | None = None
    opsets: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)  # name, shape, dtype
    output: dict[str, Any] = field(default_factory=dict)  # name, columns
    feature_order: list[str] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)  # max_abs, max_rel, tolerance, n_rows
    convert_seconds: float = 0.0

    @property
    def key(self) -> tuple[str, str, str, str | None, str | None]:
        return (self.target, self.family, self.view, self.universe, self.symbol)


@dataclass
class Lock:
    entries: list[LockEntry]
    created: str = ""
    version: int = LOCK_VERSION
    # sha256 of the run's feature_definitions.yaml when it was converted (None: the run has none).
    definitions_sha256: str | None = None

    def find(self, key: tuple) -> LockEntry | None:
        return next((e for e in self.entries if e.key == key), None)


def lock_path(run_root: Path) -> Path:
    return run_root / LOCK_FILE


def write_lock(run_root: Path, lock: Lock) -> Path:
    path = lock_path(run_root)
    data = {"version": lock.version, "created": lock.created, "entries": [asdict(e) for e in lock.entries]}
    if lock.definitions_sha256 is not None:
        data["definitions_sha256"] = lock.definitions_sha256
    write_atomic_json(path, data)
    return path


_STR_FIELDS = ("target", "view", "family", "native_file", "native_sha256", "status")
# Every other field's JSON type: a hostile lock must fail here, not as an AttributeError later.
_TYPED_FIELDS: dict[str, tuple[type, ...]] = {
    "universe": (str, type(None)),
    "symbol": (str, type(None)),
    "reason": (str,),
    "onnx_file": (str, type(None)),
    "onnx_sha256": (str, type(None)),
    "converter": (str, type(None)),
    "opsets": (dict,),
    "versions": (dict,),
    "input": (dict,),
    "output": (dict,),
    "feature_order": (list,),
    "parity": (dict,),
    "convert_seconds": (int, float),
}


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# Numbers a lock carries, bounded so that a hostile value (a 4,000-digit int, 1e308) fails here
# rather than as an OverflowError wherever it is formatted or compared later.
MAX_OPSET = 1_000
MAX_SECONDS = 1e9
MAX_ROWS = 1 << 40


def _number(value: Any, lo: float, hi: float) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and (not isinstance(value, int) or value.bit_length() <= 64)
        and math.isfinite(value)
        and lo <= value <= hi
    )


def _check_numbers(where: str, raw: dict[str, Any]) -> None:
    if "convert_seconds" in raw and not _number(raw["convert_seconds"], 0, MAX_SECONDS):
        seconds = short_repr(raw["convert_seconds"])
        raise StateError(f"{where}.convert_seconds: {seconds} is not in [0, {MAX_SECONDS:g}]")
    for domain, version in raw.get("opsets", {}).items():
        if not isinstance(domain, str) or isinstance(version, bool) or not isinstance(version, int):
            raise StateError(f"{where}.opsets[{short_repr(domain)}]: expected an integer opset version")
        if not 1 <= version <= MAX_OPSET:
            raise StateError(f"{where}.opsets[{short_repr(domain)}]: {short_repr(version)} is not in [1, {MAX_OPSET}]")
    for name, value in raw.get("parity", {}).items():
        hi = MAX_ROWS if name == "n_rows" else float("inf")
        if value is not None and not _number(value, 0 if name == "n_rows" else -math.inf, hi):
            raise StateError(f"{where}.parity[{short_repr(name)}]: {short_repr(value)} is not a finite number")
    shape = raw.get("input", {}).get("shape", [])
    if not isinstance(shape, list) or not all(
        isinstance(d, str) or (_number(d, 1, MAX_ROWS) and isinstance(d, int)) for d in shape
    ):
        raise StateError(f"{where}.input.shape: {short_repr(shape)} is not a list of dimension names or sizes")


def read_lock(run_root: Path) -> Lock | None:
    """The run's lock, or None when it has none; ``StateError`` naming the field when it is bad."""
    path = lock_path(run_root)
    if not path.exists():
        return None
    try:
        inside(run_root, LOCK_FILE, what=f"{LOCK_FILE} link")  # a link may not leave the run
        data = read_json_limited(path)
    except Exception as exc:  # ModelLoadError from the limited reader: re-type as bad state
        raise StateError(f"{path}: {getattr(exc, 'reason', exc)}") from None
    return _validate(run_root, path, data)


def parse_lock(run_root: Path, raw: bytes) -> Lock:
    """A lock from bytes already read (e.g. the ones a signature covered), validated alike."""
    path = lock_path(run_root)
    try:
        data = parse_json_limited(raw, path)
    except Exception as exc:
        raise StateError(f"{path}: {getattr(exc, 'reason', exc)}") from None
    return _validate(run_root, path, data)


def _validate(run_root: Path, path: Path, data: Any) -> Lock:
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(data.get("entries"), list):
        raise StateError(f"{path}: not a version-{LOCK_VERSION} fastinfer lock")
    entries = []
    known = set(LockEntry.__dataclass_fields__)
    for i, raw in enumerate(data["entries"]):
        where = f"{path}: entries[{i}]"
        if not isinstance(raw, dict) or set(raw) - known:
            raise StateError(
                f"{where}: unexpected fields {short_repr(sorted(set(raw) - known) if isinstance(raw, dict) else raw)}"
            )
        for name in _STR_FIELDS:
            if not isinstance(raw.get(name), str):
                raise StateError(f"{where}.{name}: expected a string")
        for name, kinds in _TYPED_FIELDS.items():
            if (name in raw and not isinstance(raw[name], kinds)) or isinstance(raw.get(name), bool):
                raise StateError(
                    f"{where}.{name}: expected {' or '.join(k.__name__ for k in kinds)}, got {type(raw[name]).__name__}"
                )
        for name in ("native_sha256", "onnx_sha256"):
            if raw.get(name) == "" and name == "native_sha256" and raw.get("status") == "failed":
                continue  # a model that failed because its file could not be read has no digest
            if raw.get(name) is not None and not _is_sha256(raw[name]):
                raise StateError(f"{where}.{name}: not a 64-hex-digit sha256")
        if not all(isinstance(f, str) for f in raw.get("feature_order", [])):
            raise StateError(f"{where}.feature_order: expected a list of feature names")
        for io in ("input", "output"):
            spec = raw.get(io, {})
            if not isinstance(spec.get("name", ""), str) or not (
                isinstance(spec.get("columns", []), list) and all(isinstance(c, str) for c in spec.get("columns", []))
            ):
                raise StateError(f"{where}.{io}: name must be a string and columns a list of strings")
        _check_numbers(where, raw)
        if raw["status"] not in STATUSES:
            raise StateError(f"{where}.status: {short_repr(raw['status'])} is not one of {', '.join(STATUSES)}")
        for name in ("native_file", "onnx_file"):
            if raw.get(name) is not None:
                try:
                    inside(run_root, raw[name], what=f"lock {name}")
                except Exception:
                    raise StateError(f"{where}.{name}: {short_repr(raw[name])} escapes the run root") from None
        if raw["status"] == "onnx" and not (
            isinstance(raw.get("onnx_file"), str) and isinstance(raw.get("onnx_sha256"), str)
        ):
            raise StateError(f"{where}: status onnx without onnx_file and onnx_sha256")
        try:
            entries.append(LockEntry(**raw))
        except TypeError as exc:
            raise StateError(f"{where}: {exc}") from None
    definitions = data.get("definitions_sha256")
    if definitions is not None and not (isinstance(definitions, str) and _is_sha256(definitions)):
        raise StateError(f"{path}: definitions_sha256: not a 64-hex-digit sha256")
    return Lock(entries, str(data.get("created", "")), definitions_sha256=definitions)
