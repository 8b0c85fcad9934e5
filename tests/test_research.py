"""The research path (issue #17): every model of a run over a whole history, equal to the live path."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from fastinfer import research
from fastinfer.config import Settings
from fastinfer.errors import FeatureBuildError, InferenceError, ModelLoadError
from fastinfer.predictor import LivePredictor
from fastinfer.research import RunPredictor, backtest

from ._hardening import hostile

DAILY = 1440.0
SYMBOLS = ["A", "B", "C"]
TREES = {"lightgbm", "xgboost"}  # served by the forest kernel or ORT's tree ensemble: bit-identical either way


@pytest.fixture(scope="module")
def bars(goog):
    """Three symbols, 160 bars each, interleaved by time; B misses a stretch, C has one nonsense bar."""
    base = goog.iloc[900:1060].rename_axis("Date").reset_index()
    frames = []
    for k, sym in enumerate(SYMBOLS):
        f = base[["Date", "Open", "High", "Low", "Close", "Volume"]].copy()
        f[["Open", "High", "Low", "Close"]] *= 1 + 0.1 * k
        f["symbol"] = sym
        frames.append(f)
    frames[1].loc[70:74, ["Open", "High", "Low", "Close", "Volume"]] = np.nan  # five missing bars
    frames[2].loc[100, "Close"] = frames[2].loc[100, "High"] * 2  # close above high: refused, counted
    long = pd.concat(frames).sort_values(["Date", "symbol"], kind="stable").reset_index(drop=True)
    return long


def _live(market_run, bars) -> pd.DataFrame:
    live = LivePredictor(market_run, SYMBOLS, DAILY)
    rows = []
    for _, day in bars.groupby("Date", sort=True):
        day = day.set_index("symbol").reindex(SYMBOLS)
        out = live.on_bar(*(day[c].to_numpy() for c in ("Open", "High", "Low", "Close", "Volume")))
        rows.extend((day.loc[s].name, i, out[i].copy()) for i, s in enumerate(SYMBOLS))
    assert live.rejected_bars.tolist() == [0, 0, 1]
    table = {(date, sym): values for (sym, _, values), date in zip(rows, np.repeat(sorted(bars["Date"].unique()), 3))}
    ordered = np.stack([table[(d, s)] for d, s in zip(bars["Date"], bars["symbol"])])
    return pd.DataFrame(ordered, index=bars.index, columns=pd.MultiIndex.from_tuples(live.columns))


def test_backtest_equals_the_live_replay_on_several_symbols_with_gaps(market_run, bars):
    batch = backtest(market_run, bars, interval_minutes=DAILY, symbol_column="symbol")
    live = _live(market_run, bars)
    assert list(batch.columns) == list(live.columns) and batch.index.equals(bars.index)
    assert np.isnan(batch.to_numpy()).any() and np.isfinite(batch.to_numpy()).any()  # warm-up and predictions
    for column in batch.columns:
        got, want = batch[column].to_numpy(), live[column].to_numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=str(column))
        if column[1] in TREES:
            np.testing.assert_array_equal(got, want, err_msg=str(column))
        else:  # one ORT session at another batch size: GEMM blocking moves the last float32 bit
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, err_msg=str(column))
    missing = bars.index[(bars["symbol"] == "B") & bars["Close"].isna()]
    assert np.isnan(batch.loc[missing].to_numpy()).all()


def test_predict_on_a_feature_frame_equals_each_model_and_chunking_changes_nothing(market_run, bars):
    runner = RunPredictor(market_run, interval_minutes=DAILY)
    features, present = runner.bar_features(bars, symbol_column="symbol")
    frame = pd.DataFrame(features, columns=runner.feature_order).assign(symbol=bars["symbol"].to_numpy())
    whole = runner.predict(frame, symbol_column="symbol", present=present)
    chunked = RunPredictor(market_run, interval_minutes=DAILY, chunk_rows=7).predict(
        frame, symbol_column="symbol", present=present
    )
    pd.testing.assert_frame_equal(whole, chunked)
    ok = present & np.isfinite(features).all(axis=1)
    for m in runner.models:
        if m.family.sequential:
            continue
        x = frame.loc[ok, list(m.feature_order)]
        want = np.asarray(m.predict(x), dtype=np.float32).reshape(int(ok.sum()), -1)
        got = whole.loc[ok, (m.target, m.family.name)].to_numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"{m.target}/{m.family.name}")


def test_bad_frames_are_typed_errors_naming_the_column(market_run):
    runner = RunPredictor(market_run, interval_minutes=DAILY)
    good = pd.DataFrame(np.ones((3, len(runner.feature_order))), columns=runner.feature_order)
    with pytest.raises(InferenceError, match=f"missing feature column.*{runner.feature_order[0]}"):
        runner.predict(good.drop(columns=runner.feature_order[0]))
    with pytest.raises(InferenceError, match=f"column '{runner.feature_order[1]}' is object"):
        runner.predict(good.astype({runner.feature_order[1]: object}).assign(**{runner.feature_order[1]: "x"}))
    with pytest.raises(InferenceError, match="present"):
        runner.predict(good, present=np.ones(2, dtype=bool))


def _out_of_order(bars: pd.DataFrame) -> pd.DataFrame:
    """Symbol B's 10th and 11th bars swapped (every other symbol's rows untouched)."""
    rows = bars.index[bars["symbol"] == "B"][[10, 11]]
    bad = bars.copy()
    bad.loc[rows, "Date"] = bad.loc[rows[::-1], "Date"].to_numpy()
    return bad


def _duplicated(bars: pd.DataFrame) -> pd.DataFrame:
    """Symbol B's 20th bar sent twice (the copy right after it)."""
    row = bars.index[bars["symbol"] == "B"][20]
    return pd.concat([bars.loc[:row], bars.loc[[row]], bars.loc[row + 1 :]]).reset_index(drop=True)


