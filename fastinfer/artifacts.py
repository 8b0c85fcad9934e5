"""The TRAINING run-directory layout, and ``model_meta.json`` → a typed ``ModelSpec``.

    {run_id}/{timestamp}/
      manifest.json                                   (target_index)
      targets/{target}/models/view={VIEW}/[universe={U}/][symbol={S}/]family={family}/
          model.txt | model.json | model.cbm | model.joblib | model.pkl | model.keras | model.h5
          model_meta.json
      targets/{target}/models/view={VIEW}/routing_decision.json   (or targets/{target}/decision/)

Discovery only lists directories; metadata is parsed when a model is asked for. No path
taken from metadata may leave the run root.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import families as fam
from .atomic import read_regular
from .config import MAX_SEQ_LEN
from .errors import ModelLoadError
from .state import JSONLimitError, parse_json, short_repr

log = logging.getLogger(__name__)

CROSS_SECTIONAL = "CROSS_SECTIONAL"
SEQUENTIAL = "SEQUENTIAL"
META_FILE = "model_meta.json"
MAX_META_BYTES = 4 << 20  # a model's metadata is a few KB; anything near this is hostile
MAX_META_DEPTH = 32


@dataclass(frozen=True)
class ModelLocation:
    """One ``family=…`` directory found in the run (nothing read from it yet)."""

    target: str
    view: str
    family: fam.Family
    path: Path
    universe: str | None = None
    symbol: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str | None, str | None]:
        return (self.target, self.family.name, self.view, self.universe, self.symbol)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``model_meta.json`` plus where the model lives."""

    location: ModelLocation
    meta_path: Path
    model_path: Path
    feature_list: tuple[str, ...]  # as TRAINING writes it (sorted)
    feature_names: tuple[str, ...] | None  # training column order, where recorded
    metrics: dict[str, Any]
    model_checksum: str | None
    interval_minutes: float | None
    sequence_length: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> fam.Family:
        return self.location.family

    @property
    def target(self) -> str:
        return self.location.target


def _error(loc: ModelLocation | None, reason: str, path: Path | None = None) -> ModelLoadError:
    return ModelLoadError(loc.family.name if loc else None, loc.target if loc else None, reason, path)


