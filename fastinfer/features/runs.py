"""Runs carry their feature definitions: ``feature_definitions.yaml`` beside ``manifest.json``.

- ``write_run_definitions(run_root, definitions)`` writes it (atomically); the TRAINING writer
  calls it, so a run records exactly the definitions its features were built with.
- ``read_run_definitions(run_root)`` reads it back (None when the run has none).
- ``FeatureDefinitions.hash`` is its stable content hash (for the lock and signature).
- ``run_features(run_root)`` is what serving a whole run needs: the union of every model's
  feature list, the run's definitions and its bar interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import artifacts
from .definitions import DEFINITIONS_FILE, FeatureDefinitions
from .errors import FeatureDefinitionError


def definitions_path(run_root: str | Path) -> Path:
    """Where a run keeps its definitions (refused if a link leads it out of the run)."""
    root = Path(run_root)
    return artifacts.inside(root, DEFINITIONS_FILE, what=DEFINITIONS_FILE)


def write_run_definitions(run_root: str | Path, definitions: FeatureDefinitions) -> Path:
    """Write ``feature_definitions.yaml`` into the run (atomically); returns its path."""
    if not isinstance(definitions, FeatureDefinitions):
        definitions = FeatureDefinitions.from_dict(definitions)
    return definitions.write(definitions_path(run_root))


def read_run_definitions(run_root: str | Path) -> FeatureDefinitions | None:
    """The run's definitions, or None when it has no ``feature_definitions.yaml``."""
    path = definitions_path(run_root)
    if not path.exists():
        return None
    return FeatureDefinitions.read(path)


@dataclass(frozen=True)
class RunFeatures:
    """What a run's models read: ``names`` (union, first-seen order over the models in
    discovery order, each model's training order), ``definitions`` (or None) and the bar
    ``interval_minutes`` the models agree on (or None)."""

    names: tuple[str, ...]
    definitions: FeatureDefinitions | None
    interval_minutes: float | None


def run_features(run_root: str | Path) -> RunFeatures:
    """Every feature the run's models read (``targets/*/models/**/model_meta.json``), its
    definitions and interval. Models that disagree on the interval are an error."""
    root = artifacts.resolve_run_root(run_root)
    names: dict[str, None] = {}
    intervals: dict[float, str] = {}
    for loc in artifacts.discover(root):
        spec = artifacts.read_spec(loc, root)
        for name in spec.feature_names or spec.feature_list:
            names.setdefault(name, None)
        if spec.interval_minutes is not None:
            intervals.setdefault(spec.interval_minutes, str(spec.meta_path))
    if not names:
        raise FeatureDefinitionError(f"run {root}: no model lists any feature (no model_meta.json under targets/)")
    if len(intervals) > 1:
        listed = "; ".join(f"{v:g} min in {p}" for v, p in intervals.items())
        raise FeatureDefinitionError(f"run {root}: models disagree on the bar interval ({listed})")
    return RunFeatures(tuple(names), read_run_definitions(root), next(iter(intervals), None))