@pytest.mark.parametrize(
    "damage, match",
    [(_out_of_order, "earlier than the bar before it"), (_duplicated, "duplicated")],
    ids=["out of order", "duplicated"],
)
def test_a_symbols_bars_out_of_time_order_are_refused_naming_the_symbol(market_run, bars, damage, match):
    """Rows of several symbols interleaved: each symbol's own bars must be oldest first, each once
    (as ``features build`` checks them); else every indicator would silently take a bar twice or
    in the wrong order."""
    hostile("OHLCV frame", f"one symbol's bars {damage.__name__.strip('_').replace('_', ' ')} in a long frame")
    with pytest.raises(FeatureBuildError, match=f"bars, symbol 'B': column 'Date' at row .* is {match}"):
        backtest(market_run, damage(bars), interval_minutes=DAILY, symbol_column="symbol")


def test_a_row_without_a_symbol_is_refused_naming_the_row(market_run, bars):
    hostile("OHLCV frame", "a row whose symbol is missing in a long frame")
    bad = bars.copy()
    bad.loc[7, "symbol"] = None
    with pytest.raises(FeatureBuildError, match="bars: 'symbol' is missing at row 7"):
        backtest(market_run, bad, interval_minutes=DAILY, symbol_column="symbol")


def test_a_model_failing_mid_run_stops_the_progress_bar(market_run, bars, monkeypatch):
    """The Rich progress bar (refresh thread, hidden cursor) ends with the run, also when a model raises."""
    monkeypatch.setattr(research, "PROGRESS_ROWS", 1)  # these few rows get the bar a long run gets
    runner = RunPredictor(market_run, interval_minutes=DAILY)

    def boom(X):
        raise InferenceError("the native library failed")

    monkeypatch.setattr(runner.models[-1], "run", boom)
    before = set(threading.enumerate())
    with pytest.raises(InferenceError, match="the native library failed"):
        runner.predict_bars(bars, symbol_column="symbol")
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []


def test_research_and_live_paths_leave_out_models_by_the_same_rule(market_run, caplog):
    """One rule for both: a model trained on another interval is left out with a warning and the
    reason in ``unavailable`` (``on_interval_mismatch: skip``); none left is an error."""
    settings = replace(Settings(), predictor=replace(Settings().predictor, on_interval_mismatch="skip"))
    for build in (
        lambda: RunPredictor(market_run, interval_minutes=60.0, settings=settings),
        lambda: LivePredictor(market_run, ["A"], 60.0, settings=settings),
    ):
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="fastinfer.predictor"),
            pytest.raises(ModelLoadError, match="no usable"),
        ):
            build()
        left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
        assert len(left_out) == 15 and all("trained on 1440-minute bars, data is 60-minute" in m for m in left_out)
