"""``fastinfer features build``: its output equals the live path replayed bar by bar, on several
symbols with gaps; CSV and Parquet; errors are one line and exit code 2."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fastinfer.cli import main
from fastinfer.features import FeatureDefinitions, StreamingFeatures

from ._hardening import hostile
from .test_feature_vocabulary import OHLCV, assert_close, walk

DEFINITIONS = """
external: [spread]
features:
  gap: open / lag(close, 1) - 1
  spread_z: rolling_zscore(spread, 10)
  vol_5d: rolling_std(log_return(close, 1), 5d)
"""
NAMES = ["gap", "spread_z", "vol_5d", "rsi_14", "bb_pct_20_2", "adx_7", "ret_1d"]


def long_bars(T: int = 400) -> pd.DataFrame:
    """Three symbols' daily bars interleaved by time, rows missing (absent) and fields missing (NaN)."""
    rng = np.random.default_rng(9)
    frames = []
    for j, sym in enumerate(("AAA", "BBB", "CCC")):
        df = walk(T, 20 + j, scale=10.0 ** (j + 1)).assign(
            date=pd.date_range("2020-01-01", periods=T, freq="D"), symbol=sym, spread=rng.uniform(0, 1, T)
        )
        for col in (*OHLCV, "spread"):
            df.loc[rng.random(T) < 0.03, col] = np.nan
        frames.append(df[rng.random(T) > 0.05])  # absent rows
    return pd.concat(frames).sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


def replay_live(bars: pd.DataFrame, defs: FeatureDefinitions) -> np.ndarray:
    """Each row's features as the live path gives them: bar by bar in time order, every symbol
    in one update (a symbol with no row at that time gets a missing bar)."""
    symbols = sorted(bars["symbol"].unique())
    live = StreamingFeatures(symbols, NAMES, definitions=defs, interval_minutes=1440, dtype=np.float64)
    out = np.full((len(bars), len(NAMES)), np.nan)
    for _, rows in bars.groupby("date", sort=True):
        at = {s: i for i, s in enumerate(symbols)}
        fields = {k: np.full(len(symbols), np.nan) for k in (*OHLCV, "spread")}
        for k in fields:
            fields[k][[at[s] for s in rows["symbol"]]] = rows[k].to_numpy()
        live.update(*(fields[k] for k in OHLCV), external={"spread": fields["spread"]})
        out[rows.index] = live.out[[at[s] for s in rows["symbol"]]]
    return out


@pytest.mark.parametrize("fmt", [".csv", ".parquet"])
def test_build_equals_the_incremental_path_replayed_bar_by_bar(tmp_path, fmt):
    bars = long_bars()
    src, defs_path, out = tmp_path / f"bars{fmt}", tmp_path / "features.yaml", tmp_path / f"features{fmt}"
    bars.to_csv(src, index=False) if fmt == ".csv" else bars.to_parquet(src, index=False)
    defs_path.write_text(DEFINITIONS)
    args = ["build", "--definitions", str(defs_path), str(src), "-o", str(out), "--symbol-column", "symbol"]
    args += ["--interval", "1440", "--progress", *[f"--feature={n}" for n in NAMES]]
    result = CliRunner().invoke(main, ["features", *args])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(bars)} rows × {len(NAMES)} features" in result.output
    got = pd.read_csv(out) if fmt == ".csv" else pd.read_parquet(out)
    assert list(got.columns) == ["date", "symbol", *NAMES]
    assert (got["symbol"].to_numpy() == bars["symbol"].to_numpy()).all()
    want = replay_live(bars, FeatureDefinitions.loads(DEFINITIONS))
    for k, name in enumerate(NAMES):
        for sym in ("AAA", "BBB", "CCC"):
            rows = (bars["symbol"] == sym).to_numpy()
            assert_close(got[name].to_numpy()[rows], want[rows, k], name, f"symbol {sym}")
    assert np.isfinite(got[NAMES].to_numpy()[-30:]).mean() > 0.9


