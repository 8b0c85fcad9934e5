"""``fastinfer features``: build training feature matrices from bars, and explain feature names.

::

    fastinfer features build --definitions features.yaml bars.parquet -o features.parquet \\
        [--feature NAME ...] [--symbol-column symbol] [--interval 5] [--bars-per-day 78]
    fastinfer features explain ret_1d vol_10d my_feature --definitions features.yaml --interval 5
    fastinfer features vocabulary

``build`` computes every feature of every row with the batch execution of the same compiled
program the live path runs incrementally (equal to it replayed bar by bar): one row out per
row in, keyed by the input's time and symbol columns; a row with a missing OHLCV value
repeats its symbol's last features. CSV or Parquet in and out (by extension), written
atomically; a progress bar on long inputs.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import FeatureBuildError
from ..tables import read_table, write_table

PROGRESS_ROWS = 100_000  # show a progress bar from this many input rows


@click.group("features")  # errors: one line, exit 2, by the main command's group
def features() -> None:
    """Feature definitions: build feature matrices from bars, explain names."""


@features.command("build")
@click.argument("bars", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV or Parquet.")
@click.option("--definitions", type=click.Path(dir_okay=False, path_type=Path), help="feature_definitions.yaml")
@click.option(
    "--feature",
    "names",
    multiple=True,
    help="A feature to build (repeatable, or comma-separated); default: every name in --definitions.",
)
@click.option("--symbol-column", default=None, help="The column naming each row's symbol (default: one symbol).")
@click.option("--interval", "interval_minutes", type=float, default=None, help="Bar interval in minutes.")
@click.option("--bars-per-day", type=int, default=None, help="Bars of one session (for `d` durations intraday).")
@click.option("--progress/--no-progress", default=None, help=f"Progress bar (default: from {PROGRESS_ROWS} rows).")
@click.option(
    "--record-in",
    "run_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A TRAINING run (its root, or a run_id folder: its newest timestamp): record the definitions used there "
    "(feature_definitions.yaml beside manifest.json).",
)
def build(
    bars: Path,
    out: Path,
    definitions: Path | None,
    names: tuple[str, ...],
    symbol_column: str | None,
    interval_minutes: float | None,
    bars_per_day: int | None,
    progress: bool | None,
    run_root: Path | None,
) -> None:
    """Compute features for every row of BARS (OHLCV, CSV or Parquet) and write them to --out
    (with --record-in, also record the definitions in the TRAINING run they train)."""
    import pandas as pd

    from .compiler import compile_features
    from .definitions import FeatureDefinitions
    from .frames import frame_features, time_column

    defs = FeatureDefinitions.read(definitions) if definitions is not None else None
    wanted = [n.strip() for value in names for n in value.split(",") if n.strip()]
    if not wanted:
        if defs is None or not defs.features:
            raise click.UsageError("nothing to build: give --feature names or --definitions with features")
        wanted = list(defs.features)
    program = compile_features(wanted, defs, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
    record = None
    if run_root is not None:  # before the work, not after it: the run folder as the loader finds it
        from .runs import training_run_root

        record = training_run_root(run_root)
    frame = read_table(bars, "bars")
    keys = [c for c in (time_column(frame), symbol_column) if c is not None]
    clash = [k for k in keys if k in program.features]
    if clash:
        raise FeatureBuildError(f"feature(s) {clash} have the name of a key column of {bars}; rename them")
    show = progress if progress is not None else len(frame) >= PROGRESS_ROWS
    if show:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (
            TextColumn("features"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("symbols"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("", total=None)
            values = frame_features(
                program,
                frame,
                symbol_column=symbol_column,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                where=str(bars),
            )
    else:
        values = frame_features(program, frame, symbol_column=symbol_column, where=str(bars))
    result = pd.concat([frame[keys], values], axis=1).reset_index(drop=True)
    write_table(result, out)
    click.echo(f"wrote {len(result)} rows × {len(program.features)} features to {out}")
    if record is not None:
        content = defs.to_dict() if defs is not None else {"features": {}}
        for key in ("interval_minutes", "bars_per_day"):  # what the durations were resolved with
            if getattr(program, key) is not None:
                content[key] = getattr(program, key)
        from .runs import write_run_definitions

        path = write_run_definitions(record, FeatureDefinitions.from_dict(content))
        click.echo(f"recorded the definitions in {path}")


@features.command("explain")
@click.argument("names", nargs=-1, required=True)
@click.option("--definitions", type=click.Path(dir_okay=False, path_type=Path), help="feature_definitions.yaml")
@click.option("--interval", "interval_minutes", type=float, default=None, help="Bar interval in minutes.")
@click.option("--bars-per-day", type=int, default=None, help="Bars of one session.")
def explain_command(
    names: tuple[str, ...], definitions: Path | None, interval_minutes: float | None, bars_per_day: int | None
) -> None:
    """What each NAME means (its definition, or the vocabulary's reading), and its warm-up."""
    from .compiler import compile_features, explain
    from .definitions import FeatureDefinitions

    defs = FeatureDefinitions.read(definitions) if definitions is not None else None
    for name in names:
        text = explain(name, defs, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
        program = compile_features([name], defs, interval_minutes=interval_minutes, bars_per_day=bars_per_day)
        click.echo(f"{text}; warm-up {program.warmups[0]} bars, {program.n_ops} instruction(s)")


@features.command("vocabulary")
def vocabulary_command() -> None:
    """The vocabulary's names, and the functions an expression may call."""
    from . import function_table
    from .vocabulary import vocabulary_table

    click.echo(vocabulary_table())
    click.echo("")
    click.echo(function_table())
