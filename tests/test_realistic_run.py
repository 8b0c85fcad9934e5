"""A run as a real TRAINING pipeline writes it, driven through every public path (brief RUN).

150 features under the pipeline's own names and conventions (``ret_1d`` a log return, ``vol_10d``
the rolling std of log returns, ``mom_5`` a fractional momentum, ...) are defined in the run's
``feature_definitions.yaml`` and computed for training by ``fastinfer features build`` over 20
symbols of real GOOG bars (other offsets and price scales). The pipeline's own writer trains
LightGBM, XGBoost, a scaled Ridge, a random forest, a quantile LightGBM set, a stacking ensemble, a
Keras MLP and a Keras LSTM (``tab_lstm``) for three horizons with the native libraries, each on its
own column order, and writes the spec's layout: ``model_meta.json`` with only ``feature_list`` (the
training order), ``model_checksum``, ``interval_minutes`` (and ``sequence_length``), display-cased
``family=LightGBM`` folders, ``manifest.json`` and ``routing_decision.json``.

Then: ``convert`` / ``verify`` / ``keygen`` / ``sign`` / ``verify --public-key``; the spec's
``ModelLoader`` / ``InferenceEngine`` / ``FeatureBuilder`` / ``SeqBufferManager``; ``LivePredictor``
over 20 symbols (the 500 bars after training and the history before them); ``RunPredictor`` and
``fastinfer predict --ohlcv``. References: pandas and TA-Lib for the features, each library's own
predict for the models.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from fastinfer import FeatureBuilder, InferenceEngine, LivePredictor, ModelLoader, SeqBufferManager, testing, warmup
from fastinfer.cli import main
from fastinfer.compiler import compile_run
from fastinfer.features import FeatureDefinitions, StreamingFeatures
from fastinfer.integrity import sha256_file
from fastinfer.research import RunPredictor

DAILY = 1440.0
N_SYMBOLS, N_HISTORY, N_LIVE, STEP = 20, 700, 500, 40
SYMBOLS = [f"S{i:02d}" for i in range(N_SYMBOLS)]
TRAIN_ROWS = slice(100, 400)  # per symbol: past the longest warm-up (100 bars), before the live bars
HORIZONS = {"fwd_ret_1d": 1, "fwd_ret_5d": 5, "fwd_ret_10d": 10}
SEQ_LEN = 10
OHLCV = ("Open", "High", "Low", "Close", "Volume")
# The pipeline's folder name, meta "family" and the fastinfer family it resolves to.
FAMILIES = {
    "LightGBM": "lightgbm",
    "XGBoost": "xgboost",
    "Ridge": "ridge",
    "RandomForest": "random_forest",
    "QuantileLightGBM": "quantile_lightgbm",
    "MetaLearning": "meta_learning",
    "MLP": "mlp",
    "TabLSTM": "tab_lstm",
}


def pipeline_definitions() -> dict:
    """150 features as a real pipeline names them; several shadow a vocabulary name with the
    pipeline's own convention (ret_1d, vol_10d, mom_5, ...)."""
    f: dict[str, str] = {}
    for n in (1, 2, 3, 4, 5, 10, 15, 20, 40, 60):
        f[f"ret_{n}d"] = f"log_return(close, {n}d)"
    for n in (3, 5, 10, 20, 40, 60):
        f[f"vol_{n}d"] = f"rolling_std(log_return(close, 1), {n}d)"
    for n in (3, 4, 5, 10, 15, 20, 40, 60):
        f[f"mom_{n}"] = f"close / lag(close, {n}) - 1"
    for n in (5, 10, 20, 30, 40, 50, 100):
        f[f"zscore_{n}"] = f"rolling_zscore(close, {n})"
        f[f"ma_ratio_{n}"] = f"close / rolling_mean(close, {n})"
    for n in (5, 10, 20, 50, 100):
        f[f"ema_ratio_{n}"] = f"close / ema(close, {n}) - 1"
        f[f"hi_dist_{n}"] = f"close / rolling_max(high, {n}) - 1"
        f[f"lo_dist_{n}"] = f"close / rolling_min(low, {n}) - 1"
    for n in (2, 7, 14, 21, 28):
        f[f"rsi_{n}"] = f"rsi(close, {n})"
    for n in (7, 14, 21):
        for name, expr in (
            ("atr", "atr({n})"),
            ("natr", "natr({n})"),
            ("atr_ratio", "atr({n}) / close"),
            ("adx", "adx({n})"),
            ("plus_di", "plus_di({n})"),
            ("minus_di", "minus_di({n})"),
            ("cci", "cci({n})"),
            ("willr", "willr({n})"),
            ("mfi", "mfi({n})"),
            ("stoch_k", "stoch_k({n})"),
            ("stoch_d", "stoch_d({n}, 3)"),
        ):
            f[f"{name}_{n}"] = expr.format(n=n)
    for n in (5, 10, 20, 60):
        f[f"volume_ratio_{n}"] = f"volume / rolling_mean(volume, {n})"
        f[f"volume_z_{n}"] = f"rolling_zscore(volume, {n})"
        f[f"dollar_vol_{n}"] = f"log(rolling_mean(close * volume, {n}) + 1)"
        f[f"vwap_dist_{n}"] = f"close / vwap_{n} - 1"  # vwap is a vocabulary name, not a function
    f |= {
        "log_volume": "log(volume + 1)",
        "volume_chg": "log(volume + 1) - log(lag(volume, 1) + 1)",
        "obv_z_20": "rolling_zscore(obv(), 20)",
        "hl_range": "(high - low) / close",
        "hl_log": "log(high / low)",
        "oc_range": "(close - open) / open",
        "upper_wick": "(high - max(open, close)) / close",
        "lower_wick": "(min(open, close) - low) / close",
        "close_pos": "(close - low) / (high - low + 1e-9)",
        "gap": "open / lag(close, 1) - 1",
        "gap_abs": "abs(open / lag(close, 1) - 1)",
        "gap_z_20": "rolling_zscore(open / lag(close, 1) - 1, 20)",
        "gap_sum_5": "rolling_sum(open / lag(close, 1) - 1, 5)",
    }
    for n in (5, 20):
        f[f"range_ma_{n}"] = f"rolling_mean((high - low) / close, {n})"
        f[f"range_z_{n}"] = f"rolling_zscore((high - low) / close, {n})"
        f[f"true_range_ma_{n}"] = f"rolling_mean(true_range() / close, {n})"
    for fast, slow, sig in ((12, 26, 9), (5, 35, 5)):
        f[f"macd_{fast}_{slow}"] = f"macd(close, {fast}, {slow}) / close"
        f[f"macd_sig_{fast}_{slow}"] = f"macd_signal(close, {fast}, {slow}, {sig}) / close"
        f[f"macd_hist_{fast}_{slow}"] = f"macd_hist(close, {fast}, {slow}, {sig}) / close"
    for n in (10, 20):
        f[f"bb_pct_{n}"] = f"bb_pct(close, {n}, 2)"
        f[f"bb_width_{n}"] = f"bb_width(close, {n}, 2)"
    f |= {
        "sharpe_20": "rolling_mean(log_return(close, 1), 20) / (rolling_std(log_return(close, 1), 20) + 1e-12)",
        "vol_of_vol_20": "rolling_std(rolling_std(log_return(close, 1), 10), 20)",
        "vol_ratio_5_20": "rolling_std(log_return(close, 1), 5) / rolling_std(log_return(close, 1), 20)",
        "var_20": "rolling_var(log_return(close, 1), 20)",
        "ret_sign_5": "rolling_mean(sign(log_return(close, 1)), 5)",
        "ret_clip_1d": "clip(log_return(close, 1), -0.05, 0.05)",
        "drawdown_60": "close / rolling_max(close, 60) - 1",
        "roc_10": "roc(close, 10)",
        "wma_ratio_20": "close / wma(close, 20)",
        "ema_cross_5_20": "ema(close, 5) / ema(close, 20) - 1",
        "sma_gap_5_20": "rolling_mean(close, 5) / rolling_mean(close, 20) - 1",
        "wilder_ret_14": "wilder(log_return(close, 1), 14)",
        "pct_1": "pct_change(close, 1)",
        "diff_vol_1": "diff(volume, 1)",
    }
    return {"interval_minutes": 1440, "features": f}


