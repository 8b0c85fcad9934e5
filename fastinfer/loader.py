"""ModelLoader: finds a model in the run, trusts it under the run's trust policy, opens it.

Lazy and cached per (target, family, view, universe, symbol). Each model comes back as a
``LoadedModel`` handle: ``predict(X)``, its meta, the feature order it needs and which
backend serves it (the verified ONNX graph when the run has a lock, else the native file).

Opening reads top to bottom: the model's meta (signed digest in a signed run) → the lock entry
→ the graph's bytes checked against the lock's sha256, or the native file's bytes checked by
the ``TrustPolicy`` (signature, else ``model_checksum``) → the format's in-process check and the
crash probe for unverified bytes → the library opens those very bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts, executor, native
from . import families as fam
from .adapters import Adapter, adapter_of
from .artifacts import ModelLocation, ModelSpec
from .atomic import read_regular
from .config import Settings, load_config
from .errors import ConfigError, InferenceError, IntegrityError, MalformedFile, ModelLoadError, SignatureError
from .integrity import ChecksumPolicy, TrustPolicy, sha256_file
from .kernels.screen import float32_screened, nonfinite_count
from .lock import Lock, LockEntry, read_lock
from .runtime import GraphRuntime, batch_threads, default_cache

log = logging.getLogger(__name__)


class Backend(enum.StrEnum):
    ONNX = "onnx"  # the verified graph, in ONNX Runtime
    NATIVE = "native"  # the model library itself


class LoadedModel:
    """A model ready to predict, whatever serves it.

    ``run(X)`` is the bare model: X already in ``feature_order`` (float, (N, F) or (N, T, F)),
    screened for NaN; it returns (N, K) or (N,). ``predict(features)`` is the checked entry
    point: it arranges named or unnamed input, applies ``nan_policy`` and returns float64.
    """

    def __init__(
        self,
        *,
        spec: ModelSpec,
        backend: Backend,
        feature_order: tuple[str, ...],
        columns: tuple[str, ...],
        run: Callable[[np.ndarray], np.ndarray],
        native: Any = None,
        adapter: Adapter | None = None,
        integrity: str = "verified",
        graph: Any = None,
        graph_path: Path | None = None,
        lock_entry: LockEntry | None = None,
        runtime: GraphRuntime | None = None,
    ):
        self.spec = spec
        self.backend = Backend(backend)
        self.feature_order = feature_order
        self.columns = columns
        self.native = native
        self.adapter = adapter if adapter is not None else spec.family.adapter  # what runs ``native``
        self.integrity = integrity
        self.graph_path = graph_path
        self.graph = graph  # the verified onnx.ModelProto when backend is ONNX
        self.lock_entry = lock_entry
        self.runtime = runtime  # the graph's backends and their choice per batch size (ONNX only)
        self._run = run
        self._placements: dict[tuple[str, ...], np.ndarray] = {}
        # NaN/inf rows: "reject" raises naming the row and feature; "pass" hands NaN (never
        # inf) to families that route missing values. The loader sets it from the config.
        self.nan_policy = "reject"

    family = property(lambda self: self.spec.family)
    target = property(lambda self: self.spec.target)
    meta = property(lambda self: self.spec)

    @property
    def n_features(self) -> int:
        return len(self.feature_order)

    def run(self, X: np.ndarray) -> np.ndarray:
        """The model on rows already in ``feature_order``; a failure inside the backend (ONNX
        Runtime or the library) is an ``InferenceError`` naming the model. No rows give no rows
        from every backend (scikit-learn refuses an empty batch, ONNX Runtime does not)."""
        if X.shape[0] == 0:
            return np.empty((0, len(self.columns)), dtype=np.float32)
        try:
            return self._run(X)
        except InferenceError:
            raise
        except Exception as exc:  # every backend raises its own types
            raise InferenceError(
                f"{self._who()}: {self.backend.value} backend failed on {np.shape(X)} rows: "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    def arrange(self, features: Any) -> np.ndarray:
        """A 2-D (or 3-D for sequential families) float array in this model's feature order.

        A dict, Series, DataFrame or named ``FeatureVector`` is placed by name (the mapping from a
        set of column names to this model's order is computed once per set and kept). An
        unnamed array must already be in ``feature_order``: only its width can be checked.
        """
        names = getattr(features, "names", None)
        if names is not None and isinstance(features, np.ndarray):  # a FeatureVector
            X = np.asarray(features)
            return self._checked(X[..., self._placement(tuple(names))] if X.ndim else X)
        # keys(): dict and Series (a list has .index too, so that test would take lists by name)
        if isinstance(features, Mapping) or hasattr(features, "columns") or hasattr(features, "keys"):
            return self._by_name(features)
        try:
            X = np.asarray(features)
        except (TypeError, ValueError) as exc:  # ragged nested lists
            raise InferenceError(f"{self._who()}: features are not an array ({str(exc)[:120]})") from None
        return self._checked(X)

    def _checked(self, X: np.ndarray) -> np.ndarray:
        if X.dtype.kind not in "fiu":
            raise InferenceError(f"{self._who()}: features must be real numbers, got dtype {X.dtype}")
        if not X.dtype.isnative:  # XGBoost's DMatrix reads the raw bytes as native order: wrong numbers
            X = X.astype(X.dtype.newbyteorder("="))
        rank = self.family.input_rank
        if X.ndim == rank - 1:
            X = X[None]
        if X.ndim != rank or X.shape[-1] != self.n_features:
            want = "(N, T, F)" if rank == 3 else "(N, F)"
            raise InferenceError(
                f"{self._who()}: expected {want} with F={self.n_features} in the model's feature_order, "
                f"got shape {X.shape}"
            )
        return X

    def _placement(self, names: tuple[str, ...]) -> np.ndarray:
        """Where each of this model's features sits among ``names`` (computed once per name set)."""
        found = self._placements.get(names)
        if found is None:
            index = {n: j for j, n in enumerate(names)}
            missing = [n for n in self.feature_order if n not in index]
            if missing:
                raise InferenceError(f"{self._who()}: missing feature(s) {', '.join(missing[:10])}")
            found = np.array([index[n] for n in self.feature_order], dtype=np.intp)
            if len(self._placements) >= 16:  # a caller cycling through column sets: keep it small
                self._placements.clear()
            self._placements[names] = found
        return found

    def _by_name(self, features: Any) -> np.ndarray:
        if self.family.input_rank == 3:
            raise InferenceError(f"{self._who()}: sequential models take an (N, T, F) array, not named features")
        if hasattr(features, "columns"):  # DataFrame: one conversion, then a cached gather
            cols = self._placement(tuple(map(str, features.columns)))
            try:
                # C order: pandas hands out column-major blocks, and a BLAS-backed predict rounds
                # differently on them than on the rows an array caller gives.
                return np.ascontiguousarray(features.to_numpy(dtype=np.float64)[:, cols])
            except (TypeError, ValueError):
                pass  # a column that is not numbers: name it below
            for n in self.feature_order:
                try:
                    features[n].to_numpy(dtype=np.float64)
                except (TypeError, ValueError) as exc:
                    raise InferenceError(
                        f"{self._who()}: feature {n!r} is not a real number ({str(exc)[:80]})"
                    ) from None
            raise InferenceError(f"{self._who()}: features are not real numbers")
        # dict or Series: one row (or equal-length columns)
        missing = [n for n in self.feature_order if n not in features]
        if missing:
            raise InferenceError(f"{self._who()}: missing feature(s) {', '.join(missing[:10])}")
        columns = []
        for n in self.feature_order:
            try:
                col = np.atleast_1d(np.asarray(features[n], dtype=np.float64))
            except (TypeError, ValueError) as exc:
                raise InferenceError(f"{self._who()}: feature {n!r} is not a real number ({str(exc)[:80]})") from None
            if col.ndim != 1 or (columns and col.shape != columns[0].shape):
                raise InferenceError(
                    f"{self._who()}: feature {n!r} has shape {col.shape}, the others "
                    f"{columns[0].shape if columns else '(N,)'}"
                )
            columns.append(col)
        return np.stack(columns, axis=1)

    def _screen(self, X: np.ndarray) -> np.ndarray:
        """Apply ``nan_policy``; the array returned is the one the model gets (inf never reaches it).

        Values beyond float32's range count as inf: every ONNX graph (and XGBoost, Keras)
        reads float32, where they would become inf. A graph gets its float32 copy from the same
        pass that checks it.
        """
        given = X
        if self.backend is Backend.ONNX:
            X, bad = float32_screened(X)
        else:
            bad = nonfinite_count(X)
        if not bad:
            return X
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(X.astype(np.float32, copy=False))
        flat = ~finite.reshape(len(X), -1)  # one row per sample: (F,) or (T * F,) values
        rows = np.flatnonzero(flat.any(axis=1)) if X.ndim > 1 else np.array([0])
        j = int(np.flatnonzero(flat[rows[0]])[0])
        step = f" at time step {j // self.n_features}" if X.ndim == 3 else ""
        what = (
            f"row {int(rows[0])} feature {self.feature_order[j % self.n_features]!r}{step} is "
            f"{np.asarray(given).reshape(len(X), -1)[rows[0], j]!r} ({len(rows)} row(s) with NaN/inf)"
        )
        if self.nan_policy == "pass" and self.family.handles_nan:
            return np.where(finite, X, np.nan)  # a copy: the caller's array is not touched
        why = "nan_policy is 'reject'" if self.nan_policy != "pass" else f"{self.family.name} does not handle NaN"
        raise InferenceError(f"{self._who()}: {what}; {why}")

    def predict(self, features: Any) -> np.ndarray:
        """float64 (N,) for point models, (N, K) with ``columns`` for multi-output ones."""
        out = np.asarray(self.run(self._screen(self.arrange(features))), dtype=np.float64)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out

    def _who(self) -> str:
        return f"target={self.target!r} family={self.family.name!r}"

    def __repr__(self) -> str:
        return f"<LoadedModel {self.target}/{self.family.name} backend={self.backend.value} features={self.n_features}>"


class ModelLoader:
    """The spec's loader: ``ModelLoader(run_root, verify_checksums=None, strict_checksums=None)``.

    ``load`` returns None when the run has no such model (as the spec's examples expect) and
    raises ``ModelLoadError`` when a model exists but cannot be trusted or opened.
    """

    def __init__(
        self,
        run_root: str | Path,
        verify_checksums: bool | None = None,
        strict_checksums: bool | None = None,
        allow_unsigned: bool | None = None,
        *,
        settings: Settings | None = None,
        config_path: str | Path | None = None,
        prefer_onnx: bool | None = None,
        verify_signature: bool | None = None,
        trusted_public_key: Any = None,
    ):
        self.settings = settings if settings is not None else load_config(config_path)
        ms = self.settings.models
        checksums = ChecksumPolicy(
            verify=ms.verify_checksums if verify_checksums is None else verify_checksums,
            strict=ms.strict_checksums if strict_checksums is None else strict_checksums,
            allow_unsigned=ms.allow_unsigned if allow_unsigned is None else allow_unsigned,
        )
        self.prefer_onnx = ms.prefer_onnx if prefer_onnx is None else prefer_onnx
        self.run_root = artifacts.resolve_run_root(run_root)
        # The signature is checked once, here, before anything of the run is read or opened.
        signed = None
        key = trusted_public_key if trusted_public_key is not None else ms.trusted_public_key
        if ms.verify_signature if verify_signature is None else verify_signature:
            if key is None:
                raise ConfigError(
                    "models.trusted_public_key: verify_signature is on but no trusted public key is given"
                )
            from .signing import verify_run

            signed = verify_run(self.run_root, key)
        self.trust = TrustPolicy(checksums, signed)
        self._locations: dict[tuple, ModelLocation] = {loc.key: loc for loc in artifacts.discover(self.run_root)}
        self._cache: dict[tuple, LoadedModel] = {}
        self.errors: dict[tuple[str, str], ModelLoadError] = {}
        self.lock: Lock | None = signed.lock() if signed is not None else read_lock(self.run_root)
        if not ms.lazy_load:
            self.load_all()

    @property
    def policy(self) -> ChecksumPolicy:
        return self.trust.checksums

    @property
    def signed(self):
        """The verified signature (``fastinfer.signing.SignedRun``) when the run was opened signed."""
        return self.trust.signed

    # ------------------------------------------------------------ discovery

    def list_targets(self) -> list[str]:
        """Targets with a model folder. manifest.json is read (and, in a signed run, checked), but its
        ``target_index`` cannot add a target without models: whatever it holds (a hostile number,
        a list of lists) it can only name folders that discovery already found."""
        artifacts.read_manifest(self.run_root, digest=self._signed_digest)
        return sorted({loc.target for loc in self._locations.values()})

    def list_families(self, target: str, view: str | None = None) -> list[str]:
        return sorted(
            {
                loc.family.name
                for loc in self._locations.values()
                if loc.target == target and (view is None or loc.view == view)
            }
        )

    def locations(self) -> list[ModelLocation]:
        return list(self._locations.values())

    def locate(
        self,
        target: str,
        family: str | fam.Family,
        view: str | None = None,
        *,
        universe: str | None = None,
        symbol: str | None = None,
    ) -> ModelLocation | None:
        """The model's directory; with no view, CROSS_SECTIONAL first, else its only view."""
        family = self._family(family, target)
        matches = [
            loc
            for loc in self._locations.values()
            if loc.target == target
            and loc.family is family
            and loc.universe == universe
            and loc.symbol == symbol
            and (view is None or loc.view == view)
        ]
        if len(matches) > 1:
            preferred = [m for m in matches if m.view == artifacts.CROSS_SECTIONAL]
            if len(preferred) != 1:
                views = ", ".join(sorted(m.view for m in matches))
                raise ModelLoadError(family.name, target, f"found in several views ({views}): name one")
            matches = preferred
        return matches[0] if matches else None

    def spec(self, target: str, family: str, view: str | None = None, **scope: Any) -> ModelSpec:
        loc = self.locate(target, family, view, **scope)
        if loc is None:
            raise ModelLoadError(str(family), target, "no such model in the run", self.run_root)
        return self.spec_of(loc)

    def spec_of(self, loc: ModelLocation) -> ModelSpec:
        """``model_meta.json`` of one location; in a signed run, checked against its signed digest."""
        meta_sha256 = self._signed_digest(loc.path / artifacts.META_FILE, loc)
        return artifacts.read_spec(loc, self.run_root, meta_sha256=meta_sha256)

    def get_feature_list(self, target: str, family: str, view: str | None = None, **scope: Any) -> list[str]:
        """The meta's ``feature_list`` (as TRAINING wrote it); a handle's ``feature_order`` is the model's."""
        return list(self.spec(target, family, view, **scope).feature_list)

    def definitions(self):
        """The run's ``feature_definitions.yaml`` (a ``FeatureDefinitions``), or None when it has none.

        Read like every file of the run: in a signed run it must be covered by the signature with
        the bytes read; otherwise it is checked against the sha256 the lock recorded when the run
        was converted (a change warns, or raises under ``strict_checksums``).
        """
        from .features import DEFINITIONS_FILE, FeatureDefinitions
        from .features.definitions import MAX_BYTES as MAX_DEFINITIONS_BYTES
        from .integrity import sha256_bytes

        path = artifacts.inside(self.run_root, DEFINITIONS_FILE, what=f"{DEFINITIONS_FILE} link")
        recorded = self.lock.definitions_sha256 if self.lock is not None else None
        if not path.is_file():
            if recorded or (self.signed is not None and self.signed.digest(path)):
                raise ModelLoadError(None, None, f"{DEFINITIONS_FILE} is missing (the run recorded one)", path)
            return None
        signed = self._signed_digest(path)
        try:
            data = read_regular(path, MAX_DEFINITIONS_BYTES)
        except OSError as exc:
            raise ModelLoadError(None, None, f"cannot read {DEFINITIONS_FILE}: {exc.strerror}", path) from None
        if len(data) > MAX_DEFINITIONS_BYTES:
            raise ModelLoadError(None, None, f"{DEFINITIONS_FILE} is over {MAX_DEFINITIONS_BYTES} bytes", path)
        digest = sha256_bytes(data)
        if signed is not None and digest != signed:
            raise SignatureError(None, None, "signed feature definitions changed since the run was opened", path)
        if recorded and digest != recorded:
            if self.policy.strict:
                raise IntegrityError(
                    None, None, "feature definitions differ from the ones the run was converted with", path
                )
            log.warning("%s: feature definitions changed since the run was converted", path)
        return FeatureDefinitions.loads(data, where=str(path))

    def definitions_sha256(self) -> str | None:
        """sha256 of the run's ``feature_definitions.yaml`` as it is now (None: the run has none)."""
        from .features import DEFINITIONS_FILE

        path = artifacts.inside(self.run_root, DEFINITIONS_FILE, what=f"{DEFINITIONS_FILE} link")
        return sha256_file(path) if path.is_file() else None

    def get_routing_decision(self, target: str, view: str = artifacts.CROSS_SECTIONAL) -> dict | None:
        return artifacts.read_routing_decision(self.run_root, target, view, digest=self._signed_digest)

    # ------------------------------------------------------------ loading

    def load(
        self,
        target: str,
        family: str,
        view: str | None = None,
        *,
        universe: str | None = None,
        symbol: str | None = None,
    ) -> LoadedModel | None:
        loc = self.locate(target, family, view, universe=universe, symbol=symbol)
        if loc is None:
            return None
        if loc.key in self._cache:
            return self._cache[loc.key]
        model = self._open(loc)
        if self.settings.models.cache_models:
            self._cache[loc.key] = model
        return model

    def load_all(
        self, targets: Iterable[str] | None = None, families: Iterable[str] | None = None, view: str | None = None
    ) -> dict[tuple[str, str], LoadedModel]:
        """Every (target, family) asked for that exists; failures are logged and kept in ``errors``."""
        targets = list(targets) if targets is not None else self.list_targets()
        families = list(families) if families is not None else None  # read once: a generator serves every target
        models: dict[tuple[str, str], LoadedModel] = {}
        for target in targets:
            names = families if families is not None else self.list_families(target, view)
            for name in names:
                try:
                    model = self.load(target, name, view)
                except ModelLoadError as exc:
                    log.warning("skipping %s", exc)
                    self.errors[(target, str(name))] = exc
                    continue
                if model is not None:
                    models[(target, model.family.name)] = model
                elif any(loc.target == target and loc.family is fam.find(name) for loc in self._locations.values()):
                    # only symbol/universe-scoped models of this pair: load(..., symbol=...) opens them
                    log.warning("%s/%s: only symbol/universe-scoped models (load with symbol=/universe=)", target, name)
        return models

    def is_loaded(self, target: str, family: str, view: str | None = None) -> bool:
        loc = self.locate(target, family, view)
        return loc is not None and loc.key in self._cache

    # ------------------------------------------------------------ internals

    def _family(self, name: str | fam.Family, target: str) -> fam.Family:
        try:
            return fam.resolve(name)
        except ValueError as exc:
            raise ModelLoadError(str(name), target, str(exc)) from None

    def _signed_digest(self, path: Path, loc: ModelLocation | None = None) -> str | None:
        """The signed sha256 a file of the run must have (None unless the run is opened signed)."""
        return self.trust.signed_digest(
            path, family=loc.family.name if loc else None, target=loc.target if loc else None
        )

    def _open(self, loc: ModelLocation) -> LoadedModel:
        entry = self.lock.find(loc.key) if self.lock is not None else None
        if self.signed is not None and (entry is None or entry.status == "failed"):
            why = "is not in the signed lock" if entry is None else "failed at conversion and is not signed"
            raise SignatureError(loc.family.name, loc.target, f"model {why}: not trusted", loc.path)
        spec = self.spec_of(loc)
        if self.signed is not None and spec.model_path.resolve() != (self.run_root / entry.native_file).resolve():
            raise SignatureError(
                loc.family.name,
                loc.target,
                "model_meta.json names a model file the signature does not cover",
                spec.model_path,
            )
        model = None
        if entry is not None and entry.status == "onnx" and self.prefer_onnx:
            model = self._open_onnx(spec, entry)
        model = model or self._open_native(spec)
        model.nan_policy = self.settings.predictor.nan_policy
        return model

    def _open_onnx(self, spec: ModelSpec, entry: LockEntry) -> LoadedModel | None:
        """The verified graph, or None (serve native) when the lock is stale or, non-strict, tampered."""
        import onnx

        from .converters import check_graph
        from .errors import ConversionError

        family, target = spec.family.name, spec.target
        if spec.model_checksum:
            native_sha = spec.model_checksum.lower()
        elif self.signed is not None:  # verify_run hashed it when the run was opened
            native_sha = self._signed_digest(spec.model_path, spec.location)
        else:
            native_sha = sha256_file(spec.model_path)
        if native_sha != entry.native_sha256 or set(entry.feature_order) != set(spec.feature_list):
            if self.signed is not None:  # a signed run is served exactly as signed
                raise SignatureError(family, target, "model_meta.json disagrees with the signed lock", spec.meta_path)
            log.warning("%s/%s: lock is stale (native model changed since conversion): serving native", target, family)
            return None
        path = artifacts.inside(self.run_root, entry.onnx_file, what="lock onnx_file", loc=spec.location)
        verified = self.trust.read_graph(path, entry.onnx_sha256, family=family, target=target)
        if verified is None:
            return None
        try:
            graph = onnx.load_from_string(verified.data)
            check_graph(graph)
            session = executor.open_session(verified.data, self.settings.executor, name=f"{target}/{family}")
        except (ConversionError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
            raise ModelLoadError(family, target, f"graph refused: {exc}", path) from None
        except Exception as exc:  # protobuf / onnxruntime errors on a malformed graph
            raise ModelLoadError(
                family, target, f"graph refused: {type(exc).__name__}: {str(exc)[:200]}", path
            ) from None
        out_name, in_name = entry.output.get("name", "prediction"), entry.input.get("name", "features")

        def runner(session) -> Callable[[np.ndarray], np.ndarray]:
            return lambda X: session.run([out_name], {in_name: np.ascontiguousarray(X, dtype=np.float32)})[0]

        ex = self.settings.executor
        threads = batch_threads(ex.batch_threads)

        def batch_session() -> Callable[[np.ndarray], np.ndarray]:
            settings = dataclasses.replace(ex, intra_op_threads=threads)
            return runner(executor.open_session(verified.data, settings, name=f"{target}/{family}-batch"))

        runtime = GraphRuntime(
            graph,
            verified.sha256,
            runner(session),
            batch_session,
            forest_kernel=ex.forest_kernel,
            threads=threads,
            cache=default_cache() if ex.runtime_cache else None,
        )
        return LoadedModel(
            spec=spec,
            backend=Backend.ONNX,
            feature_order=tuple(entry.feature_order),
            columns=tuple(entry.output.get("columns", ("prediction",))),
            run=runtime.run,
            graph=graph,
            graph_path=path,
            lock_entry=entry,
            runtime=runtime,
        )

    def _open_native(self, spec: ModelSpec) -> LoadedModel:
        """Read the native file once, verify those bytes, open exactly those bytes."""
        family, target, path = spec.family, spec.target, spec.model_path
        fmt = family.file_format(path.name)
        if fmt is None:  # artifacts only returns the family's own formats; a bug otherwise
            raise ModelLoadError(family.name, target, f"{path.name} is not a {family.name} format", path)
        verified = self.trust.read_native(
            path, spec.model_checksum, family=family.name, target=target, executes_code=fmt.executes_code
        )
        if verified.status != "verified" and not fmt.executes_code:
            # Not verified: this format's parser may crash on damaged bytes. The in-process
            # structure check first, then the same bytes opened and run in a throw-away
            # interpreter (SECURITY.md: the cost).
            problem = fmt.check(verified.data) if fmt.check else None
            if problem is None and fmt.crash_probe:
                problem = native.probe_in_subprocess(family, path.name, verified.data, len(spec.feature_list))
            elif problem is not None:
                problem = f"cannot open: {problem}"
            if problem:
                raise ModelLoadError(family.name, target, problem, path)
        try:
            model = fmt.load(verified.data)
        except ModelLoadError as exc:  # a format's own reason (e.g. a Keras file to re-save): kept whole
            raise ModelLoadError(family.name, target, exc.reason, path) from exc
        except MalformedFile as exc:  # the format's check on the bytes: worded as when unverified
            raise ModelLoadError(family.name, target, f"cannot open: {exc}", path) from exc
        except Exception as exc:  # every library raises its own types for a broken file
            raise ModelLoadError(
                family.name, target, f"cannot open: {type(exc).__name__}: {str(exc)[:200]}", path
            ) from exc
        adapter = adapter_of(model, family)
        if adapter is None:
            raise ModelLoadError(
                family.name,
                target,
                f"{path.name} holds a {type(model).__module__}.{type(model).__qualname__}, not a model "
                f"({family.name} takes {', '.join(family.adapter.accepts)}; any object with predict(X) runs natively)",
                path,
            )
        order = _feature_order(spec, adapter.feature_names(model))
        return LoadedModel(
            spec=spec,
            backend=Backend.NATIVE,
            feature_order=order,
            columns=adapter.output_columns(model),
            run=lambda X, m=model: adapter.predict(m, X),
            native=model,
            adapter=adapter,
            integrity=verified.status,
        )


def _feature_order(spec: ModelSpec, recorded: list[str] | None) -> tuple[str, ...]:
    """The model's own recorded order, else the meta's training order, else feature_list."""
    order = tuple(recorded) if recorded else (spec.feature_names or spec.feature_list)
    if set(order) != set(spec.feature_list):
        extra = sorted(set(order) - set(spec.feature_list))
        missing = sorted(set(spec.feature_list) - set(order))
        raise ModelLoadError(
            spec.family.name,
            spec.target,
            f"model's features disagree with feature_list: model has {extra[:5]}, "
            f"feature_list has {missing[:5]} the model lacks",
            spec.meta_path,
        )
    return order
