"""ModelLoader: finds a model in the run, trusts it under the checksum policy, opens it.

Lazy and cached per (target, family, view, universe, symbol). Each model comes back as a
``LoadedModel`` handle: ``predict(X)``, its meta, the feature order it needs and which
backend serves it (the verified ONNX graph when the run has a lock, else the native file).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts, executor, native
from . import families as fam
from .artifacts import ModelLocation, ModelSpec
from .config import Settings, load_config
from .errors import ConfigError, InferenceError, ModelLoadError, SignatureError
from .integrity import ChecksumPolicy, check_file, sha256_bytes, sha256_file
from .lock import Lock, LockEntry, read_lock

log = logging.getLogger(__name__)


class LoadedModel:
    """A model ready to predict, whatever serves it."""

    def __init__(
        self,
        spec: ModelSpec,
        backend: str,
        feature_order: tuple[str, ...],
        columns: tuple[str, ...],
        runner: Callable[[np.ndarray], np.ndarray],
        native_model: Any = None,
        integrity: str = "verified",
        graph_path: Path | None = None,
        graph: Any = None,
        lock_entry: LockEntry | None = None,
    ):
        self.spec = spec
        self.backend = backend  # "onnx" or "native"
        self.feature_order = feature_order
        self.columns = columns
        self.native = native_model
        self.integrity = integrity
        self.graph_path = graph_path
        self.graph = graph  # the verified onnx.ModelProto when backend == "onnx"
        self.lock_entry = lock_entry
        self._runner = runner
        # NaN/inf rows: "reject" raises naming the row and feature; "pass" hands NaN (never
        # inf) to families that route missing values. The loader sets it from the config.
        self.nan_policy = "reject"

    family = property(lambda self: self.spec.family)
    target = property(lambda self: self.spec.target)
    meta = property(lambda self: self.spec)

    @property
    def n_features(self) -> int:
        return len(self.feature_order)

    def arrange(self, features: Any) -> np.ndarray:
        """A 2-D (or 3-D for sequential families) float array in this model's feature order.

        Arrays are taken as already ordered; a dict, Series or DataFrame is placed by name.
        """
        # keys(): dict and Series (a list has .index too, so that test would take lists by name)
        if isinstance(features, Mapping) or hasattr(features, "columns") or hasattr(features, "keys"):
            return self._by_name(features)
        try:
            X = np.asarray(features)
        except (TypeError, ValueError) as exc:  # ragged nested lists
            raise InferenceError(f"{self._who()}: features are not an array ({str(exc)[:120]})") from None
        if X.dtype.kind not in "fiu":
            raise InferenceError(f"{self._who()}: features must be real numbers, got dtype {X.dtype}")
        rank = self.family.input_rank
        if X.ndim == rank - 1:
            X = X[None]
        if X.ndim != rank or X.shape[-1] != self.n_features:
            want = "(N, T, F)" if rank == 3 else "(N, F)"
            raise InferenceError(f"{self._who()}: expected {want} with F={self.n_features}, got shape {X.shape}")
        return X

    def _by_name(self, features: Any) -> np.ndarray:
        if self.family.input_rank == 3:
            raise InferenceError(f"{self._who()}: sequential models take an (N, T, F) array, not named features")
        if hasattr(features, "columns"):  # DataFrame
            names = set(map(str, features.columns))
            get = lambda n: features[n].to_numpy(dtype=np.float64)  # noqa: E731
        else:  # dict or Series: one row
            names = set(map(str, features.keys()))
            get = lambda n: np.atleast_1d(np.asarray(features[n], dtype=np.float64))  # noqa: E731
        missing = [n for n in self.feature_order if n not in names]
        if missing:
            raise InferenceError(f"{self._who()}: missing feature(s) {', '.join(missing[:10])}")
        columns = []
        for n in self.feature_order:
            try:
                col = get(n)
            except (TypeError, ValueError) as exc:
                raise InferenceError(f"{self._who()}: feature {n!r} is not a real number ({str(exc)[:80]})") from None
            if col.ndim != 1 or (columns and col.shape != columns[0].shape):
                raise InferenceError(
                    f"{self._who()}: feature {n!r} has shape {col.shape}, the others "
                    f"{columns[0].shape if columns else '(N,)'}"
                )
            columns.append(col)
        return np.column_stack(columns)

    def _screen(self, X: np.ndarray) -> np.ndarray:
        """Apply ``nan_policy``; the array returned is the one the model gets (inf never reaches it).

        Values beyond float32's range count as inf: every ONNX graph (and XGBoost, Keras)
        reads float32, where they would become inf.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(X.astype(np.float32, copy=False)) if X.dtype.kind == "f" else None
        if finite is None or finite.all():
            return X
        rows = np.flatnonzero(~finite.reshape(len(X), -1).all(axis=1)) if X.ndim > 1 else np.array([0])
        col = int(np.flatnonzero(~finite.reshape(len(X), -1)[rows[0]])[0]) % self.n_features
        what = (
            f"row {int(rows[0])} feature {self.feature_order[col]!r} is "
            f"{X.reshape(len(X), -1)[rows[0]].flat[col]!r} ({len(rows)} row(s) with NaN/inf)"
        )
        if self.nan_policy == "pass" and self.family.handles_nan:
            return np.where(finite, X, np.nan)  # a copy: the caller's array is not touched
        why = "nan_policy is 'reject'" if self.nan_policy != "pass" else f"{self.family.name} does not handle NaN"
        raise InferenceError(f"{self._who()}: {what}; {why}")

    def predict(self, features: Any) -> np.ndarray:
        """float64 (N,) for point models, (N, K) with ``columns`` for multi-output ones."""
        out = np.asarray(self._runner(self._screen(self.arrange(features))), dtype=np.float64)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out

    def _who(self) -> str:
        return f"target={self.target!r} family={self.family.name!r}"

    def __repr__(self) -> str:
        return f"<LoadedModel {self.target}/{self.family.name} backend={self.backend} features={self.n_features}>"


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
        self.policy = ChecksumPolicy(
            verify=ms.verify_checksums if verify_checksums is None else verify_checksums,
            strict=ms.strict_checksums if strict_checksums is None else strict_checksums,
            allow_unsigned=ms.allow_unsigned if allow_unsigned is None else allow_unsigned,
        )
        self.prefer_onnx = ms.prefer_onnx if prefer_onnx is None else prefer_onnx
        self.run_root = artifacts.resolve_run_root(run_root)
        # The signature is checked once, here, before anything of the run is read or opened.
        self.signed = None
        key = trusted_public_key if trusted_public_key is not None else ms.trusted_public_key
        if ms.verify_signature if verify_signature is None else verify_signature:
            if key is None:
                raise ConfigError(
                    "models.trusted_public_key: verify_signature is on but no trusted public key is given"
                )
            from .signing import verify_run

            self.signed = verify_run(self.run_root, key)
        self._locations: dict[tuple, ModelLocation] = {loc.key: loc for loc in artifacts.discover(self.run_root)}
        self._cache: dict[tuple, LoadedModel] = {}
        self.errors: dict[tuple[str, str], ModelLoadError] = {}
        self.lock = self._read_lock()
        if not ms.lazy_load:
            self.load_all()

    # ------------------------------------------------------------ discovery

    def list_targets(self) -> list[str]:
        indexed = artifacts.read_manifest(self.run_root, digest=self._signed_digest).get("target_index") or {}
        found = {loc.target for loc in self._locations.values()}
        return sorted(found | (set(indexed) & found))

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
        models: dict[tuple[str, str], LoadedModel] = {}
        for target in targets:
            names = list(families) if families is not None else self.list_families(target, view)
            for name in names:
                try:
                    model = self.load(target, name, view)
                except ModelLoadError as exc:
                    log.warning("skipping %s", exc)
                    self.errors[(target, str(name))] = exc
                    continue
                if model is not None:
                    models[(target, model.family.name)] = model
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

    def _read_lock(self) -> Lock | None:
        return self.signed.lock() if self.signed is not None else read_lock(self.run_root)

    def _signed_digest(self, path: Path, loc: ModelLocation | None = None) -> str | None:
        """The signed sha256 of a file of the run; None when the run is not opened signed.

        In a signed run every file read must be covered by the signature: one that is not
        (added after signing, or reached through a link) is a ``SignatureError`` naming it.
        """
        if self.signed is None:
            return None
        path = Path(path)
        digest = None if path.is_symlink() else self.signed.digest(path)
        if digest is None:
            raise SignatureError(
                loc.family.name if loc else None,
                loc.target if loc else None,
                f"{path.name} is not covered by the signature: not trusted",
                path,
            )
        return digest

    def _open(self, loc: ModelLocation) -> LoadedModel:
        model = self._open_trusted(loc)
        model.nan_policy = self.settings.predictor.nan_policy
        return model

    def _open_trusted(self, loc: ModelLocation) -> LoadedModel:
        if self.signed is not None and self.lock.find(loc.key) is None:
            raise SignatureError(loc.family.name, loc.target, "model is not in the signed lock: not trusted", loc.path)
        spec = self.spec_of(loc)
        if self.signed is not None:
            entry = self.lock.find(loc.key)
            if spec.model_path.resolve() != (self.run_root / entry.native_file).resolve():
                raise SignatureError(
                    loc.family.name,
                    loc.target,
                    "model_meta.json names a model file the signature does not cover",
                    spec.model_path,
                )
        entry = self.lock.find(loc.key) if self.lock is not None and self.prefer_onnx else None
        if entry is not None and entry.status == "onnx":
            model = self._open_onnx(spec, entry)
            if model is not None:
                return model
        return self._open_native(spec)

    def _open_onnx(self, spec: ModelSpec, entry: LockEntry) -> LoadedModel | None:
        """The verified graph, or None (serve native) when the lock is stale or, non-strict, tampered."""
        import onnx

        from .converters import check_graph
        from .errors import ConversionError, IntegrityError

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
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(family, target, f"cannot read graph ({exc.strerror})", path) from None
        if hashlib.sha256(data).hexdigest() != entry.onnx_sha256:
            if self.signed is not None:
                raise SignatureError(family, target, "signed ONNX graph changed since the run was opened", path)
            if self.policy.strict:
                raise IntegrityError(family, target, "ONNX graph sha256 differs from the lock", path)
            log.warning("%s: ONNX graph sha256 differs from the lock: serving native", path)
            return None
        try:
            graph = onnx.load_from_string(data)
            check_graph(graph)
            session = executor.open_session(data, self.settings.executor, name=f"{target}/{family}")
        except (ConversionError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
            raise ModelLoadError(family, target, f"graph refused: {exc}", path) from None
        except Exception as exc:  # protobuf / onnxruntime errors on a malformed graph
            raise ModelLoadError(
                family, target, f"graph refused: {type(exc).__name__}: {str(exc)[:200]}", path
            ) from None
        out_name, in_name = entry.output.get("name", "prediction"), entry.input.get("name", "features")

        def run(X: np.ndarray) -> np.ndarray:
            return session.run([out_name], {in_name: np.ascontiguousarray(X, dtype=np.float32)})[0]

        return LoadedModel(
            spec,
            "onnx",
            tuple(entry.feature_order),
            tuple(entry.output.get("columns", ("prediction",))),
            run,
            None,
            "verified",
            path,
            graph,
            entry,
        )

    def _open_native(self, spec: ModelSpec) -> LoadedModel:
        """Hash the native file once and open exactly what was hashed where the format allows.

        Pickles and LightGBM text are read into memory once; those bytes are hashed, checked
        against the signed digest and/or ``model_checksum`` (and, unverified, probed), and
        loaded, so a file swapped after the check is never opened. XGBoost, CatBoost and Keras
        need a path for their library's loader: hashed once, then opened by path.
        """
        family, target, path = spec.family.name, spec.target, spec.model_path
        pickle = path.name in fam.PICKLE_FORMATS
        signed = self._signed_digest(path, spec.location)
        data: bytes | None = None
        actual: str | None = None
        if path.name in native.BYTES_LOADERS:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ModelLoadError(family, target, f"cannot read model file ({exc.strerror})", path) from None
            actual = sha256_bytes(data)
        elif signed is not None:
            actual = sha256_file(path)
        if signed is not None and actual != signed:
            raise SignatureError(family, target, "native model file changed since the run was opened", path)
        integrity = check_file(
            path, spec.model_checksum, self.policy, family=family, target=target, executes_code=pickle, actual=actual
        )
        if integrity != "verified" and path.name in native.PROBED_FORMATS:
            # Not verified, and this format's parser can crash on a damaged file: the same
            # bytes are opened in a throw-away interpreter first (SECURITY.md: the cost).
            malformed = native.precheck(path.name, data)  # cheap and in-process: no probe needed for these
            problem = f"cannot open: {malformed}" if malformed else native.probe_in_subprocess(path, data)
            if problem:
                raise ModelLoadError(family, target, problem, path)
        try:
            model = native.load_native_bytes(path.name, data) if data is not None else native.load_native(path)
        except Exception as exc:  # every library raises its own types for a broken file
            raise ModelLoadError(family, target, f"cannot open: {type(exc).__name__}: {str(exc)[:200]}", path) from exc
        order = _feature_order(spec, native.feature_names(model))
        return LoadedModel(
            spec,
            "native",
            order,
            native.output_columns(model),
            lambda X, m=model: native.native_predict(m, X),
            model,
            integrity,
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