def symbol_bars(goog: pd.DataFrame) -> pd.DataFrame:
    """20 symbols of real bars in one long file (symbol, date, OHLCV): symbol i starts 40·i bars
    later in GOOG, prices scaled by 1 + 0.2·i, volume by 1 + 0.1·i, on one common calendar."""
    frames = []
    for i, symbol in enumerate(SYMBOLS):
        b = goog.iloc[STEP * i : STEP * i + N_HISTORY + N_LIVE].copy()
        b[["Open", "High", "Low", "Close"]] *= 1 + 0.2 * i
        b["Volume"] *= 1 + 0.1 * i
        b.index = goog.index[: len(b)]
        frames.append(b.rename_axis("date").reset_index().assign(symbol=symbol))
    return pd.concat(frames, ignore_index=True)[["symbol", "date", *OHLCV]]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _predict_out(run, bars, out) -> pd.DataFrame:
    """`fastinfer predict --ohlcv BARS --symbol-column symbol --out OUT` on daily bars, OUT read back."""
    _cli("predict", run, "--ohlcv", bars, "--interval", "1440", "--symbol-column", "symbol", "--out", out)
    return pd.read_parquet(out)


def _write(root, target, view, folder_name, family, file_name, save, order, n_train, seq_len=None):
    """The pipeline's writer: the spec's layout and meta (feature_list = the training order)."""
    folder = root / "targets" / target / "models" / f"view={view}" / f"family={folder_name}"
    folder.mkdir(parents=True)
    save(folder / file_name)
    meta = {
        "family": family,
        "feature_list": list(order),
        "metrics": {"n_train": int(n_train), "ic": 0.05},
        "model_checksum": sha256_file(folder / file_name),
        "interval_minutes": DAILY,
    }
    if seq_len:
        meta["sequence_length"] = seq_len
    (folder / "model_meta.json").write_text(json.dumps(meta, indent=2))