def resolve_run_root(path: str | Path) -> Path:
    """A run root, or a run_id folder resolved to its newest timestamp folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(None, None, "run root does not exist or is not a directory", path)

    def is_run(p: Path) -> bool:
        return (p / "targets").is_dir() or (p / "manifest.json").is_file()

    if is_run(path):
        return path.resolve()
    runs = sorted(p for p in path.iterdir() if p.is_dir() and is_run(p))
    if not runs:
        raise ModelLoadError(
            None, None, "not a TRAINING run (no manifest.json or targets/ here or one level down)", path
        )
    newest = runs[-1]  # timestamp folder names sort chronologically
    log.info("run_id folder %s: using newest timestamp %s", path, newest.name)
    return newest.resolve()


MAX_RELATIVE_PATH = 4096  # Linux's PATH_MAX: no usable path inside a run is longer


def inside(root: Path, relative: str | Path, *, what: str, loc: ModelLocation | None = None) -> Path:
    """``root / relative``, refused if it is absolute or resolves outside ``root``."""
    if len(str(relative)) > MAX_RELATIVE_PATH:  # resolve() is quadratic in the number of components
        raise _error(loc, f"{what} {str(relative)[:200]!r}... is over {MAX_RELATIVE_PATH} characters", root)
    try:
        rel = Path(relative)
        candidate = (root / rel).resolve()
    except (TypeError, ValueError, OSError, RuntimeError) as exc:  # NUL bytes, link loops, names too long
        # (Python 3.11's resolve() raises RuntimeError on a symlink loop, 3.13 an OSError.)
        raise _error(loc, f"{what} {str(relative)[:200]!r} is not a usable path ({exc})", root) from None
    if rel.is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise _error(loc, f"{what} {str(relative)[:200]!r} escapes the run root", root)
    return candidate


def _split(name: str) -> tuple[str, str] | None:
    key, sep, value = name.partition("=")
    return (key, value) if sep and value else None


def discover(run_root: Path) -> list[ModelLocation]:
    """Every family directory under ``targets/*/models/view=*/``; unknown families are skipped."""
    found: list[ModelLocation] = []
    targets = run_root / "targets"
    if not targets.is_dir():
        return found
    # Links are not followed at any level: a run's models live in the run.
    for target_dir in sorted(p for p in targets.iterdir() if p.is_dir() and not p.is_symlink()):
        models = target_dir / "models"
        if not models.is_dir() or models.is_symlink():
            continue
        for view_dir in sorted(models.iterdir()):
            kv = _split(view_dir.name)
            if not view_dir.is_dir() or view_dir.is_symlink() or not kv or kv[0] != "view":
                continue
            _walk(found, target_dir.name, kv[1], view_dir, {})
    return found


def _walk(found: list[ModelLocation], target: str, view: str, folder: Path, scope: dict[str, str]) -> None:
    for child in sorted(folder.iterdir()):
        kv = _split(child.name)
        if not child.is_dir() or child.is_symlink() or not kv:
            continue
        key, value = kv
        if key == "family":
            family = fam.find(value)
            if family is None:
                log.warning("%s: unknown family %r, skipped", child, value)
                continue
            found.append(ModelLocation(target, view, family, child, scope.get("universe"), scope.get("symbol")))
        elif key in ("universe", "symbol") and key not in scope:
            _walk(found, target, view, child, {**scope, key: value})


def read_json_limited(path: Path, loc: ModelLocation | None = None, *, expected_sha256: str | None = None) -> Any:
    """JSON from a file, refusing huge, deeply nested or non-JSON content with a named error.

    ``expected_sha256``: the bytes read must have this digest (a signed file), checked on the
    very bytes that are parsed.
    """
    try:
        size = path.stat().st_size
        if size > MAX_META_BYTES:
            raise _error(loc, f"{path.name} is {size} bytes (limit {MAX_META_BYTES})", path)
        raw = read_regular(path, MAX_META_BYTES)  # a FIFO or device here is refused, not waited on
    except FileNotFoundError:
        raise _error(loc, f"{path.name} is missing", path) from None
    except OSError as exc:
        raise _error(loc, f"{path.name} cannot be read ({exc.strerror})", path) from None
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        from .errors import SignatureError

        raise SignatureError(
            loc.family.name if loc else None,
            loc.target if loc else None,
            "signed file changed since the run was opened",
            path,
        )
    return parse_json_limited(raw, path, loc)


def parse_json_limited(raw: bytes, path: Path, loc: ModelLocation | None = None) -> Any:
    """``read_json_limited`` on bytes already read; ``path`` names them in errors."""
    try:
        return parse_json(raw, max_bytes=MAX_META_BYTES, max_depth=MAX_META_DEPTH)
    except JSONLimitError as exc:
        raise _error(loc, f"{path.name}: {exc}", path) from None


def _names(value: Any, key: str, loc: ModelLocation, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _error(loc, f"{key} must be a non-empty list of feature names", path)
    if len(set(value)) != len(value):
        raise _error(loc, f"{key} has duplicate feature names", path)
    return tuple(value)


# Upper bounds: a sequence length sizes per-symbol buffers, so a hostile 10**12 must not allocate.
MAX_INTERVAL_MINUTES = 525_600.0 * 100  # a century: any bar interval past it is hostile
_LIMITS = {"interval_minutes": MAX_INTERVAL_MINUTES, "sequence_length": MAX_SEQ_LEN}


def _number(meta: dict, key: str, kind: type, loc: ModelLocation, path: Path) -> Any:
    value = meta.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))
        or value <= 0
    ):
        raise _error(loc, f"{key} must be a positive number, got {short_repr(value)}", path)
    if value > _LIMITS[key]:  # before any float(): a 400-digit JSON int must not overflow
        raise _error(loc, f"{key} {short_repr(value)} is above the limit {_LIMITS[key]:g}", path)
    if kind is int:
        if int(value) != value:
            raise _error(loc, f"{key} must be an integer, got {value!r}", path)
        return int(value)
    return float(value)


_KNOWN_KEYS = {
    "family",
    "feature_list",
    "features",
    "feature_names",
    "metrics",
    "model_checksum",
    "interval_minutes",
    "sequence_length",
    "model_file",
}


def read_spec(loc: ModelLocation, run_root: Path, *, meta_sha256: str | None = None) -> ModelSpec:
    """Parse and validate ``model_meta.json`` of one location (``meta_sha256``: its signed digest)."""
    meta_path = loc.path / META_FILE
    inside(run_root, meta_path.relative_to(run_root), what="model_meta.json link", loc=loc)
    meta = read_json_limited(meta_path, loc, expected_sha256=meta_sha256)
    if not isinstance(meta, dict):
        raise _error(loc, f"{META_FILE} must hold a JSON object", meta_path)
    if "family" in meta:
        declared = fam.find(str(meta["family"]))
        if declared is not loc.family:
            raise _error(
                loc, f"meta says family {short_repr(meta['family'])} but the folder is {loc.path.name}", meta_path
            )

    listed = next((k for k in ("feature_list", "features", "feature_names") if k in meta), None)
    if listed is None:
        raise _error(loc, f"{META_FILE} has no feature_list (nor legacy features / feature_names)", meta_path)
    feature_list = _names(meta[listed], listed, loc, meta_path)
    feature_names = None
    if listed != "feature_names" and "feature_names" in meta:
        feature_names = _names(meta["feature_names"], "feature_names", loc, meta_path)
        if set(feature_names) != set(feature_list):
            raise _error(loc, "feature_names and feature_list name different features", meta_path)
    elif listed == "feature_names":
        feature_names = feature_list

    checksum = meta.get("model_checksum")
    if checksum is not None and (
        not isinstance(checksum, str) or len(checksum) != 64 or any(c not in "0123456789abcdefABCDEF" for c in checksum)
    ):
        raise _error(loc, "model_checksum must be a 64-hex-digit sha256", meta_path)
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict):
        raise _error(loc, "metrics must be an object", meta_path)

    model_path = _model_file(loc, run_root, meta, meta_path)
    return ModelSpec(
        location=loc,
        meta_path=meta_path,
        model_path=model_path,
        feature_list=feature_list,
        feature_names=feature_names,
        metrics=metrics,
        model_checksum=checksum,
        interval_minutes=_number(meta, "interval_minutes", float, loc, meta_path),
        sequence_length=_number(meta, "sequence_length", int, loc, meta_path),
        extra={k: v for k, v in meta.items() if k not in _KNOWN_KEYS},
    )


def _model_file(loc: ModelLocation, run_root: Path, meta: dict, meta_path: Path) -> Path:
    """The native file: ``model_file`` from meta (kept inside the run), else the family's formats in order."""
    if "model_file" in meta:
        if not isinstance(meta["model_file"], str):
            raise _error(loc, "model_file must be a string", meta_path)
        path = inside(run_root, loc.path.relative_to(run_root) / meta["model_file"], what="model_file", loc=loc)
        if path.name not in loc.family.formats:
            raise _error(
                loc,
                f"model_file {path.name!r} is not a {loc.family.name} format ({', '.join(loc.family.formats)})",
                meta_path,
            )
        try:
            exists = path.is_file()
        except OSError:
            exists = False
        if not exists:
            raise _error(loc, "model_file does not exist", path)
        return path
    for name in loc.family.formats:
        candidate = loc.path / name
        if candidate.is_file():
            # Resolved, so a link anywhere on the way (the file, a target or view folder) is caught.
            inside(run_root, candidate.relative_to(run_root), what="model file link", loc=loc)
            return candidate
    raise _error(loc, f"no model file ({', '.join(loc.family.formats)})", loc.path)


def read_manifest(run_root: Path, *, digest: Callable[[Path], str | None] | None = None) -> dict[str, Any]:
    """``manifest.json`` ({} when there is none). ``digest(path)``: the sha256 the bytes must have
    (a signed run's loader passes one that refuses files the signature does not cover)."""
    path = run_root / "manifest.json"
    if not path.is_file():
        return {}
    inside(run_root, "manifest.json", what="manifest.json link")  # a link may not leave the run
    data = read_json_limited(path, expected_sha256=digest(path) if digest else None)
    return data if isinstance(data, dict) else {}


def read_routing_decision(
    run_root: Path, target: str, view: str, *, digest: Callable[[Path], str | None] | None = None
) -> dict[str, Any] | None:
    """The target's ``routing_decision.json`` for ``view`` (or its ``decision/`` folder), else None."""
    for path in (
        run_root / "targets" / target / "models" / f"view={view}" / "routing_decision.json",
        run_root / "targets" / target / "decision" / "routing_decision.json",
    ):
        if path.is_file():
            inside(run_root, path.relative_to(run_root), what="routing_decision.json link")
            data = read_json_limited(path, expected_sha256=digest(path) if digest else None)
            return data if isinstance(data, dict) else None
    return None
