"""Command line: ``fastinfer convert | verify | keygen | sign | predict | demo | bench``.

Errors are one clear line and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from .demo import DATASETS, DEFAULT_BARS, DEFAULT_FAMILIES, DEFAULT_SEED_BARS  # constants only: demo imports lazily
from .errors import FastInferError
from .features.command import features as features_command


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


def _password(password_env: str | None) -> bytes | None:
    """The key password from the environment variable named by ``--password-env``."""
    if not password_env:
        return None
    if password_env not in os.environ:
        raise click.UsageError(f"--password-env: environment variable {password_env!r} is not set")
    return os.environ[password_env].encode()


_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings YAML (e.g. models.verify_signature + trusted_public_key) instead of the "
    "packaged config/fastinfer.yaml.",
)


@main.command()
@click.argument("run_root", type=click.Path(path_type=Path))
@click.option("--targets", help="Comma-separated targets (default: all).")
@click.option("--families", help="Comma-separated families (default: all).")
@_CONFIG
def convert(run_root: Path, targets: str | None, families: str | None, config_path: Path | None) -> None:
    """Convert every model of RUN_ROOT to a parity-checked ONNX graph and write fastinfer.lock.json."""
    from rich.console import Console

    from .console import convert_with_progress

    convert_with_progress(run_root, Console(), _csv(targets), _csv(families), config_path=config_path)


@main.command()
@click.argument("run_root", type=click.Path(path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also verify fastinfer.lock.sig with this Ed25519 public key (PEM).",
)
@_CONFIG
def verify(run_root: Path, public_key: Path | None, config_path: Path | None) -> None:
    """Re-check every checksum of RUN_ROOT (meta, lock, graphs; the signature with --public-key).

    Exits 1 on any mismatch, on a model that failed at conversion, and (with --public-key) on any
    model the loader would open that the signature does not cover."""
    from .artifacts import resolve_run_root
    from .integrity import sha256_file
    from .loader import ModelLoader

    root = resolve_run_root(run_root)
    problems = 0
    signed = None
    if public_key is not None:
        from .signing import verify_run

        try:
            signed = verify_run(root, public_key)
            click.echo(f"ok   signature: {len(signed.files)} file(s) signed by key {signed.key_id[:16]}…")
        except FastInferError as exc:
            click.echo(f"FAIL signature: {exc}")
            problems += 1
    # With --config turning verify_signature on, the loader refuses a run whose signature fails.
    loader = ModelLoader(root, prefer_onnx=False, config_path=config_path)
    lock = signed.lock() if signed is not None else loader.lock
    for loc in loader.locations():
        name = f"{loc.target}/{loc.family.name}"
        entry = lock.find(loc.key) if lock else None
        if signed is not None and (entry is None or entry.status == "failed"):
            click.echo(
                f"FAIL {name}: not covered by the signature (a signed loader refuses it, an unsigned one opens it)"
            )
            problems += 1
            continue
        try:
            spec = loader.spec_of(loc)
        except FastInferError as exc:
            click.echo(f"FAIL {name}: {exc}")
            problems += 1
            continue
        if entry is not None and entry.status == "failed":
            click.echo(f"FAIL {name}: {entry.reason} (left out when the run is served)")
            problems += 1
            continue
        actual = sha256_file(spec.model_path)
        checks = [("model_checksum", spec.model_checksum == actual if spec.model_checksum else None)]
        if entry is not None:
            checks.append(("lock native", entry.native_sha256 == actual))
            if entry.status == "onnx":
                graph = root / entry.onnx_file
                checks.append(("lock graph", graph.is_file() and sha256_file(graph) == entry.onnx_sha256))
        if signed is not None:
            checks.append(("signed meta", signed.digest(spec.meta_path) == sha256_file(spec.meta_path)))
            checks.append(("signed model", signed.digest(spec.model_path) == actual))
        bad = [what for what, ok in checks if ok is False]
        unsigned = [what for what, ok in checks if ok is None]
        problems += bool(bad)
        state = "FAIL" if bad else "ok  "
        detail = f"mismatch: {', '.join(bad)}" if bad else ("no model_checksum" if unsigned else "verified")
        click.echo(f"{state} {name}: {detail}" + ("" if entry else " (not in lock)"))
    click.echo(f"{problems} problem(s)")
    sys.exit(1 if problems else 0)


@main.command()
@click.argument("out_prefix", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--password-env", default=None, help="Encrypt the private key with the password in this variable.")
def keygen(out_prefix: Path, password_env: str | None) -> None:
    """Make an Ed25519 key pair: OUT_PREFIX.key (private, mode 0600) and OUT_PREFIX.pub (public)."""
    from .signing import generate_keypair, key_id, load_public_key

    password = _password(password_env)
    private, public = generate_keypair(out_prefix, password)
    click.echo(
        f"private key {private} (keep it off the serving machines)\npublic key  {public} "
        f"(key id {key_id(load_public_key(public))[:16]}…): set models.trusted_public_key to it"
    )


@main.command()
@click.argument("run_root", type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 private key (PEM, from `fastinfer keygen`).",
)
@click.option("--password-env", default=None, help="The key's password is in this environment variable.")
def sign(run_root: Path, key_path: Path, password_env: str | None) -> None:
    """Sign a converted RUN_ROOT: fastinfer.lock.sig over the lock and every file it lists."""
    from .signing import load_private_key, sign_run, verify_run

    password = _password(password_env)
    path = sign_run(run_root, load_private_key(key_path, password))
    signed = verify_run(run_root, load_private_key(key_path, password).public_key())  # read back what was written
    click.echo(f"signed {len(signed.files)} file(s) of {signed.run_root} → {path}")


@main.command("export-triton")
@click.argument("run_root", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--gpu", is_flag=True, help="Triton instance_group KIND_GPU (default KIND_CPU).")
@click.option("--max-batch-size", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max-queue-delay-us",
    default=100,
    show_default=True,
    type=click.IntRange(min=0),
    help="Dynamic batcher's max_queue_delay_microseconds.",
)
@click.option("--no-fused", is_flag=True, help="Only one model folder per graph, no fused graphs.")
def export_triton(
    run_root: Path, out_dir: Path, gpu: bool, max_batch_size: int, max_queue_delay_us: int, no_fused: bool
) -> None:
    """Write a Triton model repository of RUN_ROOT's verified graphs into OUT_DIR."""
    from .serving import SUMS_FILE
    from .serving import export_triton as export

    index = export(
        run_root,
        out_dir,
        instance_kind="gpu" if gpu else "cpu",
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        fused=not no_fused,
    )
    for name, model in index["models"].items():
        click.echo(
            f"  {name:<40} {model['kind']:5}  {model['sha256'][:16]}  "
            f"{', '.join(o['name'] for o in model['outputs'])[:60]}"
        )
    for s in index["skipped"]:
        click.echo(f"  skipped {s['target']}/{s['family']}: {s['reason'][:80]}")
    click.echo(f"{len(index['models'])} model(s) in {out_dir}; checksums in {SUMS_FILE}")


