"""YAML → validated, typed settings. An unknown key or a wrong type is a ``ConfigError`` naming it.

The file may use the spec's nesting (``live_trading: models: …``) or start at the sections
directly (``models:``, ``executor:``, ``predictor:``).

Hostile files. A config is at most ``MAX_CONFIG_BYTES``; YAML aliases may not expand it
beyond ``MAX_CONFIG_NODES`` nodes (an alias bomb is refused before anything is built from
it); a key given twice in one mapping is an error (YAML would keep the last silently); no
error message prints a value whole (``fastinfer.state.short_repr``). Numbers have upper
bounds where a huge one would disable a check or size an allocation (``bounded`` below).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .atomic import read_regular
from .errors import ConfigError
from .state import short_repr

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "fastinfer.yaml"
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 10_000  # after alias expansion: a real config has a few hundred
MAX_SEQ_LEN = 100_000  # sequence lengths size per-symbol buffers (also the model_meta limit)
MAX_THREADS = 1024


def bounded(default: Any, lo: float, hi: float) -> Any:
    """A settings field whose value must lie in [lo, hi] (checked by ``from_dict``)."""
    return field(default=default, metadata={"range": (lo, hi)})


@dataclass(frozen=True)
class ModelSettings:
    """The spec's ``live_trading.models`` keys, plus ``strict_checksums`` and ``seq_padding``."""

    lazy_load: bool = True
    cache_models: bool = True
    verify_checksums: bool = True
    strict_checksums: bool = False  # False: a checksum mismatch warns (never for pickles)
    allow_unsigned: bool = False  # False: reject models without a checksum
    family_priority: tuple[str, ...] = ("lightgbm", "xgboost", "ridge", "mlp")  # canonical names after load
    seq_buffer_size: int = bounded(60, 1, MAX_SEQ_LEN)
    seq_warmup_bars: int = bounded(20, 0, MAX_SEQ_LEN)
    # Rows before the buffer is full: repeat the oldest row, or zeros.
    seq_padding: Literal["repeat_first", "zeros"] = "repeat_first"
    # Serve models from the verified ONNX graph when the run has a lock.
    prefer_onnx: bool = True
    # Refuse a run unless fastinfer.lock.sig verifies with trusted_public_key (PEM, Ed25519).
    verify_signature: bool = False
    trusted_public_key: str | None = None  # a path; relative paths are taken from the config file's folder


