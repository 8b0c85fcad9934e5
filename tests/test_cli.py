"""The CLI through its real entry point (click's runner): outputs and exit codes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from fastinfer.cli import main
from fastinfer.lock import read_lock

from .conftest import TARGET


@pytest.fixture
def runner():
    return CliRunner()


def test_convert_and_verify(runner, run_copy):
    result = runner.invoke(main, ["convert", str(run_copy), "--families", "lightgbm,ridge,ngboost"])
    assert result.exit_code == 0, result.output
    assert "3/3 models served from ONNX" in result.output
    assert sorted(e.family for e in read_lock(run_copy).entries) == ["lightgbm", "ngboost", "ridge"]
    result = runner.invoke(main, ["verify", str(run_copy)])
    assert result.exit_code == 0 and "0 problem(s)" in result.output
    graph = run_copy / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / "family=ridge" / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    result = runner.invoke(main, ["verify", str(run_copy)])
    assert result.exit_code == 1 and f"FAIL {TARGET}/ridge: mismatch: lock graph" in result.output


def test_missing_run_root_is_one_line(runner, tmp_path):
    result = runner.invoke(main, ["convert", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_predict_from_csv(runner, market_run, goog, tmp_path):
    csv = tmp_path / "goog.csv"
    goog.iloc[1000:1120].to_csv(csv)
    out = tmp_path / "pred.csv"
    result = runner.invoke(
        main, ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "1440", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["bars"] == 120 and set(report["predictions"]) == {"1d", "5d", "10d"}
    assert all(v is not None for h in report["predictions"].values() for v in h.values())  # warmed up: no NaN
    assert out.read_text().count("\n") == 121


def test_predict_interval_mismatch_exit_code(runner, market_run, goog, tmp_path):
    csv = tmp_path / "goog.csv"
    goog.iloc[:100].to_csv(csv)
    result = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "60"])
    assert result.exit_code == 2 and "interval mismatch" in result.output


def _one_line_error(result) -> bool:
    lines = result.output.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output


@pytest.mark.parametrize("command", sorted(main.commands))
def test_help_on_every_command(runner, command):
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0 and result.output.startswith(f"Usage: main {command}")
    summary = (main.commands[command].help or "").split("\n")[0].split()[0]
    assert summary in result.output and "--help" in result.output


@pytest.mark.parametrize("command", ["convert", "verify", "predict"])
def test_missing_run_root_is_one_line_for_every_command(runner, tmp_path, goog, command):
    csv = tmp_path / "bars.csv"
    goog.iloc[:30].to_csv(csv)
    extra = ["--ohlcv", str(csv), "--interval", "1440"] if command == "predict" else []
    result = runner.invoke(main, [command, str(tmp_path / "nope"), *extra])
    assert result.exit_code == 2 and _one_line_error(result), result.output
    assert "nope" in result.output


def test_debug_shows_the_traceback(runner, tmp_path):
    result = runner.invoke(main, ["--debug", "verify", str(tmp_path / "nope")])
    assert result.exit_code != 0 and result.exception is not None  # raised, not turned into one line


def test_predict_missing_ohlcv_file(runner, market_run, tmp_path):
    result = runner.invoke(
        main, ["predict", str(market_run), "--ohlcv", str(tmp_path / "none.csv"), "--interval", "1440"]
    )
    assert result.exit_code == 2 and _one_line_error(result) and "no such file" in result.output


@pytest.mark.parametrize(
    "content,match",
    [
        ("open,high,low,close\n1,2,0.5,1.5\n", "missing column(s) ['volume']"),
        ('open,high\n"1,2\n', "cannot read bars"),
        ("open,high,low,close,volume\n1,2,0.5,x,10\n", "'close' is not numeric"),
        ("", "cannot read bars"),
    ],
)
def test_predict_bad_csv_is_one_line(runner, market_run, tmp_path, content, match):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    result = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "1440"])
    assert result.exit_code == 2 and _one_line_error(result) and match in result.output, result.output


@pytest.mark.parametrize("rename", [str.lower, str.upper])
def test_predict_column_names_in_any_case(runner, market_run, goog, tmp_path, rename):
    bars = goog.iloc[1000:1100]
    original, renamed = tmp_path / "original.csv", tmp_path / "renamed.csv"
    bars.to_csv(original)
    bars.rename(columns=rename).to_csv(renamed)
    outputs = []
    for path in (original, renamed):
        result = runner.invoke(
            main, ["predict", str(market_run), "--ohlcv", str(path), "--interval", "1440", "--symbol", "GOOG"]
        )
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.output))
    assert outputs[0] == outputs[1]
    assert outputs[0]["symbol"] == "GOOG" and outputs[0]["bars"] == 100


def test_predict_prints_null_while_warming_up(runner, market_run, goog, tmp_path):
    csv = tmp_path / "short.csv"
    goog.iloc[:20].to_csv(csv)  # fewer bars than ret_60 needs
    result = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "1440"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)  # strict JSON: no NaN
    assert all(v is None for h in report["predictions"].values() for v in h.values())


def test_predict_from_parquet(runner, market_run, goog, tmp_path):
    path = tmp_path / "goog.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        path.write_bytes(b"PAR1")  # never read: the missing engine is reported first
        result = runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(path), "--interval", "1440"])
        assert result.exit_code == 2 and _one_line_error(result) and "needs pyarrow" in result.output
        return
    goog.iloc[1000:1100].to_parquet(path)
    csv = tmp_path / "goog.csv"
    goog.iloc[1000:1100].to_csv(csv)
    results = [
        runner.invoke(main, ["predict", str(market_run), "--ohlcv", str(p), "--interval", "1440", "--symbol", "G"])
        for p in (path, csv)
    ]
    assert all(r.exit_code == 0 for r in results), [r.output for r in results]
    assert json.loads(results[0].output) == json.loads(results[1].output)


def _two_symbols(goog, tmp_path, damage=None):
    """GOOG and a scaled copy, interleaved by date, as one long CSV with a symbol column."""
    base = goog.iloc[1000:1100].rename_axis("Date").reset_index()
    scaled = base.assign(**{c: base[c] * 1.1 for c in ("Open", "High", "Low", "Close")})
    long = pd.concat([base.assign(symbol="G"), scaled.assign(symbol="H")])
    long = long.sort_values(["Date", "symbol"], kind="stable").reset_index(drop=True)
    csv = tmp_path / "long.csv"
    (damage(long) if damage else long).to_csv(csv, index=False)
    return csv


def _swap_two_dates_of_g(long):
    """G's 2nd and 3rd bars (rows 2 and 4) swapped: G's rows leave time order, H's keep it."""
    dates = long["Date"].to_numpy().copy()
    dates[[2, 4]] = dates[[4, 2]]
    return long.assign(Date=dates)