def test_build_defaults_to_every_definition(tmp_path):
    bars = long_bars(60)
    one = bars[bars["symbol"] == "AAA"].drop(columns="symbol")
    src, defs_path, out = tmp_path / "one.csv", tmp_path / "f.yaml", tmp_path / "out.csv"
    one.to_csv(src, index=False)
    defs_path.write_text(DEFINITIONS)
    result = CliRunner().invoke(main, ["features", "build", "--definitions", str(defs_path), str(src), "-o", str(out)])
    assert result.exit_code == 2 and "needs the bar interval" in result.output  # vol_5d
    result = CliRunner().invoke(
        main, ["features", "build", "--definitions", str(defs_path), str(src), "-o", str(out), "--interval", "1440"]
    )
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(out).columns) == ["date", "gap", "spread_z", "vol_5d"]


BUILD_ERRORS = {
    # case: (change to the bars, extra arguments, message)
    "missing bars file": (None, ["--bars", "nope.csv"], "nope.csv: no such file"),
    "unknown feature": (None, ["--feature", "zzz"], "feature 'zzz': unknown feature"),
    "no features": (None, ["--no-definitions"], "nothing to build"),
    "no symbol column": (None, ["--symbol-column", "ticker"], "no symbol column 'ticker'"),
    "bar out of order": (lambda b: b.assign(date=b["date"].iloc[::-1].to_numpy()), [], r"symbol 'AAA'.* earlier"),
    "missing external": (lambda b: b.drop(columns="spread"), [], "missing external column 'spread'"),
    "text prices": (lambda b: b.assign(close="x"), [], "column 'close' is not numeric"),
    "symbol missing": (lambda b: b.assign(symbol=None), [], "'symbol' is missing at row 0"),
}


@pytest.mark.parametrize("case", list(BUILD_ERRORS))
def test_build_errors_are_one_line_and_exit_2(tmp_path, case):
    hostile("features build", case)
    change, extra, match = BUILD_ERRORS[case]
    bars = long_bars(50) if change is None else change(long_bars(50))
    src, defs_path, out = tmp_path / "bars.csv", tmp_path / "f.yaml", tmp_path / "o.csv"
    bars.to_csv(src, index=False)
    defs_path.write_text(DEFINITIONS)
    options = {"--definitions": str(defs_path), "--interval": "1440", "--symbol-column": "symbol", "--bars": str(src)}
    if extra[:1] == ["--no-definitions"]:
        del options["--definitions"]
    elif extra:
        options[extra[0]] = str(tmp_path / extra[1]) if extra[0] == "--bars" else extra[1]
    bars_path = options.pop("--bars")
    args = ["build", bars_path, "-o", str(out), *[x for kv in options.items() for x in kv]]
    result = CliRunner().invoke(main, ["features", *args])
    assert result.exit_code == 2, result.output
    assert re.search(match, result.output), result.output
    assert not out.exists()


def test_explain_and_vocabulary(tmp_path):
    defs_path = tmp_path / "f.yaml"
    defs_path.write_text(DEFINITIONS)
    runner = CliRunner()
    result = runner.invoke(
        main, ["features", "explain", "ret_1d", "gap", "vol_10d", "--definitions", str(defs_path), "--interval", "1440"]
    )
    assert result.exit_code == 0, result.output
    assert "ret_1d: ret_{n} with n=1d = pct_change(close, 1); warm-up 1 bars" in result.output
    assert "gap = open / lag(close, 1) - 1 (definition)" in result.output
    result = runner.invoke(main, ["features", "vocabulary"])
    assert (
        result.exit_code == 0 and "bb_pct_{n}_{k}" in result.output and "rolling_zscore(x, n, ddof=1)" in result.output
    )


def _tiny_run(out_dir, run_id: str, timestamp: str):
    """A real TRAINING run (one small ridge model) at ``out_dir/run_id/timestamp``."""
    from fastinfer import testing

    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.standard_normal((80, 3)), columns=["gap", "rsi_14", "vol_5d"])
    y = X.to_numpy() @ np.array([0.5, -0.2, 0.1])
    return testing.write_training_run(out_dir, X, {"fwd_ret_1d": y}, ["ridge"], run_id=run_id, timestamp=timestamp)