def _train(root, features: pd.DataFrame, bars: pd.DataFrame, names: list[str]) -> None:
    import joblib
    import keras
    import lightgbm
    import xgboost
    from sklearn.ensemble import RandomForestRegressor, StackingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    position = bars.groupby("symbol").cumcount().to_numpy()
    in_train = (position >= TRAIN_ROWS.start) & (position < TRAIN_ROWS.stop)
    close = bars["Close"]
    rng = np.random.default_rng(0)
    index = {}
    for target, h in HORIZONS.items():
        y = np.log(close.groupby(bars["symbol"]).shift(-h) / close).to_numpy()
        ok = in_train & np.isfinite(y) & np.isfinite(features[names].to_numpy()).all(axis=1)
        for folder_name in FAMILIES:
            order = list(rng.permutation(names))  # each model its own training column order
            X, yt = features.loc[ok, order], y[ok]
            lgb = dict(n_estimators=15, num_leaves=7, min_child_samples=20, verbose=-1, random_state=0)
            if folder_name == "LightGBM":
                m = lightgbm.LGBMRegressor(**lgb).fit(X, yt)
                file_name, save = "model.txt", lambda p, m=m: m.booster_.save_model(str(p))
            elif folder_name == "XGBoost":
                m = xgboost.XGBRegressor(n_estimators=15, max_depth=3, random_state=0, n_jobs=1).fit(X, yt)
                file_name, save = "model.json", lambda p, m=m: m.save_model(str(p))
            elif folder_name in ("Ridge", "RandomForest", "QuantileLightGBM", "MetaLearning"):
                if folder_name == "Ridge":
                    m = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(X, yt)
                elif folder_name == "RandomForest":
                    m = RandomForestRegressor(n_estimators=8, max_depth=5, random_state=0, n_jobs=1).fit(X, yt)
                elif folder_name == "QuantileLightGBM":
                    quantiles = [0.1, 0.5, 0.9]
                    models = [
                        lightgbm.LGBMRegressor(objective="quantile", alpha=q, **lgb).fit(X, yt) for q in quantiles
                    ]
                    m = {"quantiles": quantiles, "models": models}
                else:
                    base = [
                        ("lgb", lightgbm.LGBMRegressor(**lgb)),
                        ("ridge", make_pipeline(StandardScaler(), Ridge(alpha=10.0))),
                    ]
                    m = StackingRegressor(base, final_estimator=Ridge(alpha=1.0), cv=3).fit(X, yt)
                file_name, save = "model.joblib", lambda p, m=m: joblib.dump(m, p)
            elif folder_name == "MLP":
                keras.utils.set_random_seed(0)
                a = X.to_numpy(np.float32)
                inputs = keras.Input((a.shape[1],), name="features")
                scale = keras.layers.Normalization()
                scale.adapt(a)
                out = keras.layers.Dense(1)(keras.layers.Dense(8, activation="relu")(scale(inputs)))
                m = keras.Model(inputs, out)
                m.compile("adam", "mse")
                m.fit(a, yt.astype(np.float32), epochs=1, batch_size=256, verbose=0)
                file_name, save = "model.keras", lambda p, m=m: m.save(str(p))
            else:  # TabLSTM: windows of SEQ_LEN rows of one symbol, ending on a training row
                keras.utils.set_random_seed(0)
                windows, ends = [], []
                for rows in bars.groupby("symbol").indices.values():
                    v = features[order].to_numpy(np.float64)[rows]
                    w = np.lib.stride_tricks.sliding_window_view(v, SEQ_LEN, axis=0).transpose(0, 2, 1)
                    end = rows[SEQ_LEN - 1 :]
                    keep = np.isfinite(w).all(axis=(1, 2)) & ok[end]
                    windows.append(w[keep])
                    ends.append(end[keep])
                W, end = np.concatenate(windows).astype(np.float32), np.concatenate(ends)
                scale = keras.layers.Normalization(axis=-1)
                scale.adapt(W)
                m = keras.Sequential([keras.Input(W.shape[1:]), scale, keras.layers.LSTM(4), keras.layers.Dense(1)])
                m.compile("adam", "mse")
                m.fit(W, y[end].astype(np.float32), epochs=1, batch_size=256, verbose=0)
                file_name, save = "model.keras", lambda p, m=m: m.save(str(p))
            sequential = folder_name == "TabLSTM"
            _write(
                root,
                target,
                "SEQUENTIAL" if sequential else "CROSS_SECTIONAL",
                folder_name,
                folder_name if folder_name not in ("QuantileLightGBM", "MetaLearning") else FAMILIES[folder_name],
                file_name,
                save,
                order,
                ok.sum(),
                SEQ_LEN if sequential else None,
            )
        decision = root / "targets" / target / "models" / "view=CROSS_SECTIONAL" / "routing_decision.json"
        decision.write_text(json.dumps({"selected_family": "LightGBM", "candidates": list(FAMILIES)}))
        index[target] = {"families": list(FAMILIES)}
    (root / "manifest.json").write_text(json.dumps({"run_id": "pipeline", "target_index": index}))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, goog):
    """(run root, run_id folder, bars, training features, feature names, public key)."""
    base = tmp_path_factory.mktemp("realistic")
    definitions = base / "feature_definitions.yaml"
    definitions.write_text(yaml.safe_dump(pipeline_definitions(), sort_keys=False))
    bars = symbol_bars(goog)
    bars.to_parquet(base / "bars.parquet", index=False)
    _cli(
        "features",
        "build",
        "--definitions",
        definitions,
        base / "bars.parquet",
        "-o",
        base / "train.parquet",
        "--symbol-column",
        "symbol",
        "--interval",
        "1440",
    )
    features = pd.read_parquet(base / "train.parquet")
    names = list(pipeline_definitions()["features"])
    assert sorted(features.columns[:2]) == ["date", "symbol"] and list(features.columns[2:]) == names
    assert len(names) == 150
    run_id = base / "RESULTS" / "runs" / "pipeline"
    root = run_id / "20261130T120000"
    root.mkdir(parents=True)
    (root / "feature_definitions.yaml").write_text(definitions.read_text())
    _train(root, features, bars, names)
    _cli("convert", run_id)
    _cli("keygen", base / "keys" / "k")
    _cli("sign", run_id, "--key", base / "keys" / "k.key")
    return root, run_id, bars, features, names, base / "keys" / "k.pub"


