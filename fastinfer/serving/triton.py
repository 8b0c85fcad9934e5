"""A run's verified graphs as a Triton Inference Server model repository, and a client for it.

``export_triton`` reads graphs only through the lock: each graph's bytes are checked against
the lock's sha256 before they are copied (``IntegrityError`` naming the file otherwise), and
the loader opens them under the same rules the live predictor uses. Fused graphs are the
executor's own (``executor.Plan``), not a second fusing implementation. Every
``config.pbtxt`` is built as Triton's ``ModelConfig`` protobuf (shipped in ``tritonclient``)
and parsed back before it is written. Layout::

    OUT_DIR/
      fwd_ret_5m__lightgbm/config.pbtxt     one folder per graph of the lock …
      fwd_ret_5m__lightgbm/1/model.onnx
      fused-tabular/…, fused-seq10/…        … and one per fused graph
      fastinfer_triton.json                 model → target, family, columns, input, sha256
      SHA256SUMS                            every file written (``sha256sum -c SHA256SUMS``)

Triton reads only the model folders; the two files beside them are fastinfer's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts
from ..atomic import write_atomic_bytes, write_atomic_json
from ..config import Settings, load_config
from ..errors import ConfigError, InferenceError, IntegrityError, ModelLoadError, StateError
from ..layout import ModelSlot, OutputLayout, feature_union
from ..lock import LOCK_FILE

INDEX_FILE = "fastinfer_triton.json"
SUMS_FILE = "SHA256SUMS"
INDEX_KIND = "fastinfer.triton-repository"
INDEX_VERSION = 1
VERSION_DIR = "1"
MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
EXTRA = "pip install fastinfer[serving]"

_NAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


def _import(module: str):
    """A tritonclient module, or an ImportError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for Triton serving ({exc}); install it with `{EXTRA}`") from exc


def _input_name() -> str:
    """The input every converter and fused graph has (``fastinfer.converters.INPUT_NAME``), imported
    only when needed: the converters package imports onnx, which a Triton client does not need."""
    from ..converters import INPUT_NAME

    return INPUT_NAME


def _pb():
    return _import("tritonclient.grpc.model_config_pb2")


def parse_config(text: str, where: str = "config.pbtxt"):
    """``text`` parsed into Triton's own ``ModelConfig`` message; ``StateError`` naming ``where``."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, _pb().ModelConfig())
    except text_format.ParseError as exc:
        raise StateError(f"{where}: not a valid Triton model config ({exc})") from None


def read_config(path: str | Path):
    """A model folder's ``config.pbtxt`` (or the file itself) as Triton's ``ModelConfig``."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    return parse_config(path.read_text(encoding="utf-8"), str(path))


# ---------------------------------------------------------------- what one exported model is


@dataclass
class _Export:
    name: str
    data: bytes  # the graph's bytes, verified against the lock (or fused from verified graphs)
    input_kind: int  # 0 = tabular, T = sequence length
    input_dims: list[int]  # without the batch dimension
    feature_order: list[str]  # the input's last axis
    outputs: list[dict[str, Any]]  # name, target, family, columns, dims
    input_name: str = ""  # the graph's input: the lock's for one model's graph, else the converters' INPUT_NAME

    def __post_init__(self) -> None:
        self.input_name = self.input_name or _input_name()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _model_name(prefix: str, entry) -> str:
    parts = [entry.target, entry.family]
    if entry.view != artifacts.CROSS_SECTIONAL:
        parts.append(entry.view.lower())
    if entry.universe:
        parts.append(f"universe-{entry.universe}")
    if entry.symbol:
        parts.append(f"symbol-{entry.symbol}")
    return prefix + _NAME_OK.sub("_", "__".join(parts))


def _graph_dims(value_info) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim
    ]


def _model_config(
    exp: _Export,
    max_batch_size: int,
    instance_kind: str,
    instance_count: int,
    max_queue_delay_us: int,
    threads: tuple[int, int],
):
    """Triton's ``ModelConfig`` message for one exported graph (valid by construction)."""
    pb = _pb()
    cfg = pb.ModelConfig(
        name=exp.name, platform=PLATFORM, max_batch_size=max_batch_size, default_model_filename=MODEL_FILE
    )
    cfg.input.add(name=exp.input_name, data_type=pb.TYPE_FP32, dims=exp.input_dims)
    for out in exp.outputs:
        cfg.output.add(name=out["name"], data_type=pb.TYPE_FP32, dims=out["dims"])
    kind = pb.ModelInstanceGroup.KIND_GPU if instance_kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(kind=kind, count=instance_count)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    cfg.dynamic_batching.SetInParent()  # present even with a zero delay
    # The ORT backend's thread counts: fastinfer's latency-first executor settings.
    cfg.parameters["intra_op_thread_count"].string_value = str(threads[0])
    cfg.parameters["inter_op_thread_count"].string_value = str(threads[1])
    return cfg


