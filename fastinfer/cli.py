"""Command line: ``fastinfer convert | verify | predict | demo``.

Errors are one clear line and a non-zero exit code; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from .errors import FastInferError


class _Group(click.Group):
    """Turns fastinfer's own errors (and unreadable input files) into one line, exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (FastInferError, OSError, ValueError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """fastinfer: verified, fast inference for TRAINING runs."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@main.command()
@click.argument("run_root", type=click.Path(path_type=Path))
@click.option("--targets", help="Comma-separated targets (default: all).")
@click.option("--families", help="Comma-separated families (default: all).")
def convert(run_root: Path, targets: str | None, families: str | None) -> None:
    """Convert every model of RUN_ROOT to a parity-checked ONNX graph and write fastinfer.lock.json."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .compiler import compile_run
    from .loader import ModelLoader

    loader = ModelLoader(run_root, prefer_onnx=False)
    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("converting", total=len(loader.locations()))

        def step(event):
            progress.update(task, completed=event.done, total=event.total,
                            description=f"{event.entry.target}/{event.entry.family}")

        lock = compile_run(loader.run_root, _csv(targets), _csv(families), loader=loader, progress=step)
    table = Table(title=f"fastinfer.lock.json — {loader.run_root}")
    for col in ("target", "family", "status", "max rel err", "tolerance", "seconds", "reason"):
        table.add_column(col)
    for e in lock.entries:
        err = f"{e.parity['max_rel']:.2e}" if e.parity else "-"
        tol = f"{e.parity['tolerance']:.0e}" if e.parity else "-"
        table.add_row(e.target, e.family, e.status, err, tol, f"{e.convert_seconds:.2f}", e.reason[:80])
    console.print(table)
    served = sum(e.status == "onnx" for e in lock.entries)
    console.print(f"{served}/{len(lock.entries)} models served from ONNX")


@main.command()
@click.argument("run_root", type=click.Path(path_type=Path))
def verify(run_root: Path) -> None:
    """Re-check every checksum of RUN_ROOT (meta, lock, graphs); exit 1 on any mismatch."""
    from .artifacts import read_spec, resolve_run_root
    from .integrity import sha256_file
    from .lock import read_lock
    from .loader import ModelLoader

    root = resolve_run_root(run_root)
    loader = ModelLoader(root, prefer_onnx=False)
    lock = read_lock(root)
    problems = 0
    for loc in loader.locations():
        name = f"{loc.target}/{loc.family.name}"
        try:
            spec = read_spec(loc, root)
        except FastInferError as exc:
            click.echo(f"FAIL {name}: {exc}")
            problems += 1
            continue
        actual = sha256_file(spec.model_path)
        checks = [("model_checksum", spec.model_checksum == actual if spec.model_checksum else None)]
        entry = lock.find(loc.key) if lock else None
        if entry is not None:
            checks.append(("lock native", entry.native_sha256 == actual))
            if entry.status == "onnx":
                graph = root / entry.onnx_file
                checks.append(("lock graph", graph.is_file() and sha256_file(graph) == entry.onnx_sha256))
        bad = [what for what, ok in checks if ok is False]
        unsigned = [what for what, ok in checks if ok is None]
        problems += bool(bad)
        state = "FAIL" if bad else "ok  "
        detail = f"mismatch: {', '.join(bad)}" if bad else ("no model_checksum" if unsigned else "verified")
        click.echo(f"{state} {name}: {detail}" + ("" if entry else " (not in lock)"))
    click.echo(f"{problems} problem(s)")
    sys.exit(1 if problems else 0)


@main.command()
@click.argument("run_root", type=click.Path(path_type=Path))
@click.option("--ohlcv", "ohlcv_path", required=True, type=click.Path(path_type=Path),
              help="CSV or Parquet of bars (open, high, low, close, volume; any case), oldest first.")
@click.option("--interval", "interval_minutes", type=float, required=True, help="Bar interval in minutes.")
@click.option("--symbol", default=None, help="Symbol name (default: the file name).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write every bar's predictions as CSV.")
def predict(run_root: Path, ohlcv_path: Path, interval_minutes: float, symbol: str | None, out: Path | None) -> None:
    """Replay the bars of an OHLCV file through the live predictor; print the last bar's predictions."""
    import pandas as pd

    from .errors import FeatureBuildError
    from .features import ohlcv_arrays
    from .predictor import LivePredictor

    if not ohlcv_path.is_file():
        raise FeatureBuildError(f"{ohlcv_path}: no such file")
    try:
        frame = pd.read_parquet(ohlcv_path) if ohlcv_path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(ohlcv_path)
    except Exception as exc:  # pandas raises many types for a malformed file
        raise FeatureBuildError(f"{ohlcv_path}: cannot read bars ({type(exc).__name__}: {str(exc)[:120]})") from None
    bars = ohlcv_arrays(frame, where=str(ohlcv_path))
    symbol = symbol or ohlcv_path.stem
    predictor = LivePredictor(run_root, [symbol], interval_minutes)
    rows = []
    for t in range(len(frame)):
        result = predictor.on_bar(*(bars[k][t:t + 1] for k in ("open", "high", "low", "close", "volume")))
        if out is not None:
            rows.append(result[0].copy())
    if out is not None:
        names = [f"{t}/{f}/{c}" for t, f, c in predictor.columns]
        pd.DataFrame(np.asarray(rows), columns=names, index=frame.index).to_csv(out)
        click.echo(f"wrote {len(rows)} bars × {len(names)} columns to {out}")
    click.echo(json.dumps({"symbol": symbol, "bars": len(frame), "predictions": predictor.as_dict(symbol)}, indent=1))


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the run (default: a temporary folder).")
@click.option("--bars", default=250, show_default=True, help="Bars to replay through the live predictor.")
def demo(out: Path | None, bars: int) -> None:
    """Train a small run on real GOOG daily bars, convert it, replay bars through the live predictor."""
    from backtesting.test import GOOG

    from . import testing
    from .compiler import compile_run
    from .predictor import LivePredictor

    out = out or Path(tempfile.mkdtemp(prefix="fastinfer-demo-"))
    families = ["lightgbm", "xgboost", "ridge", "mlp", "lstm"]
    train = GOOG.iloc[: len(GOOG) - bars]
    click.echo(f"training {', '.join(families)} × 3 horizons on {len(train)} GOOG daily bars into {out} …")
    root = testing.write_market_run(out, train, families, sequence_length=10)
    lock = compile_run(root)
    for e in lock.entries:
        err = f"{e.parity['max_rel']:.1e}" if e.parity else "-"
        click.echo(f"  {e.target:>12} {e.family:>9}  {e.status:6} max rel err {err}  {e.reason[:60]}")
    predictor = LivePredictor(root, ["GOOG"], 1440.0)
    replay = GOOG.iloc[len(GOOG) - bars - 80:]
    a = {k: replay[k.capitalize()].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close", "volume")}
    for t in range(len(replay)):
        predictor.on_bar(*(a[k][t:t + 1] for k in ("open", "high", "low", "close", "volume")))
    click.echo(f"last bar {replay.index[-1].date()}: {json.dumps(predictor.as_dict('GOOG'))}")
    s = predictor.latency.summary()
    click.echo(f"on_bar latency over {s['count']} bars: p50 {s['p50_us']:.1f} µs · p99 {s['p99_us']:.1f} µs · "
               f"p99.9 {s['p99.9_us']:.1f} µs · max {s['max_us']:.1f} µs")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