def test_features_build_follows_the_pipelines_conventions(pipeline):
    """The pipeline's names mean what its definitions say (not the vocabulary's reading), against
    pandas and TA-Lib over each symbol's whole series."""
    import talib

    _, _, bars, features, _, _ = pipeline
    for symbol in ("S00", "S07", "S19"):
        b = bars[bars.symbol == symbol].reset_index(drop=True)
        f = features[features.symbol == symbol].reset_index(drop=True)
        c, h, lo, o, v = (b[k] for k in ("Close", "High", "Low", "Open", "Volume"))
        log_ret = np.log(c / c.shift(1))
        expected = {
            "ret_1d": log_ret,  # a log return, where the vocabulary's ret_1d is pct_change
            "ret_5d": np.log(c / c.shift(5)),
            "vol_10d": log_ret.rolling(10).std(ddof=1),
            "mom_5": c / c.shift(5) - 1,  # a fraction, where the vocabulary's mom_5 is a price difference
            "zscore_20": (c - c.rolling(20).mean()) / c.rolling(20).std(ddof=1),
            "ma_ratio_20": c / c.rolling(20).mean(),
            "gap": o / c.shift(1) - 1,
            "volume_ratio_20": v / v.rolling(20).mean(),
            "hl_range": (h - lo) / c,
            "rsi_14": pd.Series(talib.RSI(c.to_numpy(), 14)),
            "atr_14": pd.Series(talib.ATR(h.to_numpy(), lo.to_numpy(), c.to_numpy(), 14)),
            "adx_14": pd.Series(talib.ADX(h.to_numpy(), lo.to_numpy(), c.to_numpy(), 14)),
        }
        for name, want in expected.items():
            got = f[name].to_numpy()
            want = want.to_numpy()
            assert (np.isnan(got) == np.isnan(want)).all(), (symbol, name)
            ok = ~np.isnan(want)
            # 1e-9 relative: the same formula in another summation order (rolling sums, Wilder's
            # recursions); a z-score of a close at its mean is 0 up to cancellation, hence the atol.
            np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-12, err_msg=f"{symbol} {name}")