@main.command()
@click.argument("run_root", type=click.Path(path_type=Path))
@click.option(
    "--ohlcv",
    "ohlcv_path",
    required=True,
    type=click.Path(path_type=Path),
    help="CSV or Parquet of bars (open, high, low, close, volume; any case), oldest first.",
)
@click.option("--interval", "interval_minutes", type=float, required=True, help="Bar interval in minutes.")
@click.option("--symbol", default=None, help="Symbol name (one-symbol file; default: the file name).")
@click.option(
    "--symbol-column", default=None, help="The column naming each row's symbol (several symbols in one file)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every bar's predictions: CSV, or Parquet by extension (.parquet, .pq).",
)
@_CONFIG
def predict(
    run_root: Path,
    ohlcv_path: Path,
    interval_minutes: float,
    symbol: str | None,
    symbol_column: str | None,
    out: Path | None,
    config_path: Path | None,
) -> None:
    """Predict every bar of an OHLCV file (a backtest): the run's features in batch, then every model
    in big batches; equal to replaying the bars through the live predictor. Prints the last bar's
    predictions per symbol."""
    import numpy as np

    from .errors import FeatureBuildError
    from .features.frames import time_column
    from .research import RunPredictor, symbol_groups
    from .tables import read_table, write_table

    frame = read_table(ohlcv_path, "bars")
    if frame.empty:  # a header and no rows: there is no last bar to report
        raise FeatureBuildError(f"{ohlcv_path}: no bars (the file has a header but no rows)")
    runner = RunPredictor(run_root, interval_minutes=interval_minutes, config_path=config_path)
    table = runner.predict_bars(frame, symbol_column=symbol_column, where=str(ohlcv_path))
    if out is not None:
        written = table.copy()
        written.columns = ["/".join(c) for c in table.columns]
        if symbol_column is not None:
            written.insert(0, symbol_column, frame[symbol_column].to_numpy())
        stamp = time_column(frame)  # the bar time, as `features build` keeps it: rows join back to bars
        if stamp is not None and stamp not in written.columns:
            written.insert(0, stamp, frame[stamp].to_numpy())
        write_table(written.reset_index(), out)
        click.echo(f"wrote {len(written)} bars × {len(table.columns)} columns to {out}")

    def last(rows: np.ndarray) -> dict:  # NaN (a model still warming up) is not JSON: null
        view = runner.layout.view(table.to_numpy()[rows[-1]])
        return {h: {f: (v if v == v else None) for f, v in by_family.items()} for h, by_family in view.items()}

    if symbol_column is None:
        report = {"symbol": symbol or ohlcv_path.stem, "bars": len(frame), "predictions": last(np.arange(len(frame)))}
    else:
        groups = symbol_groups(frame, symbol_column, str(ohlcv_path))  # the rows predict_bars grouped
        report = {"bars": len(frame), "symbols": {str(s): last(rows) for s, rows in groups.items()}}
    click.echo(json.dumps(report, indent=1))


