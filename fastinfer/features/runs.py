"""Runs carry their feature definitions: ``feature_definitions.yaml`` beside ``manifest.json``.

- ``write_run_definitions(run_root, definitions)`` writes it (atomically); the TRAINING writer
  calls it, so a run records exactly the definitions its features were built with.
- ``read_run_definitions(run_root)`` reads it back (None when the run has none) through a
  ``ModelLoader``, under the run's trust policy (signature, lock).
- ``FeatureDefinitions.hash`` is its stable content hash (for the lock and signature).
- ``run_features(run_root)`` is what serving a whole run needs: the union of every model's
  feature list, the run's definitions and its bar interval, each file read by the loader.

A run is found as ``ModelLoader`` finds it: a run root, or a run_id folder resolved to its
newest timestamp folder (``artifacts.resolve_run_root``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import artifacts
from ..errors import FeatureBuildError, ModelLoadError
from .definitions import DEFINITIONS_FILE, FeatureDefinitions
from .errors import FeatureDefinitionError

if TYPE_CHECKING:
    from ..loader import ModelLoader


def training_run_root(run_root: str | Path) -> Path:
    """The run folder the loader reads for ``run_root`` (a run_id folder: its newest timestamp);
    ``FeatureBuildError`` unless it is a TRAINING run (a ``model_meta.json`` under
    ``targets/*/models/``): definitions recorded anywhere else are read by nothing."""
    try:
        root = artifacts.resolve_run_root(run_root)
    except ModelLoadError as exc:
        raise FeatureBuildError(f"{run_root}: {exc.reason}") from None
    if not any((loc.path / artifacts.META_FILE).is_file() for loc in artifacts.discover(root)):
        raise FeatureBuildError(
            f"{root}: not a TRAINING run (no targets/*/models/**/{artifacts.META_FILE}): nothing would read "
            f"{DEFINITIONS_FILE} there"
        )
    return root


def definitions_path(run_root: str | Path) -> Path:
    """Where a run keeps its definitions (``training_run_root``; refused if a link leads it out of the run)."""
    return artifacts.inside(training_run_root(run_root), DEFINITIONS_FILE, what=DEFINITIONS_FILE)


def write_run_definitions(run_root: str | Path, definitions: FeatureDefinitions) -> Path:
    """Write ``feature_definitions.yaml`` into the run (atomically); returns its path."""
    if not isinstance(definitions, FeatureDefinitions):
        definitions = FeatureDefinitions.from_dict(definitions)
    return definitions.write(definitions_path(run_root))


def read_run_definitions(run_root: str | Path | None = None, *, loader: ModelLoader | None = None):
    """The run's definitions (``FeatureDefinitions``), or None when it has none: read by
    ``loader`` (default ``ModelLoader(run_root)``), so checked as it checks every file."""
    return _loader(run_root, loader).definitions()


@dataclass(frozen=True)
class RunFeatures:
    """What a run's models read: ``names`` (union, first-seen order over the models in
    discovery order, each model's training order), ``definitions`` (or None) and the bar
    ``interval_minutes`` the models agree on (or None)."""

    names: tuple[str, ...]
    definitions: FeatureDefinitions | None
    interval_minutes: float | None


def run_features(run_root: str | Path | None = None, *, loader: ModelLoader | None = None) -> RunFeatures:
    """Every feature the run's models read (``targets/*/models/**/model_meta.json``), its
    definitions and interval, each file read by ``loader`` (default ``ModelLoader(run_root)``)
    under the run's trust policy. Models that disagree on the interval are an error."""
    loader = _loader(run_root, loader)
    root = loader.run_root
    names: dict[str, None] = {}
    intervals: dict[float, str] = {}
    for loc in loader.locations():
        spec = loader.spec_of(loc)
        for name in spec.feature_names or spec.feature_list:
            names.setdefault(name, None)
        if spec.interval_minutes is not None:
            intervals.setdefault(spec.interval_minutes, str(spec.meta_path))
    if not names:
        raise FeatureDefinitionError(f"run {root}: no model lists any feature (no model_meta.json under targets/)")
    if len(intervals) > 1:
        listed = "; ".join(f"{v:g} min in {p}" for v, p in intervals.items())
        raise FeatureDefinitionError(f"run {root}: models disagree on the bar interval ({listed})")
    return RunFeatures(tuple(names), loader.definitions(), next(iter(intervals), None))


def _loader(run_root: str | Path | None, loader: ModelLoader | None) -> ModelLoader:
    """``loader``, else a ``ModelLoader`` of ``run_root`` (with the default config); both given
    must name the same run."""
    from ..loader import ModelLoader

    if loader is None:
        if run_root is None:
            raise FeatureBuildError("give run_root or loader")
        return ModelLoader(run_root)
    if run_root is not None and artifacts.resolve_run_root(run_root) != loader.run_root:
        raise FeatureBuildError(f"run_root {run_root} is not the loader's run {loader.run_root}")
    return loader