def test_convert_verify_and_signature(pipeline):
    root, run_id, _, _, _, public = pipeline
    loader = ModelLoader(run_id)
    assert loader.run_root == root  # a run_id folder picks its newest timestamp
    assert len(loader.lock.entries) == 3 * len(FAMILIES)
    assert {e.status for e in loader.lock.entries} == {"onnx"}, [e.reason for e in loader.lock.entries]
    assert loader.lock.definitions_sha256 == loader.definitions_sha256()
    assert "0 problem(s)" in _cli("verify", run_id)
    assert "0 problem(s)" in _cli("verify", run_id, "--public-key", public)
    signed = ModelLoader(run_id, verify_signature=True, trusted_public_key=public)
    assert signed.signed is not None
    assert signed.load(target="fwd_ret_5d", family="LightGBM").backend.value == "onnx"


def test_engine_predict_equals_each_librarys_predict_on_the_training_features(pipeline):
    """The spec's ModelLoader + InferenceEngine over the training matrix, every model against its
    own library's predict (``prefer_onnx=False`` opens the native model)."""
    root, _, _, features, _, _ = pipeline
    loader = ModelLoader(run_root=str(root))
    native = ModelLoader(root, prefer_onnx=False)
    engine = InferenceEngine()
    rows = features.iloc[np.r_[150:700, 1350:1900]].dropna()  # two symbols, training and later bars
    # Models read float32 (the graphs' input type). LightGBM compares float64 thresholds that
    # sit between adjacent training values, so rounding a training row to float32 can cross one:
    # the library's predict gets the float32-rounded rows (on unseen rows the two agree anyway).
    X32 = rows.drop(columns=["symbol", "date"]).astype(np.float32).astype(np.float64)
    for target in HORIZONS:
        for folder_name, family in FAMILIES.items():
            if family == "tab_lstm":
                continue  # sequences: checked against the live path below
            model = loader.load(target=target, family=folder_name)
            assert model.backend.value == "onnx", (target, family)
            got = engine.predict(model, X32, family=family)  # placed by name
            reference = native.load(target, family)
            ordered = X32[list(reference.feature_order)]
            if family == "quantile_lightgbm":  # the pipeline's artifact: one LightGBM model per quantile
                want = np.column_stack([m.predict(ordered) for m in reference.native["models"]])
            else:
                want = np.asarray(reference.native.predict(ordered))
            scale = np.abs(want).max()
            assert np.abs(got - want.reshape(got.shape)).max() <= model.family.adapter.tolerance * scale, (
                target,
                family,
            )