@dataclass(frozen=True)
class ExecutorSettings:
    providers: tuple[str, ...] = (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    intra_op_threads: int = bounded(1, 0, MAX_THREADS)  # latency first: one bar, one core
    inter_op_threads: int = bounded(1, 0, MAX_THREADS)
    allow_spinning: bool = False  # spinning steals the trading loop's core
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    optimized_model_dir: str | None = None
    forest_kernel: Literal["auto", "on", "off"] = "auto"
    # Batches (many symbols in one bar, research batches) run their tree kernels and a second ONNX
    # Runtime session on this many threads (0: every core); one row never starts a thread.
    batch_threads: int = bounded(0, 0, MAX_THREADS)
    # Keep each graph's fastest backend per batch size in ~/.cache/fastinfer (FASTINFER_CACHE_DIR).
    runtime_cache: bool = True


@dataclass(frozen=True)
class PredictorSettings:
    on_interval_mismatch: Literal["error", "skip"] = "error"
    # Relative tolerance between a model's interval and the bars' interval; above 0.5 a 1-minute
    # model would pass on 2-minute bars, which is no check at all.
    interval_rel_tol: float = bounded(1e-6, 0.0, 0.5)
    # A bar with NaN/inf features: reject that symbol's bar, or pass NaN to models that route it.
    nan_policy: Literal["reject", "pass"] = "reject"
    # A finite but impossible bar (price <= 0, high < low, close outside [low, high], negative
    # volume, absurd magnitudes): "reject" treats the symbol's bar as missing and counts it;
    # "pass" feeds it to the features as it is.
    bar_check: Literal["reject", "pass"] = "reject"
    # A model that fails to load: "skip" leaves it out (its reason in the predictor's
    # ``unavailable``) and serves the rest; "error" refuses to build the predictor.
    on_model_error: Literal["skip", "error"] = "skip"


@dataclass(frozen=True)
class Settings:
    models: ModelSettings = field(default_factory=ModelSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)


def _check_value(where: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {short_repr(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(where, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_check_value(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {short_repr(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short_repr(value)}")
        if value < 0:
            raise ConfigError(f"{where}: must be >= 0, got {short_repr(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {short_repr(value)}")
        if isinstance(value, int) and abs(value) > 1e300:  # math.isfinite would overflow on it
            raise ConfigError(f"{where}: {short_repr(value)} is not a usable number")
        if not math.isfinite(value) or value < 0:  # YAML's .nan / .inf, or a negative tolerance
            raise ConfigError(f"{where}: expected a finite number >= 0, got {short_repr(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(f"{where}: expected a non-empty string, got {short_repr(value)}")
        try:
            value.encode("utf-8")  # YAML's "\ud800" is a lone surrogate: no path or name can hold it
        except UnicodeEncodeError:
            raise ConfigError(f"{where}: {short_repr(value)} is not valid Unicode text (a lone surrogate)") from None
        return value
    raise TypeError(f"unsupported settings type {hint!r}")  # a bug in this module, not in the file


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    ranges = {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)
            continue
        values[name] = _check_value(key, value, hint)
        if name in ranges:
            lo, hi = ranges[name]
            if not lo <= values[name] <= hi:
                raise ConfigError(f"{key}: {short_repr(value)} is outside [{lo:g}, {hi:g}]")
    if cls is ModelSettings and "family_priority" in values:
        values["family_priority"] = _families(f"{where}.family_priority", values["family_priority"])
    settings = cls(**values)
    if cls is ModelSettings and settings.seq_warmup_bars > settings.seq_buffer_size:
        raise ConfigError(
            f"{where}.seq_warmup_bars: {settings.seq_warmup_bars} exceeds seq_buffer_size {settings.seq_buffer_size}"
        )
    if cls is ModelSettings and settings.verify_signature and not settings.trusted_public_key:
        raise ConfigError(f"{where}.trusted_public_key: verify_signature is true but no trusted public key is set")
    return settings


def _families(where: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Canonical family names; an unknown one is refused now, not at the first prediction."""
    from . import families  # here: the registry imports every adapter, which a config read does not need

    canonical = []
    for i, name in enumerate(names):
        family = families.find(name)
        if family is None:
            known = ", ".join(f.name for f in families.FAMILIES)
            raise ConfigError(f"{where}[{i}]: unknown family {short_repr(name)} (known: {known})")
        canonical.append(family.name)
    return tuple(canonical)


class _DuplicateKey(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that run code) that refuses a key given twice in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<": merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader refuses it below
                continue
            if first is not key_node.start_mark:
                raise _DuplicateKey(
                    f"line {key_node.start_mark.line + 1}: key {short_repr(key)} given twice "
                    f"(first at line {first.line + 1}); YAML would silently keep the last"
                )
        return super().construct_mapping(node, deep=deep)


def _expanded_nodes(root: yaml.Node) -> int:
    """How many nodes the document has once every alias is expanded; stops counting (returns
    more than the limit) past ``MAX_CONFIG_NODES`` or on a recursive alias."""
    sizes: dict[int, int] = {}  # id(node) -> expanded size, once known
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), MAX_CONFIG_NODES + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:  # a node that contains itself expands forever
            return MAX_CONFIG_NODES + 1
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def parse_yaml(text: str, source: str = "config") -> Any:
    """YAML text → Python data, through the safe loader, with aliases bounded and duplicate
    keys refused (``ConfigError`` naming ``source``)."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _expanded_nodes(root) > MAX_CONFIG_NODES:
            raise ConfigError(
                f"{source}: more than {MAX_CONFIG_NODES} YAML nodes once aliases are expanded "
                "(a config has a few hundred)"
            )
        return loader.construct_document(root)
    except ConfigError:
        raise
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        # ValueError: e.g. a 5,000-digit integer over Python's int parsing limit.
        raise ConfigError(f"{source}: not valid YAML ({type(exc).__name__}: {str(exc)[:200]})") from None
    finally:
        loader.dispose()


def from_dict(data: Any, source: str = "config") -> Settings:
    """Validate a parsed mapping (spec nesting ``live_trading:`` accepted)."""
    if isinstance(data, dict) and set(data) == {"live_trading"}:
        data = data["live_trading"]
    return _build(Settings, data, source)


def load_config(path: str | Path | None = None) -> Settings:
    """Read and validate a YAML file; the packaged default when ``path`` is None."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if path == DEFAULT_CONFIG_PATH and not path.exists():
        return Settings()
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes (a config is a few KB; limit {MAX_CONFIG_BYTES})")
        text = read_regular(path, MAX_CONFIG_BYTES).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    data = parse_yaml(text, source=str(path))  # safe loader: no python/object tags, so no code runs
    settings = from_dict(data, source=path.name)
    key = settings.models.trusted_public_key
    if key and not Path(key).expanduser().is_absolute():  # relative to the file that names it
        models = dataclasses.replace(settings.models, trusted_public_key=str(path.resolve().parent / key))
        settings = dataclasses.replace(settings, models=models)
    return settings
