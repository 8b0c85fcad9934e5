"""A TRAINING-run writer: trains small real models and writes them in the TRAINING layout.

Used by the tests and the demo. Formats are the ones TRAINING writes: LightGBM ``model.txt``,
XGBoost ``model.json``, CatBoost ``model.cbm``, sklearn / NGBoost / ensembles / quantile
sets ``model.joblib``, Keras ``model.keras``. Meta carries the sorted ``feature_list``,
the training-order ``feature_names``, the sha256 ``model_checksum``, ``interval_minutes``
and, for sequence models, ``sequence_length``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from . import families as fam
from .atomic import write_atomic_json
from .integrity import sha256_file

QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class TrainSize:
    """How big the models are: tests use ``SMALL``; benchmarks and the demo may go bigger."""

    trees: int = 30
    depth: int = 4
    leaves: int = 15
    epochs: int = 2
    hidden: int = 16


SMALL = TrainSize()


def _lgbm_params(size: TrainSize, seed: int) -> dict:
    return dict(
        n_estimators=size.trees,
        num_leaves=size.leaves,
        learning_rate=0.1,
        min_child_samples=5,
        random_state=seed,
        n_jobs=1,
        verbose=-1,
    )


# ------------------------------------------------------------------ trainers
# Each takes (X, y, size, seed) with X a DataFrame in training column order (2-D families)
# or a float32 (N, T, F) array (sequence families); returns (file name, writer(path)).


def _train_lightgbm(X, y, size, seed):
    import lightgbm

    model = lightgbm.LGBMRegressor(**_lgbm_params(size, seed)).fit(X, y)
    return fam.LIGHTGBM_TXT, lambda p: model.booster_.save_model(str(p))


def _train_xgboost(X, y, size, seed):
    import xgboost

    model = xgboost.XGBRegressor(
        n_estimators=size.trees, max_depth=size.depth, learning_rate=0.1, random_state=seed, n_jobs=1
    ).fit(X, y)
    return fam.XGBOOST_JSON, lambda p: model.save_model(str(p))


def _train_catboost(X, y, size, seed):
    import catboost

    model = catboost.CatBoostRegressor(
        iterations=size.trees, depth=size.depth, random_seed=seed, verbose=0, thread_count=1, allow_writing_files=False
    ).fit(X, y)
    return fam.CATBOOST_CBM, lambda p: model.save_model(str(p), format="cbm")


def _joblib(model):
    import joblib

    return fam.JOBLIB, lambda p: joblib.dump(model, p)


def _sklearn(factory):
    def train(X, y, size, seed):
        return _joblib(factory(size, seed).fit(X, y))

    return train


def _forest(cls_name):
    def factory(size, seed):
        import sklearn.ensemble

        return getattr(sklearn.ensemble, cls_name)(
            n_estimators=max(5, size.trees // 2), max_depth=size.depth + 2, random_state=seed, n_jobs=1
        )

    return factory


def _linear(cls_name, **kwargs):
    def factory(size, seed):
        import sklearn.linear_model

        return getattr(sklearn.linear_model, cls_name)(**kwargs)

    return factory


def _train_ngboost(X, y, size, seed):
    from ngboost import NGBRegressor

    model = NGBRegressor(n_estimators=size.trees, learning_rate=0.05, verbose=False, random_state=seed)
    return _joblib(model.fit(X.to_numpy(), np.asarray(y)))


def _train_quantile_lightgbm(X, y, size, seed):
    import lightgbm

    models = [
        lightgbm.LGBMRegressor(objective="quantile", alpha=q, **_lgbm_params(size, seed)).fit(X, y) for q in QUANTILES
    ]
    return _joblib({"quantiles": list(QUANTILES), "models": models})


def _base_estimators(size, seed):
    import lightgbm
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.linear_model import Ridge

    return [
        ("lightgbm", lightgbm.LGBMRegressor(**_lgbm_params(size, seed))),
        ("ridge", Ridge(alpha=1.0)),
        ("extra_trees", ExtraTreesRegressor(n_estimators=10, max_depth=size.depth + 2, random_state=seed, n_jobs=1)),
    ]


def _train_ensemble(X, y, size, seed):
    from sklearn.ensemble import VotingRegressor

    return _joblib(VotingRegressor(_base_estimators(size, seed), weights=[0.5, 0.3, 0.2]).fit(X, y))


def _train_meta_learning(X, y, size, seed):
    from sklearn.ensemble import StackingRegressor
    from sklearn.linear_model import Ridge

    return _joblib(StackingRegressor(_base_estimators(size, seed), final_estimator=Ridge(alpha=1.0), cv=3).fit(X, y))


def _keras_body(name: str, size: TrainSize):
    """The layers after the input for each Keras family (small, convertible with tf2onnx)."""
    import keras
    from keras import layers

    h = size.hidden

    def attention(x):
        a = layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
        return layers.LayerNormalization()(layers.Add()([x, a]))

    def build(x):
        if name == "mlp":
            x = layers.Dense(h, activation="relu")(x)
            return layers.Dense(h // 2, activation="relu")(x)
        if name in ("cnn1d", "tab_cnn"):
            x = layers.Conv1D(h, 3, padding="causal", activation="relu")(x)
            return layers.GlobalAveragePooling1D()(x)
        if name in ("lstm", "tab_lstm"):
            return layers.LSTM(h)(x)
        if name in ("transformer", "tab_transformer"):
            x = layers.Dense(h)(x)
            return layers.GlobalAveragePooling1D()(attention(x))
        if name == "cnn1d_transformer":
            x = layers.Conv1D(h, 3, padding="causal", activation="relu")(x)
            return layers.GlobalAveragePooling1D()(attention(x))
        raise ValueError(f"no Keras architecture for {name}")

    return keras, build


def _keras_trainer(name: str):
    def train(X, y, size, seed):
        keras, build = _keras_body(name, size)
        keras.utils.set_random_seed(seed)
        data = np.asarray(X, dtype=np.float32)
        inputs = keras.Input(shape=data.shape[1:], name="features")
        # Market features span ~1e-3 (returns) to ~1e3 (price bands): standardise inside the
        # model, so the converted graph carries the scaling and serving needs no extra step.
        scale = keras.layers.Normalization(axis=-1, name="standardize")
        scale.adapt(data)
        # Likewise the target: fit on standardised y, and map the output back to y's units.
        target = np.asarray(y, dtype=np.float64)
        y_mean, y_std = float(target.mean()), float(target.std()) or 1.0
        standardised = keras.layers.Dense(1)(build(scale(inputs)))
        core = keras.Model(inputs, standardised)
        core.compile(optimizer="adam", loss="mse")
        core.fit(data, ((target - y_mean) / y_std).astype(np.float32), epochs=size.epochs, batch_size=64, verbose=0)
        unscale = keras.layers.Rescaling(scale=y_std, offset=y_mean, name="to_target_units")
        model = keras.Model(inputs, unscale(standardised), name=name)  # shares core's trained layers
        return fam.KERAS, lambda p: model.save(str(p))

    return train


TRAINERS: dict[str, Callable[..., tuple[str, Callable[[Path], Any]]]] = {
    "lightgbm": _train_lightgbm,
    "xgboost": _train_xgboost,
    "catboost": _train_catboost,
    "random_forest": _sklearn(_forest("RandomForestRegressor")),
    "extra_trees": _sklearn(_forest("ExtraTreesRegressor")),
    "ridge": _sklearn(_linear("Ridge", alpha=1.0)),
    "lasso": _sklearn(_linear("Lasso", alpha=1e-4)),
    "elastic_net": _sklearn(_linear("ElasticNet", alpha=1e-4)),
    "linear_regression": _sklearn(_linear("LinearRegression")),
    "ngboost": _train_ngboost,
    "quantile_lightgbm": _train_quantile_lightgbm,
    "ensemble": _train_ensemble,
    "meta_learning": _train_meta_learning,
    **{f.name: _keras_trainer(f.name) for f in fam.of_category(fam.Category.KERAS, fam.Category.SEQUENTIAL)},
}
assert set(TRAINERS) == {f.name for f in fam.FAMILIES}, "every family needs a trainer"


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
) -> Path:
    """Train every family on every target and write ``out_dir/run_id/timestamp``; returns that run root.

    ``features`` is in time order, its column order is the training order (TRAINING's meta
    lists the names sorted). Sequence families train on sliding windows of ``sequence_length``
    rows and go under ``view=SEQUENTIAL``; the others under ``view=CROSS_SECTIONAL``.
    ``progress(target, family)`` is called after each model is written.
    """
    root = Path(out_dir) / run_id / timestamp
    training_order = [str(c) for c in features.columns]
    values = features.to_numpy(dtype=np.float64)
    index: dict[str, Any] = {}
    for target, y in targets.items():
        y = np.asarray(y, dtype=np.float64)
        ok = np.isfinite(y)
        written = []
        for name in families:
            family = fam.resolve(name)
            if family.sequential:
                X = windows(values, sequence_length)
                Y = y[sequence_length - 1 :]
                keep = ok[sequence_length - 1 :]
                X, Y = X[keep], Y[keep]
                view = artifacts.SEQUENTIAL
            else:
                X, Y, view = features[ok], y[ok], artifacts.CROSS_SECTIONAL
            file_name, save = TRAINERS[family.name](X, Y, size, seed)
            folder = (
                root / "targets" / target / "models" / f"view={view}" / f"family={family_dir_name(family, dir_style)}"
            )
            folder.mkdir(parents=True, exist_ok=True)
            save(folder / file_name)
            meta = {
                "family": family_dir_name(family, dir_style),
                "feature_list": sorted(training_order),
                "feature_names": training_order,
                "metrics": {"n_train": len(Y)},
                "model_checksum": sha256_file(folder / file_name),
                "interval_minutes": interval_minutes,
            }
            if family.sequential:
                meta["sequence_length"] = sequence_length
            write_atomic_json(folder / artifacts.META_FILE, meta)
            written.append(family.name)
            if progress is not None:
                progress(target, family.name)
        decision = root / "targets" / target / "models" / f"view={artifacts.CROSS_SECTIONAL}"
        decision.mkdir(parents=True, exist_ok=True)
        write_atomic_json(decision / "routing_decision.json", {"selected_family": written[0], "candidates": written})
        index[target] = {"families": written}
    write_atomic_json(root / "manifest.json", {"run_id": run_id, "timestamp": timestamp, "target_index": index})
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
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Features of every bar (rows where all are defined) and forward returns per horizon.

    Features come from ``FeatureBuilder`` in its default (non-alphabetical) order, so the
    meta's sorted ``feature_list`` differs from the training order, as in TRAINING.
    """
    from .feature_builder import FeatureBuilder, ohlcv_arrays

    frame = FeatureBuilder(feature_names).frame(ohlcv)
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
    **kwargs: Any,
) -> Path:
    """Train ``families`` on features and forward returns of real bars; returns the run root."""
    X, targets = market_dataset(ohlcv, horizons, interval_minutes, feature_names)
    return write_training_run(out_dir, X, targets, families, interval_minutes=interval_minutes, **kwargs)
