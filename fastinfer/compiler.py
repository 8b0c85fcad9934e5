"""Compile a run: every native model → ONNX graph → parity gate → ``fastinfer.lock.json``.

A graph that converts and passes the gate is written beside its native model as
``model.onnx`` (atomically) and marked ``onnx`` in the lock; anything else is marked
``native`` with the reason, and the loader keeps serving the native file.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import converters
from . import families as fam
from .atomic import write_atomic_bytes
from .converters import parity
from .errors import ConversionError, ModelLoadError
from .integrity import sha256_bytes, sha256_file
from .loader import LoadedModel, ModelLoader
from .lock import LOCK_FILE, ONNX_FILE, Lock, LockEntry, write_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileEvent:
    """What a progress callback sees after each model."""

    entry: LockEntry
    done: int
    total: int


def _base_entry(model: LoadedModel, run_root: Path) -> LockEntry:
    loc = model.spec.location
    return LockEntry(
        target=loc.target,
        view=loc.view,
        family=loc.family.name,
        universe=loc.universe,
        symbol=loc.symbol,
        native_file=str(model.spec.model_path.relative_to(run_root)),
        native_sha256=sha256_file(model.spec.model_path),
        status="native",
        feature_order=list(model.feature_order),
    )


def compile_model(
    model: LoadedModel, run_root: Path, probe_seed: int = 0, feature_scale: np.ndarray | None = None
) -> LockEntry:
    """Convert and gate one native model; returns its lock entry (status onnx or native)."""
    entry = _base_entry(model, run_root)
    family, spec = model.family, model.spec
    start = time.perf_counter()
    try:
        graph = converters.convert(model.native, family, model.n_features, spec.sequence_length)
    except ConversionError as exc:
        entry.reason = f"not convertible: {exc}"
        entry.convert_seconds = round(time.perf_counter() - start, 3)
        return entry
    probes = parity.probe_rows(
        family,
        model.n_features,
        probe_seed,
        spec.sequence_length,
        thresholds=parity.tree_thresholds(graph),
        feature_scale=feature_scale,
        categorical=model.adapter.categorical_features(model.native),  # integer codes: seen, unseen, <0, NaN
    )
    report = parity.check_parity(model.native, graph, probes, family, feature_names=list(model.feature_order))
    entry.convert_seconds = round(time.perf_counter() - start, 3)
    entry.parity = {
        "max_abs": report.max_abs,
        "max_rel": report.max_rel,
        "tolerance": report.tolerance,
        "n_rows": report.n_rows,
    }
    entry.converter, entry.opsets, entry.versions = graph.converter, dict(graph.opsets), dict(graph.versions)
    shape = ["N", spec.sequence_length, model.n_features] if family.sequential else ["N", model.n_features]
    entry.input = {"name": converters.INPUT_NAME, "shape": shape, "dtype": "float32"}
    entry.output = {"name": converters.OUTPUT_NAME, "columns": list(graph.columns)}
    if not report.passed:
        entry.reason = f"parity gate failed: {report.reason}"
        return entry
    data = graph.model.SerializeToString()
    onnx_path = spec.model_path.parent / ONNX_FILE
    write_atomic_bytes(onnx_path, data)
    entry.status = "onnx"
    entry.onnx_file = str(onnx_path.relative_to(run_root))
    entry.onnx_sha256 = sha256_bytes(data)  # the bytes written, not a second read of the file
    return entry


def _stale_temp_files(run_root: Path, folders: Iterable[Path]) -> list[Path]:
    """Temp files a killed ``convert`` left behind (``write_atomic_bytes`` names them
    ``.<name>.<random>.tmp``): this compiler's own, the graph's and the lock's, nothing else."""
    # rglob: a model_file in a subfolder has its graph written beside it
    found = [p for folder in folders for p in folder.rglob(f".{ONNX_FILE}.*.tmp")]
    return found + list(run_root.glob(f".{LOCK_FILE}.*.tmp"))