@pytest.fixture(scope="module")
def replay(pipeline):
    """Every bar of the 20 symbols through LivePredictor.on_bar: (predictor, outputs (bars, symbols,
    columns), its float32 features per bar, the state after the last history bar)."""
    root, _, bars, _, _, _ = pipeline
    warmup()
    live = LivePredictor(root, SYMBOLS, DAILY)
    cube = {k: bars[k].to_numpy().reshape(N_SYMBOLS, -1) for k in OHLCV}
    dates = bars["date"].to_numpy().reshape(N_SYMBOLS, -1)[0]
    outs, feats, state = [], [], None
    for t in range(N_HISTORY + N_LIVE):
        out = live.on_bar(*(cube[k][:, t] for k in OHLCV), timestamp=pd.Timestamp(dates[t]))
        outs.append(out.copy())
        feats.append(live.features.out.copy())
        if t == N_HISTORY - 1:
            state = live.state_dict()
    return live, np.array(outs), np.array(feats), state, cube, dates


def test_live_features_equal_the_training_features(pipeline, replay):
    """The incremental program equals `features build` to 1e-9 relative (float64); the live
    predictor hands models those values rounded to float32."""
    _, _, _, features, names, _ = pipeline
    live, _, live_feats, _, cube, _ = replay
    training = features[names].to_numpy().reshape(N_SYMBOLS, N_HISTORY + N_LIVE, -1)
    definitions = FeatureDefinitions.from_dict(pipeline_definitions())
    exact = StreamingFeatures(SYMBOLS, names, np.float64, definitions=definitions, interval_minutes=DAILY)
    for t in range(N_HISTORY + N_LIVE):
        got = exact.update(*(cube[k][:, t] for k in OHLCV))
        want = training[:, t]
        assert (np.isnan(got) == np.isnan(want)).all(), t
        ok = ~np.isnan(want)
        # atol: a rolling z-score of a close exactly at its mean is 0 in batch, ~1e-14 incrementally.
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-12)
    order = [names.index(n) for n in live.union]
    want32 = training[..., order].transpose(1, 0, 2)
    assert (np.isnan(live_feats) == np.isnan(want32)).all()
    ok = ~np.isnan(want32)
    # One float32 rounding of values equal to 1e-9: at most one float32 ulp apart (atol as above).
    np.testing.assert_allclose(live_feats[ok], want32[ok].astype(np.float32), rtol=1.2e-7, atol=1e-12)


def test_live_equals_research_equals_the_cli_and_the_state_round_trips(pipeline, replay, tmp_path):
    root, run_id, bars, _, _, _ = pipeline
    live, outs, _, state, cube, dates = replay
    assert not live.unavailable and len(live.models) == 3 * len(FAMILIES)
    ready = np.isfinite(outs[N_HISTORY:]).all(axis=(0, 1))
    assert ready.all(), [c for c, r in zip(live.columns, ready) if not r]  # every model serves the 500 bars
    # A fresh predictor from the state at the end of the history serves the 500 live bars identically.
    resumed = LivePredictor(root, SYMBOLS, DAILY)
    resumed.load_state_dict(state)
    for t in range(N_HISTORY, N_HISTORY + N_LIVE):
        out = resumed.on_bar(*(cube[k][:, t] for k in OHLCV), timestamp=pd.Timestamp(dates[t]))
        assert np.array_equal(out, outs[t], equal_nan=True), t
    research = RunPredictor.from_bars(root, bars, interval_minutes=DAILY, symbol_column="symbol")
    assert list(research.columns) == list(live.columns)
    r = research.to_numpy().reshape(N_SYMBOLS, N_HISTORY + N_LIVE, -1).transpose(1, 0, 2)
    assert (np.isnan(r) == np.isnan(outs)).all()
    for j, (target, family, column) in enumerate(live.columns):
        scale = np.nanmax(np.abs(outs[..., j]))
        # Trees: bit for bit; the others within ONNX Runtime's batch-size rounding (README: 2e-6).
        tol = 0.0 if family in ("lightgbm", "xgboost", "random_forest", "quantile_lightgbm") else 2e-6 * scale
        assert np.nanmax(np.abs(r[..., j] - outs[..., j])) <= tol, (target, family, column)
    out = tmp_path / "predictions.parquet"
    bars.to_parquet(tmp_path / "bars.parquet", index=False)
    written = _predict_out(run_id, tmp_path / "bars.parquet", out)
    cols = ["/".join(c) for c in research.columns]
    np.testing.assert_array_equal(written[cols].to_numpy(), research.to_numpy())
    assert (written["symbol"].to_numpy() == bars["symbol"].to_numpy()).all()


