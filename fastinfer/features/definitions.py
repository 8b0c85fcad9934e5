"""Feature definitions files (``feature_definitions.yaml``): read, check, write, hash.

::

    # feature_definitions.yaml
    bars_per_day: 78                 # optional: bars of one session (a `d` on intraday bars)
    interval_minutes: 5              # optional: the bar interval (else the run's / the caller's)
    external: [book_imbalance, sentiment]   # optional: columns passed per bar, in this order
    features:                        # name: expression (see fastinfer.features.grammar)
      vol_10d: rolling_std(log_return(close, 1), 10d)
      gap: open / lag(close, 1) - 1
      rsi_spread: rsi(close, 7) - rsi(close, 28)
      imbalance_z: rolling_zscore(book_imbalance, 20)

A definition may use OHLCV inputs, externals, vocabulary names and other definitions; a
definition takes precedence over the vocabulary name it shadows (a run whose ``ret_1d`` is a
log return defines it). YAML is read with ``yaml.safe_load`` semantics through the config's
loader (``fastinfer.config``: duplicate keys refused) that here refuses anchors/aliases too;
JSON (``.json``) with duplicate keys refused too. Files are small: size, counts, expression
lengths, ``interval_minutes`` and ``bars_per_day`` are bounded. ``hash`` is the sha256 of
the canonical content (expressions re-printed by the grammar), so formatting does not change it.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import artifacts, config
from ..atomic import read_regular
from ..state import short_repr
from .errors import FeatureDefinitionError
from .grammar import Expr, parse, unparse
from .graph import OHLCV

DEFINITIONS_FILE = "feature_definitions.yaml"
FORMAT_VERSION = 1
MAX_BYTES = 256 << 10
MAX_DEFINITIONS = 5000
MAX_EXTERNALS = 256
MAX_NAME = 128
MAX_INTERVAL_MINUTES = artifacts.MAX_INTERVAL_MINUTES  # as model_meta.json intervals
MAX_BARS_PER_DAY = 100_000  # more than one bar a second around the clock (86,400)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYS = ("version", "interval_minutes", "bars_per_day", "external", "features")


@dataclass(frozen=True, eq=False)
class FeatureDefinitions:
    """Named expressions, external columns and the session length, checked.

    Attributes:
        features: name → canonical expression text, in file order.
        external: external column names, in the order ``update`` takes them.
        bars_per_day: bars of one session, for ``d`` durations on intraday bars (or None).
        interval_minutes: the bar interval, when the file fixes it (or None).
    """

    features: dict[str, str]
    external: tuple[str, ...] = ()
    bars_per_day: int | None = None
    interval_minutes: float | None = None
    trees: dict[str, Expr] = field(default_factory=dict, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureDefinitions) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.hash)

    @classmethod
    def from_dict(cls, data: Any, where: str = "feature definitions") -> FeatureDefinitions:
        """Check a parsed file (or a dict built in code); ``FeatureDefinitionError`` names what is wrong."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise FeatureDefinitionError(f"{where}: expected a mapping with features:, got {type(data).__name__}")
        unknown = [k for k in data if k not in _KEYS]
        if unknown:
            raise FeatureDefinitionError(f"{where}: unknown key(s) {unknown[:5]}; allowed: {list(_KEYS)}")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise FeatureDefinitionError(f"{where}: version {version!r}; this fastinfer reads {FORMAT_VERSION}")
        interval = check_interval_minutes(data.get("interval_minutes"), where)
        bars_per_day = check_bars_per_day(data.get("bars_per_day"), where)
        external = data.get("external", ())
        if isinstance(external, str) or not isinstance(external, (list, tuple)):
            raise FeatureDefinitionError(f"{where}: external must be a list of column names, got {external!r}")
        if len(external) > MAX_EXTERNALS:
            raise FeatureDefinitionError(f"{where}: {len(external)} external columns (at most {MAX_EXTERNALS})")
        for name in external:
            _check_name(name, f"{where}: external column")
            if name in OHLCV:
                raise FeatureDefinitionError(f"{where}: external column {name!r} is an OHLCV input already")
        if len(set(external)) != len(external):
            dup = sorted({n for n in external if external.count(n) > 1})
            raise FeatureDefinitionError(f"{where}: external column(s) listed twice: {dup}")
        features = data.get("features", {})
        if features is None:
            features = {}
        if not isinstance(features, Mapping):
            raise FeatureDefinitionError(
                f"{where}: features must be a mapping name: expression, got {type(features).__name__}"
            )
        if len(features) > MAX_DEFINITIONS:
            raise FeatureDefinitionError(f"{where}: {len(features)} definitions (at most {MAX_DEFINITIONS})")
        canonical: dict[str, str] = {}
        trees: dict[str, Expr] = {}
        for name, text in features.items():
            _check_name(name, f"{where}: definition")
            if name in OHLCV or name in external:
                kind = "an OHLCV input" if name in OHLCV else "an external column"
                raise FeatureDefinitionError(
                    f"{where}: {name!r} is {kind}; a definition cannot redefine it", feature=name
                )
            if isinstance(text, bool) or not isinstance(text, (str, int, float)):
                raise FeatureDefinitionError(
                    f"{where}: the definition must be an expression (text), got {type(text).__name__}", feature=name
                )
            tree = parse(str(text), where=name)
            trees[name] = tree
            canonical[name] = unparse(tree)
        return cls(
            canonical,
            tuple(external),
            bars_per_day,
            interval,
            trees,
        )

    def to_dict(self) -> dict[str, Any]:
        """The file's content (canonical expressions); ``from_dict(to_dict())`` is equal."""
        out: dict[str, Any] = {"version": FORMAT_VERSION}
        if self.interval_minutes is not None:
            out["interval_minutes"] = self.interval_minutes
        if self.bars_per_day is not None:
            out["bars_per_day"] = self.bars_per_day
        if self.external:
            out["external"] = list(self.external)
        out["features"] = dict(self.features)
        return out

    @property
    def hash(self) -> str:
        """sha256 hex of the canonical content (formatting, comments and key order of the file
        do not change it; definition order does not either)."""
        content = self.to_dict()
        content["features"] = dict(sorted(self.features.items()))
        return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def dumps(self) -> str:
        """YAML text of ``to_dict()``."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=1000)

    @classmethod
    def loads(cls, text: str | bytes, *, fmt: str = "yaml", where: str = "feature definitions") -> FeatureDefinitions:
        """Parse YAML (``fmt="yaml"``) or JSON text."""
        if isinstance(text, bytes):
            if len(text) > MAX_BYTES:
                raise FeatureDefinitionError(f"{where}: {len(text)} bytes (a definitions file is at most {MAX_BYTES})")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FeatureDefinitionError(f"{where}: not UTF-8 text ({e})") from None
        if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
            raise FeatureDefinitionError(f"{where}: more than {MAX_BYTES} bytes (a definitions file is small)")
        try:
            data = _load_json(text) if fmt == "json" else _load_yaml(text)
        except FeatureDefinitionError as e:
            raise FeatureDefinitionError(f"{where}: {e.reason}") from None
        except (yaml.YAMLError, ValueError) as e:
            raise FeatureDefinitionError(f"{where}: not valid {fmt.upper()} ({str(e)[:300]})") from None
        except RecursionError:
            raise FeatureDefinitionError(f"{where}: nested too deeply") from None
        return cls.from_dict(data, where)

    @classmethod
    def read(cls, path: str | Path) -> FeatureDefinitions:
        """Read a ``.yaml`` / ``.yml`` / ``.json`` definitions file."""
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise FeatureDefinitionError(f"{path}: {size} bytes (a definitions file is at most {MAX_BYTES})")
            raw = read_regular(path, MAX_BYTES)
        except OSError as e:
            raise FeatureDefinitionError(f"{path}: cannot be read ({e.strerror or e})") from None
        return cls.loads(raw, fmt="json" if path.suffix.lower() == ".json" else "yaml", where=str(path))

    def write(self, path: str | Path) -> Path:
        """Write atomically as YAML (JSON for a ``.json`` path)."""
        from ..atomic import write_atomic_bytes

        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix.lower() == ".json" else self.dumps()
        write_atomic_bytes(path, text.encode("utf-8"))
        return path

    def merged(self, other: FeatureDefinitions) -> FeatureDefinitions:
        """Both files' definitions; the same name defined differently, or differing settings, is an error."""
        for name in set(self.features) & set(other.features):
            if self.features[name] != other.features[name]:
                raise FeatureDefinitionError(
                    f"defined twice differently: {self.features[name]!r} and {other.features[name]!r}", feature=name
                )
        for key in ("bars_per_day", "interval_minutes"):
            a, b = getattr(self, key), getattr(other, key)
            if a is not None and b is not None and a != b:
                raise FeatureDefinitionError(f"{key} differs between definitions: {a} and {b}")
        data = self.to_dict()
        data["features"] = {**self.features, **other.features}
        data["external"] = list(dict.fromkeys([*self.external, *other.external]))
        for key in ("bars_per_day", "interval_minutes"):
            if getattr(other, key) is not None:
                data[key] = getattr(other, key)
        return FeatureDefinitions.from_dict(data)


