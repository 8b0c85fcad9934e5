"""A TRAINING-run writer: trains small real models and writes them in the TRAINING layout.

Used by the tests and the demo. Formats are the ones TRAINING writes: LightGBM ``model.txt``,
XGBoost ``model.json``, CatBoost ``model.cbm``, sklearn / NGBoost / ensembles / quantile
sets ``model.joblib``, Keras ``model.keras``. Meta carries the sorted ``feature_list``,
the training-order ``feature_names``, the sha256 ``model_checksum``, ``interval_minutes``
and, for sequence models, ``sequence_length``.

Targets are regressions unless ``task`` says otherwise (per target): ``binary`` learns the sign of
the target (1 when > 0), ``multiclass`` its terciles (0, 1, 2); the families' trainers then fit their
classifiers. ``categorical`` names feature columns holding integer category codes (0, 1, ...): the
libraries that read categories (``Adapter.reads_categories``) train on them as categories, the
others as numbers. ``write_model`` adds one model trained elsewhere to a run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from . import families as fam
from .atomic import write_atomic_json
from .integrity import sha256_file


@dataclass(frozen=True)
class TrainSize:
    """How big the models are: tests use ``SMALL``; benchmarks and the demo may go bigger."""

    trees: int = 30
    depth: int = 4
    leaves: int = 15
    epochs: int = 2
    hidden: int = 16


SMALL = TrainSize()


def windows(X: np.ndarray, seq_len: int) -> np.ndarray:
    """(N, F) rows in time order → (N - seq_len + 1, seq_len, F) sliding windows, oldest first."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    return np.lib.stride_tricks.sliding_window_view(X, seq_len, axis=0).transpose(0, 2, 1).copy()


def family_dir_name(family: fam.Family, style: str) -> str:
    """``family=lightgbm`` (TRAINING's style) or ``family=LightGBM`` (the spec's examples)."""
    if style == "canonical":
        return family.name
    display = {
        "lightgbm": "LightGBM",
        "xgboost": "XGBoost",
        "catboost": "CatBoost",
        "mlp": "MLP",
        "lstm": "LSTM",
        "cnn1d": "CNN1D",
        "ngboost": "NGBoost",
    }
    return display.get(family.name, "".join(part.capitalize() for part in family.name.split("_")))


TASKS = ("regression", "binary", "multiclass")


def labels(y: np.ndarray, task: str) -> np.ndarray:
    """What a trainer fits for ``task``: the target itself, its sign (binary: 1 when > 0) or its
    terciles (multiclass: 0, 1, 2 by the 1/3 and 2/3 quantiles); NaN targets stay NaN (dropped)."""
    y = np.asarray(y, dtype=np.float64)
    if task == "regression":
        return y
    if task == "binary":
        return np.where(np.isfinite(y), y > 0, np.nan)
    if task == "multiclass":
        cuts = np.nanquantile(y, [1 / 3, 2 / 3])
        return np.where(np.isfinite(y), np.digitize(y, cuts), np.nan)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _as_categories(X: pd.DataFrame, categorical: Sequence[str]) -> pd.DataFrame:
    """``X`` with the ``categorical`` columns as pandas categories whose codes are the values."""
    X = X.copy()
    for name in categorical:
        values = X[name].to_numpy(dtype=np.float64)
        if not (np.isfinite(values) & (values >= 0) & (values == np.round(values))).all():
            raise ValueError(f"categorical column {name!r} must hold integer codes >= 0")
        X[name] = pd.Categorical(values.astype(np.int64), categories=np.arange(int(values.max()) + 1))
    return X