def test_spec_feature_builder_and_sequence_buffer_equal_the_live_path(pipeline, replay):
    """The spec's FeatureBuilder + SeqBufferManager + predict_sequential over one symbol's full
    history give the live predictor's tab_lstm output and the training features."""
    root, _, bars, features, names, _ = pipeline
    live, outs, _, _, _, _ = replay
    loader = ModelLoader(run_root=root)
    builder = FeatureBuilder(loader=loader)
    engine = InferenceEngine()
    symbol, t = "S03", N_HISTORY + 123
    history = bars[bars.symbol == symbol].reset_index(drop=True)
    training = features[features.symbol == symbol].reset_index(drop=True)
    vector = builder.build(history.iloc[: t + 1], lookback=None)  # the whole history, as training
    np.testing.assert_allclose(vector.select(names), training.loc[t, names].to_numpy(np.float64), rtol=1e-9, atol=1e-12)
    lstm = loader.load(target="fwd_ret_5d", family="tab_lstm")
    buffer = SeqBufferManager(seq_len=lstm.spec.sequence_length, n_features=lstm.n_features, symbol=symbol)
    for s in range(t - SEQ_LEN + 1, t + 1):
        buffer.push(builder.build(history.iloc[: s + 1], lookback=None).select(lstm.feature_order))
    got = engine.predict_sequential(lstm, buffer, family="tab_lstm")
    j = live.column_index[("fwd_ret_5d", "tab_lstm", "prediction")]
    want = outs[t, SYMBOLS.index(symbol), j]
    # float64 rows vs the live float32 rows: within the Keras adapter's tolerance.
    assert abs(float(got[0]) - want) <= lstm.family.adapter.tolerance * max(abs(want), 1e-3)


def test_a_corrupted_model_leaves_the_others_serving(pipeline, replay, tmp_path):
    import shutil

    root = pipeline[0]
    _, _, _, _, cube, dates = replay
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    (copy / "fastinfer.lock.sig").unlink()
    folder = copy / "targets" / "fwd_ret_5d" / "models" / "view=CROSS_SECTIONAL" / "family=LightGBM"
    for name in ("model.txt", "model.onnx"):  # both the graph and the native file it came from
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2 : len(data) // 2 + 40] = b"\0" * 40
        (folder / name).write_bytes(bytes(data))
    live = LivePredictor(copy, SYMBOLS, DAILY)
    assert set(live.unavailable) == {("fwd_ret_5d", "lightgbm")}
    assert "malformed LightGBM model" in live.unavailable[("fwd_ret_5d", "lightgbm")]
    bars_past_warmup = 150  # the longest warm-up is 100 bars
    for t in range(bars_past_warmup):
        out = live.on_bar(*(cube[k][:, t] for k in OHLCV), timestamp=pd.Timestamp(dates[t]))
    full = LivePredictor(root, SYMBOLS, DAILY)
    for t in range(bars_past_warmup):
        want = full.on_bar(*(cube[k][:, t] for k in OHLCV), timestamp=pd.Timestamp(dates[t]))
    for j, col in enumerate(live.columns):
        assert np.array_equal(out[:, j], want[:, full.column_index[col]], equal_nan=True), col
    assert "FAIL fwd_ret_5d/lightgbm" in CliRunner().invoke(main, ["verify", str(copy)]).output


# ---------------------------------------------------------------- what the run found, fixed