def test_predict_several_symbols_reports_each_symbols_last_bar(runner, market_run, goog, tmp_path):
    csv, out = _two_symbols(goog, tmp_path), tmp_path / "pred.csv"
    args = ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "1440", "--symbol-column", "symbol"]
    result = runner.invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["bars"] == 200 and list(report["symbols"]) == ["G", "H"]
    table = pd.read_csv(out)
    for symbol, view in report["symbols"].items():
        last = table[table["symbol"] == symbol].iloc[-1]
        assert view["5d"]["ridge"] is not None  # warmed up
        # the CSV holds the float32 as text: equal to float32 precision (~6e-8 relative), 1e-6 leaves room
        assert view["5d"]["ridge"] == pytest.approx(last["fwd_ret_5d/ridge/prediction"], rel=1e-6)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda f: f.assign(symbol=f["symbol"].mask(f.index == 9)), "'symbol' is missing at row 9"),
        (_swap_two_dates_of_g, "symbol 'G': column 'Date' at row 2 (2008-08-11"),
    ],
    ids=["row without a symbol", "one symbol out of order"],
)
def test_predict_several_symbols_refuses_a_row_it_cannot_place(runner, market_run, goog, tmp_path, damage, match):
    """A row whose symbol is missing is no bar of any symbol, and one symbol's bars must be in time
    order: a one-line error naming the row (neither silently left out of the report nor misread)."""
    csv = _two_symbols(goog, tmp_path, damage)
    args = ["predict", str(market_run), "--ohlcv", str(csv), "--interval", "1440", "--symbol-column", "symbol"]
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and _one_line_error(result) and match in result.output, result.output


