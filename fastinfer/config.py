"""YAML → validated, typed settings. An unknown key or a wrong type is a ``ConfigError`` naming it.

The file may use the spec's nesting (``live_trading: models: …``) or start at the sections
directly (``models:``, ``executor:``, ``predictor:``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "fastinfer.yaml"
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelSettings:
    """The spec's ``live_trading.models`` keys, plus ``strict_checksums`` and ``seq_padding``."""

    lazy_load: bool = True
    cache_models: bool = True
    verify_checksums: bool = True
    strict_checksums: bool = False  # False: a checksum mismatch warns (never for pickles)
    allow_unsigned: bool = False  # False: reject models without a checksum
    family_priority: tuple[str, ...] = ("lightgbm", "xgboost", "ridge", "mlp")
    seq_buffer_size: int = 60
    seq_warmup_bars: int = 20
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
    intra_op_threads: int = 1  # latency first: one bar, one core
    inter_op_threads: int = 1
    allow_spinning: bool = False  # spinning steals the trading loop's core
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    optimized_model_dir: str | None = None
    forest_kernel: Literal["auto", "on", "off"] = "auto"


@dataclass(frozen=True)
class PredictorSettings:
    on_interval_mismatch: Literal["error", "skip"] = "error"
    interval_rel_tol: float = 1e-6
    # A bar with NaN/inf features: reject that symbol's bar, or pass NaN to models that route it.
    nan_policy: Literal["reject", "pass"] = "reject"


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
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
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
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must be >= 0, got {value}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value) or value < 0:  # YAML's .nan / .inf, or a negative tolerance
            raise ConfigError(f"{where}: expected a finite number >= 0, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
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
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)
        else:
            values[name] = _check_value(key, value, hint)
    settings = cls(**values)
    if cls is ModelSettings and settings.seq_warmup_bars > settings.seq_buffer_size:
        raise ConfigError(
            f"{where}.seq_warmup_bars: {settings.seq_warmup_bars} exceeds seq_buffer_size {settings.seq_buffer_size}"
        )
    if cls is ModelSettings and settings.verify_signature and not settings.trusted_public_key:
        raise ConfigError(f"{where}.trusted_public_key: verify_signature is true but no trusted public key is set")
    return settings


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
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)  # safe_load: no python/object tags, so no code runs
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc)[:200]})") from None
    settings = from_dict(data, source=path.name)
    key = settings.models.trusted_public_key
    if key and not Path(key).expanduser().is_absolute():  # relative to the file that names it
        models = dataclasses.replace(settings.models, trusted_public_key=str(path.resolve().parent / key))
        settings = dataclasses.replace(settings, models=models)
    return settings