@main.command()
@click.option(
    "--dataset",
    type=click.Choice(list(DATASETS)),
    default="goog",
    show_default=True,
    help="Bars shipped with backtesting: GOOG daily or EURUSD hourly.",
)
@click.option(
    "--horizons",
    default=None,
    help="Forward-return horizons: durations (15m, 4h, 5d) or bar counts, comma-separated [default: "
    + "; ".join(f"{k} {d.default_horizons}" for k, d in DATASETS.items())
    + "].",
)
@click.option("--families", default=",".join(DEFAULT_FAMILIES), show_default=True, help="Model families to train.")
@click.option(
    "--bars", default=DEFAULT_BARS, show_default=True, help="Bars held out and replayed through the live predictor."
)
@click.option(
    "--seed-bars",
    default=DEFAULT_SEED_BARS,
    show_default=True,
    help="Of those, bars replayed through the seed path (pandas + native predict, ~0.5 s per bar).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder for the run, latency.png and report.json [default: ./fastinfer-demo-<time>].",
)
def demo(dataset: str, horizons: str | None, families: str, bars: int, seed_bars: int, out: Path | None) -> None:
    """Train a small run on real bars, convert it, replay the last bars as a trading loop.

    Times it against the seed path."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter
    from rich.console import Console

    from .demo import DemoOptions, parse_families, parse_horizons, run_demo
    from .errors import ConfigError

    try:
        parse_horizons(horizons or DATASETS[dataset].default_horizons, DATASETS[dataset].interval_minutes)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--horizons'") from None
    try:
        family_names = parse_families(families)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--families'") from None
    run_demo(DemoOptions(dataset, horizons, family_names, bars, seed_bars, out), Console())


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Folder for benchmarks.json, ratios.json, summary.md and ratios.png.",
)
@click.option("--readme", is_flag=True, help="Also put the summary between the README's bench markers.")
@click.option("-k", "keyword", default=None, help="Only benchmarks matching this pytest -k expression.")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def bench(out: Path, readme: bool, keyword: str | None, pytest_args: tuple[str, ...]) -> None:
    """Run benchmarks/ (pytest-benchmark) and write a summary table and plot of each ratio to its baseline.

    \b
    Arguments after -- go to pytest, e.g.
    fastinfer bench -k features -- --benchmark-max-time=0.1
    """
    from . import bench as suite

    benchmarks = suite.find_benchmarks_dir()
    code = suite.run_suite(out, benchmarks, keyword, pytest_args)
    if code == 5:
        raise click.UsageError(f"no benchmark matched{f' -k {keyword!r}' if keyword else ''}")
    rows, summary = suite.summarise(out)
    click.echo(summary)
    click.echo(f"wrote {out / 'summary.md'} and {out / 'ratios.png'} ({len(rows)} ratios)")
    if code != 0:
        raise click.ClickException(f"the benchmark run failed (pytest exit code {code}); README left unchanged")
    if readme:
        suite.update_readme(benchmarks.parent / "README.md", summary)
        click.echo(f"updated {benchmarks.parent / 'README.md'}")


main.add_command(features_command)  # fastinfer features build | explain | vocabulary


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