def test_build_records_the_definitions_in_the_training_run(tmp_path):
    """--record-in writes the definitions (with the interval the durations were resolved with)
    into the run where the live path reads them: a run_id folder means its newest timestamp
    folder, as ModelLoader reads it; a folder that is not a TRAINING run fails before any work."""
    from fastinfer.features import DEFINITIONS_FILE
    from fastinfer.loader import ModelLoader

    bars = long_bars(60)
    src, defs_path, out = tmp_path / "b.csv", tmp_path / "f.yaml", tmp_path / "o.csv"
    bars.to_csv(src, index=False)
    defs_path.write_text(DEFINITIONS)
    args = ["features", "build", str(src), "-o", str(out), "--definitions", str(defs_path)]
    args += ["--symbol-column", "symbol", "--interval", "1440", "--record-in"]
    runs = tmp_path / "RESULTS" / "runs"
    bare, manifest_only = runs / "bare", runs / "manifest_only" / "20260101T000000"
    bare.mkdir(parents=True)
    manifest_only.mkdir(parents=True)
    (manifest_only / "manifest.json").write_text('{"target_index": {}}')
    for case, folder, match in (
        ("no such folder", runs / "nope", "run root does not exist"),
        ("bare folder", bare, "not a TRAINING run"),
        ("run folder without models", manifest_only.parent, "not a TRAINING run"),
    ):
        hostile("features build", f"--record-in: {case}")
        result = CliRunner().invoke(main, [*args, str(folder)])
        assert result.exit_code == 2 and match in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()
        assert not (folder / DEFINITIONS_FILE).exists()
    older = _tiny_run(runs, "my_run", "20260101T000000")
    newer = _tiny_run(runs, "my_run", "20260102T000000")
    result = CliRunner().invoke(main, [*args, str(runs / "my_run")])
    assert result.exit_code == 0, result.output
    assert f"recorded the definitions in {newer.resolve() / DEFINITIONS_FILE}" in result.output
    assert not (older / DEFINITIONS_FILE).exists() and not (runs / "my_run" / DEFINITIONS_FILE).exists()
    recorded = ModelLoader(runs / "my_run").definitions()  # what the live path reads
    assert recorded.features == FeatureDefinitions.loads(DEFINITIONS).features
    assert recorded.external == ("spread",) and recorded.interval_minutes == 1440
    result = CliRunner().invoke(main, [*args, str(older)])  # a timestamp folder is taken as it is
    assert result.exit_code == 0, result.output
    assert ModelLoader(older).definitions() == recorded


def test_a_feature_named_like_a_key_column_is_refused_before_the_work(tmp_path, monkeypatch):
    from fastinfer.features import frames

    hostile("features build", "feature named like the time column")
    computed, real = [], frames.frame_features
    monkeypatch.setattr(frames, "frame_features", lambda *a, **k: computed.append(a) or real(*a, **k))
    bars = long_bars(40)
    src, defs_path, out = tmp_path / "b.csv", tmp_path / "f.yaml", tmp_path / "o.csv"
    bars.to_csv(src, index=False)
    defs_path.write_text("features:\n  date: close / open\n  gap: open / lag(close, 1) - 1\n")
    args = ["features", "build", str(src), "-o", str(out), "--definitions", str(defs_path), "--symbol-column", "symbol"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "feature(s) ['date'] have the name of a key column" in result.output
    assert not computed and not out.exists()


def test_explain_resolves_durations_with_the_interval_the_definitions_fix(tmp_path):
    """explain reads interval_minutes / bars_per_day from the definitions as compile_features does."""
    from fastinfer.features import compile_features, explain

    defs_path = tmp_path / "d.yaml"
    defs_path.write_text("interval_minutes: 5\nbars_per_day: 78\nfeatures:\n  gap: open / lag(close, 1) - 1\n")
    defs = FeatureDefinitions.read(defs_path)
    assert explain("ret_1d", defs) == explain("ret_1d", defs, interval_minutes=5, bars_per_day=78)
    assert explain("ret_1d", defs) == "ret_1d: ret_{n} with n=1d = pct_change(close, 78)"
    assert compile_features(["ret_1d"], defs).warmups == (78,)
    result = CliRunner().invoke(main, ["features", "explain", "ret_1d", "ret_1h", "--definitions", str(defs_path)])
    assert result.exit_code == 0, result.output
    assert "ret_1d: ret_{n} with n=1d = pct_change(close, 78); warm-up 78 bars" in result.output
    assert "ret_1h: ret_{n} with n=1h = pct_change(close, 12); warm-up 12 bars" in result.output
    hostile("features explain", "interval disagreeing with the definitions")
    result = CliRunner().invoke(
        main, ["features", "explain", "ret_1d", "--definitions", str(defs_path), "--interval", "15"]
    )
    assert result.exit_code == 2 and "interval_minutes is 15 here but the definitions fix it at 5" in result.output