def check_interval_minutes(value: Any, where: str = "") -> float | None:
    """``value`` as a bar interval in minutes (None stays None): a positive real number up to
    ``MAX_INTERVAL_MINUTES``, checked before ``float()`` so a 400-digit integer cannot overflow."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= MAX_INTERVAL_MINUTES:
        raise FeatureDefinitionError(
            f"{where}{': ' if where else ''}interval_minutes must be a positive number of minutes "
            f"(at most {MAX_INTERVAL_MINUTES:g}, 100 years), got {short_repr(value)}"
        )
    return float(value)


def check_bars_per_day(value: Any, where: str = "") -> int | None:
    """``value`` as the bars of one session (None stays None): a whole number 1..``MAX_BARS_PER_DAY``."""
    if value is None:
        return None
    whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or not 1 <= value <= MAX_BARS_PER_DAY:
        raise FeatureDefinitionError(
            f"{where}{': ' if where else ''}bars_per_day must be a whole number of bars "
            f"(1..{MAX_BARS_PER_DAY}), got {short_repr(value)}"
        )
    return int(value)


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise FeatureDefinitionError(
            f"{what} name {str(name)[:80]!r} must be an identifier (letters, digits, _; at most {MAX_NAME})"
        )


class _StrictLoader(config._Loader):
    """The config's YAML loader (``SafeLoader``, a key given twice refused), with anchors and
    aliases refused outright (a definitions file has no use for them: no alias bombs) and so
    merge keys (``<<``) too, which would let one key silently override another."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise FeatureDefinitionError(f"YAML anchors and aliases are not allowed (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise FeatureDefinitionError(
                    f"YAML merge keys (<<) are not allowed (line {key_node.start_mark.line + 1})"
                )
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` through ``_StrictLoader``."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except config._DuplicateKey as e:
        raise FeatureDefinitionError(str(e)) from None
    finally:
        loader.dispose()


def _load_json(text: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise FeatureDefinitionError(f"duplicate key {key!r}")
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=pairs)