def write_model(
    root: str | Path,
    target: str,
    family: str | fam.Family,
    file_name: str,
    save: Callable[[Path], Any],
    training_order: Sequence[str],
    n_train: int,
    *,
    interval_minutes: float = 1440.0,
    sequence_length: int | None = None,
    dir_style: str = "canonical",
) -> Path:
    """Write one model (``save(path)`` writes ``file_name``) and its meta into a run; returns its folder."""
    family = fam.resolve(family)
    view = artifacts.SEQUENTIAL if family.sequential else artifacts.CROSS_SECTIONAL
    folder = (
        Path(root) / "targets" / target / "models" / f"view={view}" / f"family={family_dir_name(family, dir_style)}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    save(folder / file_name)
    meta = {
        "family": family_dir_name(family, dir_style),
        "feature_list": sorted(training_order),
        "feature_names": list(training_order),
        "metrics": {"n_train": int(n_train)},
        "model_checksum": sha256_file(folder / file_name),
        "interval_minutes": interval_minutes,
    }
    if family.sequential:
        meta["sequence_length"] = sequence_length
    write_atomic_json(folder / artifacts.META_FILE, meta)
    return folder


def write_training_run(
    out_dir: str | Path,
    features: pd.DataFrame,
    targets: dict[str, Any],
    families: list[str],
    *,
    run_id: str = "run",
    timestamp: str = "20261126T000000",
    interval_minutes: float = 1440.0,
    sequence_length: int = 20,
    size: TrainSize = SMALL,
    seed: int = 0,
    dir_style: str = "canonical",
    progress: Callable[[str, str], None] | None = None,
    task: str | Mapping[str, str] = "regression",
    categorical: Sequence[str] = (),
    definitions: Any = None,
) -> Path:
    """Train every family on every target and write ``out_dir/run_id/timestamp``; returns that run root.

    ``features`` is in time order, its column order is the training order (TRAINING's meta
    lists the names sorted). Sequence families train on sliding windows of ``sequence_length``
    rows and go under ``view=SEQUENTIAL``; the others under ``view=CROSS_SECTIONAL``.
    ``progress(target, family)`` is called after each model is written. ``task`` (one for all
    targets, or per target) and ``categorical`` as in the module docstring. ``definitions``: the
    feature definitions the features were built with (a ``FeatureDefinitions`` or its dict),
    recorded in the run as ``feature_definitions.yaml``.
    """
    root = Path(out_dir) / run_id / timestamp
    training_order = [str(c) for c in features.columns]
    unknown = sorted(set(categorical) - set(training_order))
    if unknown:
        raise ValueError(f"categorical columns {unknown} are not features")
    values = features.to_numpy(dtype=np.float64)
    with_categories = _as_categories(features, categorical) if categorical else features
    index: dict[str, Any] = {}
    for target, y in targets.items():
        target_task = task if isinstance(task, str) else task.get(target, "regression")
        y = labels(y, target_task)
        ok = np.isfinite(y)
        if target_task != "regression":
            y = np.where(ok, y, 0).astype(np.int64)
        written = []
        for name in families:
            family = fam.resolve(name)
            if target_task not in family.adapter.tasks:
                raise ValueError(f"family {family.name!r} does not train {target_task} models here")
            if family.sequential:
                X = windows(values, sequence_length)
                Y = y[sequence_length - 1 :]
                keep = ok[sequence_length - 1 :]
                X, Y = X[keep], Y[keep]
            else:
                X = with_categories if family.adapter.reads_categories else features
                X, Y = X[ok], y[ok]
            file_name, save = family.adapter.train(family, X, Y, size, seed)
            write_model(
                root,
                target,
                family,
                file_name,
                save,
                training_order,
                len(Y),
                interval_minutes=interval_minutes,
                sequence_length=sequence_length if family.sequential else None,
                dir_style=dir_style,
            )
            written.append(family.name)
            if progress is not None:
                progress(target, family.name)
        decision = root / "targets" / target / "models" / f"view={artifacts.CROSS_SECTIONAL}"
        decision.mkdir(parents=True, exist_ok=True)
        write_atomic_json(decision / "routing_decision.json", {"selected_family": written[0], "candidates": written})
        index[target] = {"families": written}
    write_atomic_json(root / "manifest.json", {"run_id": run_id, "timestamp": timestamp, "target_index": index})
    if definitions is not None:
        from .features import write_run_definitions

        write_run_definitions(root, definitions)
    return root


def synthetic_features(
    n_rows: int = 400, n_features: int = 8, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Deterministic features (training column order deliberately not alphabetical) and three targets."""
    rng = np.random.default_rng(seed)
    names = [f"feat_{c}" for c in "hcaegbfd"[:n_features]] + [f"feat_x{i}" for i in range(max(0, n_features - 8))]
    X = pd.DataFrame(rng.standard_normal((n_rows, n_features)), columns=names)
    base = X.iloc[:, 0] * 0.5 - X.iloc[:, 1] * 0.3 + np.tanh(X.iloc[:, 2])
    targets = {
        f"fwd_ret_{h}": (base * (1 + 0.2 * i) + rng.standard_normal(n_rows) * 0.1).to_numpy()
        for i, h in enumerate(("5m", "15m", "60m"))
    }
    return X, targets


# ------------------------------------------------------------------ runs trained on market data


def horizon_label(bars: int, interval_minutes: float) -> str:
    """``fwd_ret_{label}``: days for daily bars, minutes otherwise (the spec's ``fwd_ret_15m``)."""
    return f"{bars}d" if interval_minutes == 1440 else f"{round(bars * interval_minutes)}m"


def market_dataset(
    ohlcv: pd.DataFrame,
    horizons: tuple[int, ...],
    interval_minutes: float,
    feature_names: tuple[str, ...] | None = None,
    definitions: Any = None,
    bars_per_day: int | None = None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Features of every bar (rows where all are defined) and forward returns per horizon.

    Features are the batch execution of the compiled program (``FeatureBuilder``: the vocabulary
    plus ``definitions``; external columns read from ``ohlcv`` by name), in the order given
    (default: the spec's 14, not alphabetical), so the meta's sorted ``feature_list`` differs from
    the training order, as in TRAINING.
    """
    from .features import FeatureBuilder, ohlcv_arrays

    builder = FeatureBuilder(
        feature_names, definitions=definitions, interval_minutes=interval_minutes, bars_per_day=bars_per_day
    )
    frame = builder.frame(ohlcv)
    close = pd.Series(ohlcv_arrays(ohlcv)["close"], index=ohlcv.index).loc[frame.index]
    keep = frame.notna().all(axis=1).to_numpy()
    targets = {
        f"fwd_ret_{horizon_label(h, interval_minutes)}": (close.shift(-h) / close - 1.0).to_numpy()[keep]
        for h in horizons
    }
    return frame[keep], targets


def write_market_run(
    out_dir: str | Path,
    ohlcv: pd.DataFrame,
    families: list[str],
    *,
    horizons: tuple[int, ...] = (1, 5, 10),
    interval_minutes: float = 1440.0,
    feature_names: tuple[str, ...] | None = None,
    definitions: Any = None,
    bars_per_day: int | None = None,
    **kwargs: Any,
) -> Path:
    """Train ``families`` on features and forward returns of real bars; returns the run root (which
    records ``definitions`` when given)."""
    X, targets = market_dataset(ohlcv, horizons, interval_minutes, feature_names, definitions, bars_per_day)
    return write_training_run(
        out_dir, X, targets, families, interval_minutes=interval_minutes, definitions=definitions, **kwargs
    )