def _failed_entry(loc, run_root: Path, reason: str) -> LockEntry:
    """A model that could not be opened: recorded with its reason, so every other model of the run
    stays servable and ``verify`` reports it (its file's sha256 where the file can be read)."""
    files = [loc.path / f for f in loc.family.formats if (loc.path / f).is_file() and not (loc.path / f).is_symlink()]
    native = files[0] if files else loc.path
    try:
        digest = sha256_file(native) if files else ""
    except OSError:
        digest = ""
    return LockEntry(
        loc.target,
        loc.view,
        loc.family.name,
        loc.universe,
        loc.symbol,
        native_file=str(native.relative_to(run_root)),
        native_sha256=digest,
        status="failed",
        reason=reason,
    )


def compile_run(
    run_root: str | Path,
    targets: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
    *,
    loader: ModelLoader | None = None,
    progress: Callable[[CompileEvent], None] | None = None,
    feature_scale: dict[str, float] | None = None,
) -> Lock:
    """Compile every model of the run (or the targets × families asked for) and write the lock.

    A model that fails to load is recorded as ``failed`` with the loader's reason (every other
    model stays servable); one whose conversion fails stays ``native`` with the reason. Temp
    files a killed ``convert`` left are removed first.
    ``feature_scale`` (feature name → typical magnitude) makes probes realistic.
    """
    loader = loader or ModelLoader(run_root, prefer_onnx=False)
    run_root = loader.run_root
    wanted_targets = set(targets) if targets is not None else None
    wanted_families = {fam.resolve(f).name for f in families} if families is not None else None
    everything = loader.locations()
    locations = [
        loc
        for loc in everything
        if (wanted_targets is None or loc.target in wanted_targets)
        and (wanted_families is None or loc.family.name in wanted_families)
    ]
    for what, wanted, present in (
        ("target", wanted_targets, {loc.target for loc in everything}),
        ("family", wanted_families, {loc.family.name for loc in everything}),
    ):
        unknown = sorted(wanted - present) if wanted is not None else []
        if unknown:  # a typo must not rewrite the lock without the models it meant
            raise ModelLoadError(
                None, None, f"no {what} {unknown[0]!r} in the run (it has: {sorted(present)[:20]})", run_root
            )
    for stale in _stale_temp_files(run_root, {loc.path for loc in locations}):
        stale.unlink(missing_ok=True)
        log.info("removed %s, left by a convert that did not finish", stale)
    entries: list[LockEntry] = []
    for i, loc in enumerate(locations, 1):
        try:
            model = loader.load(loc.target, loc.family.name, loc.view, universe=loc.universe, symbol=loc.symbol)
        except ModelLoadError as exc:
            entry = _failed_entry(loc, run_root, f"failed to load: {exc.reason}")
        else:
            scale = None
            if feature_scale:
                scale = np.array([feature_scale.get(name, 1.0) for name in model.feature_order])
            try:
                entry = compile_model(model, run_root, feature_scale=scale)
            except Exception as exc:  # a converter or the gate failing unexpectedly: the model stays native
                entry = _base_entry(model, run_root)
                entry.reason = f"conversion failed: {type(exc).__name__}: {str(exc)[:300]}"
        entries.append(entry)
        log.info("%s/%s: %s %s", loc.target, loc.family.name, entry.status, entry.reason)
        if progress:
            progress(CompileEvent(entry, i, len(locations)))
    if targets is not None or families is not None:  # a partial convert keeps the other models' entries
        done = {e.key for e in entries}
        kept = [e for e in (loader.lock.entries if loader.lock else []) if e.key not in done]
        entries = [*kept, *entries]
    definitions_sha256 = loader.definitions_sha256()
    previous = loader.lock
    if (
        previous is not None
        and previous.definitions_sha256 == definitions_sha256
        and _unchanged(previous.entries, entries)
    ):  # a second convert of an unchanged run: the lock (and a signature over it) stays as it is
        log.info("%s: every model converted as the lock records: lock left unchanged", run_root)
        return previous
    lock = Lock(
        entries,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        definitions_sha256=definitions_sha256,
    )
    write_lock(run_root, lock)
    return lock


def _unchanged(old: list[LockEntry], new: list[LockEntry]) -> bool:
    """The same entries in the same order, but for how long each conversion took."""

    def content(entries: list[LockEntry]) -> list[dict]:
        return [{k: v for k, v in asdict(e).items() if k != "convert_seconds"} for e in entries]

    return content(old) == content(new)