def test_symbol_scoped_models_are_named_when_the_predictors_leave_them_out(tmp_path, caplog):
    """Patch 1_symbol_scoped_models.patch: a symbol-scoped model the live and research predictors
    do not serve is in ``unavailable`` with why (and logged), not silently dropped."""
    X, targets = testing.synthetic_features(n_rows=300, n_features=8)
    root = testing.write_training_run(tmp_path, X, {"fwd_ret_5m": targets["fwd_ret_5m"]}, ["ridge"], interval_minutes=5)
    source = root / "targets" / "fwd_ret_5m" / "models" / "view=CROSS_SECTIONAL" / "family=ridge"
    for symbol in ("AAPL", "MSFT"):
        scoped = root / "targets" / "fwd_ret_15m" / "models" / "view=CROSS_SECTIONAL" / f"symbol={symbol}"
        scoped.mkdir(parents=True)
        shutil.copytree(source, scoped / "family=ridge")
    compile_run(root)
    assert ModelLoader(root).load("fwd_ret_15m", "ridge", symbol="AAPL") is not None  # servable when asked for
    runner = RunPredictor(root, interval_minutes=5)
    assert [c[0] for c in runner.columns] == ["fwd_ret_5m"]
    why = runner.unavailable[("fwd_ret_15m", "ridge")]
    assert "symbol=AAPL" in why and "symbol=MSFT" in why
    assert "symbol=AAPL" in caplog.text


def test_a_second_convert_of_an_unchanged_signed_run_keeps_its_signature(tmp_path):
    """Patch 2_second_convert_rewrites_lock.patch: converting an unchanged run again leaves the lock
    byte for byte as it was, so its signature still verifies."""
    X, targets = testing.synthetic_features(n_rows=300, n_features=8)
    root = testing.write_training_run(tmp_path, X, targets, ["lightgbm", "ridge"])
    _cli("convert", root)
    _cli("keygen", tmp_path / "k")
    _cli("sign", root, "--key", tmp_path / "k.key")
    lock = (root / "fastinfer.lock.json").read_bytes()
    time.sleep(1.1)  # the lock's "created" has one-second resolution
    _cli("convert", root)
    assert (root / "fastinfer.lock.json").read_bytes() == lock
    assert "0 problem(s)" in _cli("verify", root, "--public-key", tmp_path / "k.pub")


def test_predict_out_keeps_the_bar_time(tmp_path, goog):
    """Patch 5_predict_out_drops_bar_time.patch: the predictions file carries the bars' time column
    as `features build` does, so rows join back to their bars by (symbol, time)."""
    root = testing.write_market_run(tmp_path, goog.iloc[:800], ["ridge"], horizons=(5,))
    bars = pd.concat(
        [goog.iloc[800:900].rename_axis("date").reset_index().assign(symbol=s) for s in ("A", "B")],
        ignore_index=True,
    )
    bars.to_parquet(tmp_path / "bars.parquet", index=False)
    out = tmp_path / "p.parquet"
    written = _predict_out(root, tmp_path / "bars.parquet", out)
    assert (written["date"].to_numpy() == bars["date"].to_numpy()).all()
    assert (written["symbol"].to_numpy() == bars["symbol"].to_numpy()).all()


def test_convert_table_names_every_model_whole_off_a_terminal(tmp_path):
    """Patch 6_convert_table_cuts_names.patch: piped (80 columns), the parity table prints target
    names whole (fwd_ret_10d is not fwd_ret_1…) and a scoped model's symbol."""
    X, targets = testing.synthetic_features(n_rows=300, n_features=8)
    root = testing.write_training_run(
        tmp_path, X, {"fwd_ret_1d": targets["fwd_ret_5m"], "fwd_ret_10d": targets["fwd_ret_15m"]}, ["ridge"]
    )
    scoped = root / "targets" / "fwd_ret_1d" / "models" / "view=CROSS_SECTIONAL" / "symbol=AAPL"
    scoped.mkdir()
    shutil.copytree(scoped.parent / "family=ridge", scoped / "family=ridge")
    output = _cli("convert", root)
    assert "fwd_ret_10d" in output and "fwd_ret_1…" not in output
    assert "symbol=AAPL" in output