# ---------------------------------------------------------------- fastinfer bench


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One tiny real benchmark group (features, one symbol: fastinfer vs pandas vs TA-Lib), run through the CLI."""
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--out",
            str(out),
            "-k",
            "features_one_symbol",
            "--",
            "--benchmark-max-time=0.02",
            "--benchmark-min-rounds=3",
            "-q",
        ],
    )
    return result, out


def test_bench_summarises_the_ratios_of_the_run(bench_run):
    from fastinfer.bench import read_ratio_rows, short_name

    result, out = bench_run
    assert result.exit_code == 0, result.output
    rows = read_ratio_rows(out / "ratios.json")
    assert {short_name(r.subject) for r in rows} == {"fastinfer"}
    assert {short_name(r.baseline) for r in rows} == {"pandas", "talib"}
    # The ratios come from the same medians pytest-benchmark wrote.
    medians = {b["name"]: b["stats"]["median"] for b in json.loads((out / "benchmarks.json").read_text())["benchmarks"]}
    for r in rows:
        assert r.subject_median_s == medians[r.subject] and r.baseline_median_s == medians[r.baseline]
    summary = (out / "summary.md").read_text()
    assert summary.count("| features, one symbol per bar (latency) |") == 2
    for r in rows:
        assert f"{r.ratio:,.1f}×" in summary
    assert summary in result.output


def test_bench_plot_is_a_real_png(bench_run):
    import matplotlib.image
    import numpy as np

    _, out = bench_run
    png = out / "ratios.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(png)
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20


def test_bench_no_match_is_an_error(runner, tmp_path):
    result = runner.invoke(main, ["bench", "--out", str(tmp_path), "-k", "no_such_benchmark_anywhere"])
    assert result.exit_code == 2 and "no benchmark matched" in result.output


@pytest.mark.parametrize(
    "group,baseline,target",
    [
        ("one-symbol-bar", "seed path (pandas + native predict)", ("P1a", 1000.0)),
        ("one-symbol-bar-vs-peer", "TA-Lib + one ORT session per model", ("P1b", 3.0)),
        ("P2 lightgbm 500 trees, 1 row", "onnxruntime", ("P2", 3.0)),
        ("P2 xgboost 500 trees, 512 rows", "onnxruntime", ("P2", 3.0)),
        ("P2 xgboost 500 trees, 512 rows", "tl2cgen compiled C", ("P2", 1.0)),
        ("P2 xgboost 500 trees, 512 rows", "native", None),
        ("P1c one-symbol bar vs the sum of its parts", "sum of the parts", ("P1c", 0.8)),
        ("P3 500 symbols per bar", "TA-Lib + ORT sessions looped over the symbols", ("P3", 50.0)),
        ("P3 500-symbol bar vs the sum of its parts", "sum of the parts", ("P3", 0.8)),
        ("P6 200-feature run, one symbol", "TA-Lib + pandas features + one ORT session per model", ("P6", 3.0)),
        ("P7 engine.predict xgboost, 512 rows", "the library's own predict", ("P7", 1.0)),
        ("P7 engine.predict xgboost, 512 rows", "one ONNX Runtime session, 2 threads", ("P7", 2.0)),
        ("P7 engine.predict xgboost, 64 rows", "one ONNX Runtime session, 2 threads", None),
        ("T1 tail, gc on: on_bar p99.9 against 5 × p50", "5 × on_bar p50", ("T1", 1.0)),
        ("P4 features, 500 symbols per bar", "test_features_500_symbols[pandas]", ("P4", 1000.0)),
        ("P4 features, 500 symbols per bar", "test_features_500_symbols[talib]", ("P4", 50.0)),
        ("fused-vs-sessions", "per-model", None),
    ],
)
def test_bench_targets_map_to_targets_md(group, baseline, target):
    from fastinfer.bench import target_for

    found = target_for(group, baseline)
    assert (None if found is None else (found.id, found.minimum)) == target


def test_update_readme_between_markers(tmp_path):
    from pathlib import Path

    from fastinfer.bench import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n{README_START}\nrun `fastinfer bench --readme`\n{README_END}\n\n## After\n")
    update_readme(readme, "| a | b |\n")
    update_readme(readme, "| c | d |\n")  # a second run replaces, never appends
    assert readme.read_text() == f"# x\n\n## Results\n{README_START}\n| c | d |\n{README_END}\n\n## After\n"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="bench:start"):
        update_readme(readme, "| a |\n")
    project_readme = Path(__file__).resolve().parent.parent / "README.md"
    text = project_readme.read_text()
    assert text.count(README_START) == 1 and text.index(README_START) < text.index(README_END)


# ---------------------------------------------------------------- keys and --config


@pytest.mark.parametrize("command", ["keygen", "sign"])
def test_unset_password_variable_is_a_usage_error(runner, compiled_copy, tmp_path, monkeypatch, command):
    monkeypatch.delenv("FASTINFER_TEST_KEY_PASSWORD", raising=False)
    ok = runner.invoke(main, ["keygen", str(tmp_path / "k")])  # control: no password asked for
    assert ok.exit_code == 0, ok.output
    args = [str(tmp_path / "k2")] if command == "keygen" else [str(compiled_copy), "--key", str(tmp_path / "k.key")]
    result = runner.invoke(main, [command, *args, "--password-env", "FASTINFER_TEST_KEY_PASSWORD"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "FASTINFER_TEST_KEY_PASSWORD" in result.output and "is not set" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "k2.key").exists()
    monkeypatch.setenv("FASTINFER_TEST_KEY_PASSWORD", "s3cret")  # control: set, it is used
    assert (
        runner.invoke(main, ["keygen", str(tmp_path / "k3"), "--password-env", "FASTINFER_TEST_KEY_PASSWORD"]).exit_code
        == 0
    )
    assert b"ENCRYPTED" in (tmp_path / "k3.key").read_bytes()


@pytest.fixture
def signed_market(tmp_path, market_run):
    """A signed copy of market_run and a config that turns signature checking on."""
    import shutil

    from fastinfer import signing

    root = tmp_path / "run" / market_run.name
    shutil.copytree(market_run, root)
    private, _public = signing.generate_keypair(tmp_path / "keys" / "release")
    signing.sign_run(root, private)
    config = tmp_path / "keys" / "live.yaml"
    config.write_text("models:\n  verify_signature: true\n  trusted_public_key: release.pub\n")
    return root, config


def test_config_turns_on_signature_checking_for_predict_and_verify(runner, signed_market, goog, tmp_path):
    root, config = signed_market
    csv = tmp_path / "goog.csv"
    goog.iloc[1000:1060].to_csv(csv)
    predict = ["predict", str(root), "--ohlcv", str(csv), "--interval", "1440"]
    ok = runner.invoke(main, [*predict, "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output[ok.output.index("{") :])["bars"] == 60
    ok = runner.invoke(main, ["verify", str(root), "--config", str(config)])
    assert ok.exit_code == 0 and "0 problem(s)" in ok.output, ok.output
    meta = root / "targets" / "fwd_ret_1d" / "models" / "view=CROSS_SECTIONAL" / "family=ridge" / "model_meta.json"
    meta.write_text(meta.read_text().replace('"metrics"', '"note": "edited", "metrics"', 1))
    for args in (predict, ["verify", str(root)]):
        bad = runner.invoke(main, [*args, "--config", str(config)])
        assert bad.exit_code != 0 and _one_line_error(bad), bad.output
        assert "signed file changed" in bad.output and "model_meta.json" in bad.output
    assert runner.invoke(main, predict).exit_code == 0  # control: the packaged config does not check signatures


class _ConstantModel:
    """A user's own estimator class: served natively, never converted."""

    def predict(self, X):
        import numpy as np

        return np.zeros(len(X))


def test_convert_prints_every_non_onnx_reason_whole(runner, run_copy):
    import joblib

    from fastinfer.integrity import sha256_file

    folder = run_copy / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / "family=ridge"
    joblib.dump(_ConstantModel(), folder / "model.joblib")
    meta = json.loads((folder / "model_meta.json").read_text())
    meta["model_checksum"] = sha256_file(folder / "model.joblib")
    (folder / "model_meta.json").write_text(json.dumps(meta))
    result = runner.invoke(main, ["convert", str(run_copy), "--families", "ridge,lasso"], terminal_width=80)
    assert result.exit_code == 0, result.output
    entry = next(e for e in read_lock(run_copy).entries if e.family == "ridge")
    assert entry.status == "native" and len(entry.reason) > 100
    assert f"{TARGET}/ridge (native): {entry.reason}" in " ".join(result.output.split("\n"))


def test_readme_vocabulary_table_is_the_vocabulary():
    """The README's table is generated from the vocabulary: a name added there must be added here."""
    from pathlib import Path

    from fastinfer.features import vocabulary_table

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("<!-- vocabulary:start -->\n```\n", 1)[1].split("\n```\n<!-- vocabulary:end -->", 1)[0]
    assert block == vocabulary_table().rstrip()