def _check_options(
    instance_kind: str, max_batch_size: Any, max_queue_delay_us: Any, instance_count: Any, name_prefix: str
) -> None:
    if instance_kind not in ("cpu", "gpu"):
        raise ConfigError(f"instance_kind must be 'cpu' or 'gpu', got {instance_kind!r}")
    for name, value, lo in (
        ("max_batch_size", max_batch_size, 1),
        ("max_queue_delay_us", max_queue_delay_us, 0),
        ("instance_count", instance_count, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    if _NAME_OK.search(name_prefix):
        raise ConfigError(f"name_prefix {name_prefix!r}: only letters, digits, '_', '.' and '-' are allowed")


# ---------------------------------------------------------------- planning the repository


def _verified_bytes(root: Path, entry) -> tuple[Path, bytes]:
    path = artifacts.inside(root, entry.onnx_file, what="lock onnx_file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(entry.family, entry.target, f"cannot read graph ({exc.strerror})", path) from None
    if hashlib.sha256(data).hexdigest() != entry.onnx_sha256:
        raise IntegrityError(entry.family, entry.target, "ONNX graph sha256 differs from the lock: not exported", path)
    return path, data


def _plan(
    run_root: str | Path,
    *,
    fused: bool,
    name_prefix: str,
    settings: Settings,
    targets: Iterable[str] | None,
    families: Iterable[str] | None,
) -> dict[str, Any]:
    """Every model to export and the index, nothing written."""
    from .. import executor
    from .. import families as fam
    from ..loader import ModelLoader

    root = artifacts.resolve_run_root(run_root)
    # The graphs are what is exported. The lock is the loader's: in a signed run, the bytes the
    # signature covered, so every graph is checked against the signed sha256.
    loader = ModelLoader(root, settings=settings, prefer_onnx=True)
    lock = loader.lock
    if lock is None:
        raise ModelLoadError(None, None, f"no {LOCK_FILE}: run `fastinfer convert` first", root / LOCK_FILE)
    wanted_t = set(targets) if targets is not None else None
    wanted_f = {fam.resolve(f).name for f in families} if families is not None else None
    exports: list[_Export] = []
    skipped: list[dict[str, str]] = []
    name_of: dict[tuple, str] = {}
    for entry in lock.entries:
        if (wanted_t is not None and entry.target not in wanted_t) or (
            wanted_f is not None and entry.family not in wanted_f
        ):
            continue
        if entry.status != "onnx":
            skipped.append(
                {"target": entry.target, "family": entry.family, "reason": f"served natively: {entry.reason}"}
            )
            continue
        path, data = _verified_bytes(root, entry)
        model = loader.load(entry.target, entry.family, entry.view, universe=entry.universe, symbol=entry.symbol)
        if model is None or model.backend != "onnx":
            skipped.append(
                {
                    "target": entry.target,
                    "family": entry.family,
                    "reason": "lock is stale (the native model changed since conversion): "
                    "run `fastinfer convert` again",
                }
            )
            continue
        lock_dims = list(entry.input.get("shape", []))[1:]
        graph_in, graph_out = model.graph.graph.input[0], model.graph.graph.output[0]
        columns = list(entry.output.get("columns", ["prediction"]))
        input_name = entry.input.get("name") or _input_name()
        if graph_in.name != input_name:
            raise StateError(
                f"{path}: graph input {graph_in.name!r} disagrees with the lock's input name "
                f"{input_name!r} for target={entry.target!r} family={entry.family!r}"
            )
        if _graph_dims(graph_in)[1:] != lock_dims or _graph_dims(graph_out)[1:] != [len(columns)]:
            raise StateError(
                f"{path}: graph I/O {_graph_dims(graph_in)} → {_graph_dims(graph_out)} disagrees with "
                f"the lock (input {entry.input.get('shape')}, {len(columns)} output columns) "
                f"for target={entry.target!r} family={entry.family!r}"
            )
        name = _model_name(name_prefix, entry)
        if name in {e.name for e in exports}:
            raise StateError(f"{root / LOCK_FILE}: two graphs map to the Triton model name {name!r}")
        name_of[entry.key] = name
        exports.append(
            _Export(
                name,
                data,
                model.spec.sequence_length if model.family.sequential else 0,
                lock_dims,
                list(entry.feature_order),
                [
                    {
                        "name": entry.output.get("name", "prediction"),
                        "target": entry.target,
                        "family": entry.family,
                        "columns": columns,
                        "dims": [len(columns)],
                        "handles_nan": model.family.handles_nan,
                    }
                ],
                input_name,
            )
        )

    # The set a LivePredictor would serve, fused exactly as its executor plan fuses it.
    served = [m for m in loader.load_all(targets, families).values() if m.backend == "onnx"]
    union = feature_union(served)  # the live predictor's feature order
    serve: list[dict[str, Any]] = []
    columns: list[tuple[str, str, str]] = []
    if served:
        exec_settings = dataclasses.replace(
            settings.executor, forest_kernel="off", providers=("CPUExecutionProvider",), optimized_model_dir=None
        )
        plan = executor.Plan(served, union, 1, exec_settings)
        columns = plan.columns
        slices = {f"{m.target}/{m.family.name}": (m, sl) for m, sl in zip(plan.models, plan.model_slices)}
        if fused:
            for fused_name, graph in plan.fused_graphs.items():
                kind = 0 if fused_name == "fused-tabular" else int(fused_name[len("fused-seq") :])
                outputs = []
                for out in graph.graph.output:
                    m, sl = slices[out.name]
                    outputs.append(
                        {
                            "name": out.name,
                            "target": m.target,
                            "family": m.family.name,
                            "columns": list(m.columns),
                            "dims": [len(m.columns)],
                            "handles_nan": m.family.handles_nan,
                            "slice": [sl.start, sl.stop],
                            "needs": [union.index(f) for f in m.feature_order],
                        }
                    )
                exp = _Export(
                    name_prefix + fused_name,
                    graph.SerializeToString(),
                    kind,
                    [kind, len(union)] if kind else [len(union)],
                    list(union),
                    outputs,
                )
                exports.append(exp)
                serve.append({"model": exp.name, "input_kind": kind, "input_columns": None, "outputs": outputs})
        else:
            for m, sl in zip(plan.models, plan.model_slices):
                name = name_of[m.lock_entry.key]
                needs = [union.index(f) for f in m.feature_order]
                kind = m.spec.sequence_length if m.family.sequential else 0
                serve.append(
                    {
                        "model": name,
                        "input_kind": kind,
                        "input_columns": needs,
                        "outputs": [
                            {
                                "name": m.lock_entry.output.get("name", "prediction"),
                                "target": m.target,
                                "family": m.family.name,
                                "columns": list(m.columns),
                                "handles_nan": m.family.handles_nan,
                                "slice": [sl.start, sl.stop],
                                "needs": needs,
                            }
                        ],
                    }
                )
    return {
        "root": root,
        "lock": lock,
        "exports": exports,
        "skipped": skipped,
        "union": union,
        "serve": serve,
        "columns": [list(c) for c in columns],
    }


# ---------------------------------------------------------------- writing it


def _prepare(out: Path) -> None:
    """An empty folder, or a previous fastinfer export whose model folders are replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise StateError(f"{out}: exists and is not a folder")
    index_path = out / INDEX_FILE
    if not index_path.is_file():
        if any(out.iterdir()):
            raise StateError(f"{out}: not empty and not a fastinfer Triton export; choose an empty folder")
        return
    old = load_index(out)
    for name in old.get("models", {}):
        folder = out / name
        if _NAME_OK.search(name) or not folder.resolve().is_relative_to(out.resolve()):
            raise StateError(f"{index_path}: model name {name!r} is not a plain folder name")
        if folder.is_dir():
            shutil.rmtree(folder)


def export_triton(
    run_root: str | Path,
    out_dir: str | Path,
    *,
    instance_kind: str = "cpu",
    max_batch_size: int = 1024,
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
    fused: bool = True,
    name_prefix: str = "",
    targets: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Write a Triton model repository for the run's verified graphs; returns the index written.

    One folder per ONNX-served lock entry and, with ``fused``, one per fused graph of the
    live predictor's plan (``fused-tabular``, ``fused-seq{T}``). Native-only models are
    listed under ``skipped`` with the reason. ``instance_kind``: ``cpu`` or ``gpu``
    (Triton's instance_group kind); ``max_queue_delay_us``: the dynamic batcher's wait;
    ``name_prefix`` keeps several runs apart on one server.
    """
    _check_options(instance_kind, max_batch_size, max_queue_delay_us, instance_count, name_prefix)
    settings = settings if settings is not None else load_config()
    plan = _plan(run_root, fused=fused, name_prefix=name_prefix, settings=settings, targets=targets, families=families)
    if not plan["exports"]:
        raise ModelLoadError(
            None, None, "no ONNX-served graph to export (every model is native or stale)", plan["root"]
        )
    out = Path(out_dir).expanduser().resolve()
    _prepare(out)
    threads = (settings.executor.intra_op_threads, settings.executor.inter_op_threads)
    files: dict[str, str] = {}
    models: dict[str, Any] = {}
    from google.protobuf import text_format

    for exp in plan["exports"]:
        cfg = _model_config(exp, max_batch_size, instance_kind, instance_count, max_queue_delay_us, threads)
        text = text_format.MessageToString(cfg)
        if parse_config(text, f"{exp.name}/config.pbtxt") != cfg:  # round-trip: what Triton reads is what we built
            raise StateError(f"{exp.name}/config.pbtxt: does not parse back to the config it was built from")
        for rel, data in (
            (f"{exp.name}/{VERSION_DIR}/{MODEL_FILE}", exp.data),
            (f"{exp.name}/config.pbtxt", text.encode()),
        ):
            write_atomic_bytes(out / rel, data)
            files[rel] = hashlib.sha256(data).hexdigest()
        models[exp.name] = {
            "kind": "fused" if any("slice" in o for o in exp.outputs) else "model",
            "sha256": exp.sha256,
            "input": {"name": exp.input_name, "datatype": "FP32", "dims": exp.input_dims, "kind": exp.input_kind},
            "feature_order": exp.feature_order,
            "max_batch_size": max_batch_size,
            "outputs": [{k: v for k, v in o.items() if k not in ("slice", "needs")} for o in exp.outputs],
        }
    index = {
        "kind": INDEX_KIND,
        "version": INDEX_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_root": str(plan["root"]),
        "lock_created": plan["lock"].created,
        "options": {
            "instance_kind": instance_kind,
            "instance_count": instance_count,
            "max_batch_size": max_batch_size,
            "max_queue_delay_us": max_queue_delay_us,
            "fused": fused,
            "name_prefix": name_prefix,
        },
        "models": models,
        "skipped": plan["skipped"],
        "union": plan["union"],
        "columns": plan["columns"],
        "serve": plan["serve"],
        "files": files,
    }
    write_atomic_json(out / INDEX_FILE, index)
    sums = dict(files, **{INDEX_FILE: hashlib.sha256((out / INDEX_FILE).read_bytes()).hexdigest()})
    write_atomic_bytes(out / SUMS_FILE, "".join(f"{h}  {rel}\n" for rel, h in sorted(sums.items())).encode())
    return index


def load_index(repository: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """An export's index from its folder, its ``fastinfer_triton.json`` or ``export_triton``'s result."""
    if isinstance(repository, Mapping):
        index, where = dict(repository), "repository index"
    else:
        path = Path(repository)
        path = path / INDEX_FILE if path.is_dir() else path
        try:
            index = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise StateError(f"{path}: no such file (export the run with `fastinfer export-triton` first)") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: not a readable repository index ({exc})") from None
        where = str(path)
    if not isinstance(index, dict) or index.get("kind") != INDEX_KIND or index.get("version") != INDEX_VERSION:
        raise StateError(f"{where}: not a version-{INDEX_VERSION} fastinfer Triton index")
    for key in ("models", "serve", "columns", "union"):
        if key not in index:
            raise StateError(f"{where}: field {key!r} missing")
    return index


# ---------------------------------------------------------------- the client


class TritonPredictor:
    """Predictions from a Triton server serving an exported repository.

    ``TritonPredictor(url, repository, protocol="http")``: ``repository`` is the export
    folder, its ``fastinfer_triton.json``, or the dict ``export_triton`` returned. Feature
    rows are in ``feature_order`` (the live predictor's ``union``); sequence models take
    ``sequences[T]`` of shape (N, T, F). ``infer`` returns (N, n_columns) float32 in the
    live predictor's column layout; ``predict`` one ``{horizon: {family: value}}`` per row.
    Outputs are NaN where a model's inputs hold NaN (under ``nan_policy: reject``).
    ``client`` replaces the tritonclient client (anything with the same ``infer`` call);
    ``timeout_s`` bounds each request.
    """

    def __init__(
        self,
        url: str,
        repository: str | Path | Mapping[str, Any],
        protocol: str = "http",
        *,
        client: Any = None,
        settings: Settings | None = None,
        model_version: str = "",
        timeout_s: float = 60.0,
    ):
        if protocol not in ("http", "grpc"):
            raise ConfigError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self.index = load_index(repository)
        self.protocol = protocol
        self._mod = _import(f"tritonclient.{protocol}")
        self.url = url
        if client is None:  # HTTP takes its timeouts at construction, gRPC per call
            client = (
                self._mod.InferenceServerClient(url=url, connection_timeout=timeout_s, network_timeout=timeout_s)
                if protocol == "http"
                else self._mod.InferenceServerClient(url=url)
            )
        self.client = client
        self.model_version = model_version
        self.timeout_s = timeout_s
        settings = settings if settings is not None else load_config()
        self._pass_nan = settings.predictor.nan_policy == "pass"
        self.feature_order: list[str] = list(self.index["union"])
        self.columns: list[tuple[str, str, str]] = [tuple(c) for c in self.index["columns"]]
        self.serve: list[dict[str, Any]] = list(self.index["serve"])
        self.sequence_lengths = sorted({s["input_kind"] for s in self.serve if s["input_kind"]})
        slots = [
            ModelSlot(
                target=o["target"],
                family=o["family"],
                columns=tuple(o["columns"]),
                start=int(o["slice"][0]),
                stop=int(o["slice"][1]),
                needs=tuple(o["needs"]),
                sequence_length=int(s["input_kind"]),
                pass_nan=self._pass_nan and bool(o["handles_nan"]),
            )
            for s in self.serve
            for o in s["outputs"]
        ]
        self.layout = OutputLayout(sorted(slots, key=lambda slot: slot.start), self.feature_order)

    def is_ready(self) -> bool:
        """The server is live and every model this predictor calls is ready."""
        if not self.client.is_server_live():
            return False
        return all(self.client.is_model_ready(s["model"], self.model_version) for s in self.serve)

    def _check(self, features: Any, sequences: Mapping[int, Any] | None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        X = np.ascontiguousarray(features, dtype=np.float32)
        F = len(self.feature_order)
        if X.ndim != 2 or X.shape[1] != F:
            raise InferenceError(f"features: expected (N, {F}) in feature_order, got shape {X.shape}")
        seqs: dict[int, np.ndarray] = {}
        for T in self.sequence_lengths:
            if sequences is None or T not in sequences:
                who = sorted(
                    {f"{o['target']}/{o['family']}" for s in self.serve if s["input_kind"] == T for o in s["outputs"]}
                )
                raise InferenceError(f"sequences[{T}] missing: needed by {', '.join(who)}")
            S = np.ascontiguousarray(sequences[T], dtype=np.float32)
            if S.shape != (len(X), T, F):
                raise InferenceError(f"sequences[{T}]: expected shape {(len(X), T, F)}, got {S.shape}")
            seqs[T] = S
        return X, seqs

    def _infer(self, model: str, x: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        name = self.index["models"][model].get("input", {}).get("name") or _input_name()  # as exported
        inp = self._mod.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        requested = [self._mod.InferRequestedOutput(name) for name in outputs]
        kwargs: dict[str, Any] = {"model_version": self.model_version}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        result = self.client.infer(model, [inp], outputs=requested, **kwargs)
        return {name: result.as_numpy(name) for name in outputs}

    def infer(self, features: Any, sequences: Mapping[int, Any] | None = None) -> np.ndarray:
        """(N, n_columns) float32: one request per served model and per ``max_batch_size`` rows."""
        X, seqs = self._check(features, sequences)
        n = len(X)
        out = np.full((n, len(self.columns)), np.nan, dtype=np.float32)
        for s in self.serve:
            kind = s["input_kind"]
            source = seqs[kind] if kind else X
            if s["input_columns"] is not None:
                source = np.ascontiguousarray(source[..., s["input_columns"]])
            names = [o["name"] for o in s["outputs"]]
            step = int(self.index["models"][s["model"]]["max_batch_size"])
            for lo in range(0, n, step):
                got = self._infer(s["model"], source[lo : lo + step], names)
                for o in s["outputs"]:
                    a, b = o["slice"]
                    y = np.asarray(got[o["name"]], dtype=np.float32)
                    if y.shape != (min(step, n - lo), b - a):
                        raise InferenceError(
                            f"model {s['model']!r} output {o['name']!r}: expected shape "
                            f"{(min(step, n - lo), b - a)}, got {y.shape}"
                        )
                    out[lo : lo + step, a:b] = y
        self.layout.mask_invalid(X, out, seqs)  # rows whose inputs are not finite: not ready, as live
        return out

    def predict(self, features: Any, sequences: Mapping[int, Any] | None = None) -> list[dict[str, dict[str, float]]]:
        """One ``{horizon: {family: value}}`` per row, keyed as ``LivePredictor.as_dict``."""
        return [self.layout.view(row) for row in self.infer(features, sequences)]
