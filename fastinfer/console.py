"""Terminal output shared by the CLI commands and the demo (rich): one way to show each thing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .lock import Lock


def convert_with_progress(
    run_root: str | Path,
    console: Console,
    targets: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
    *,
    config_path: str | Path | None = None,
) -> Lock:
    """``compile_run`` with a progress bar, then the parity table; what ``fastinfer convert`` prints.

    ``config_path``: settings YAML for the loader (checksum policy, signature); the packaged one if None.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .compiler import compile_run
    from .loader import ModelLoader

    loader = ModelLoader(run_root, prefer_onnx=False, config_path=config_path)
    columns = (TextColumn("converting {task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("", total=len(loader.locations()))

        def step(event) -> None:
            progress.update(
                task, completed=event.done, total=event.total, description=f"{event.entry.target}/{event.entry.family}"
            )

        lock = compile_run(loader.run_root, targets, families, loader=loader, progress=step)
    console.print(parity_table(lock, title=f"fastinfer.lock.json — {loader.run_root}"))
    served = sum(e.status == "onnx" for e in lock.entries)
    console.print(f"{served}/{len(lock.entries)} models served from ONNX")
    for e in lock.entries:  # the table's reason column is cut to fit a terminal: every reason whole here
        if e.status != "onnx":
            console.print(f"{e.target}/{e.family} ({e.status}): {e.reason}", soft_wrap=True, markup=False)
    return lock


def parity_table(lock: Lock, title: str) -> Table:
    """One row per model: how it is served, the parity error against its native model, why."""
    from rich.table import Table

    table = Table(title=title)
    scoped = any(e.symbol is not None or e.universe is not None for e in lock.entries)
    for col, justify in (
        ("target", "left"),
        ("family", "left"),
        *((("scope", "left"),) if scoped else ()),
        ("status", "left"),
        ("max rel err", "right"),
        ("tolerance", "right"),
        ("seconds", "right"),
        ("reason", "left"),
    ):
        table.add_column(col, justify=justify)
    # Names are never cut (rich assumes 80 columns off a terminal: fwd_ret_1… read as fwd_ret_1d and
    # fwd_ret_10d alike); the numbers and the reason (whole below the table) give way first.
    names = [(e.target, e.family, _scope(e)) if scoped else (e.target, e.family) for e in lock.entries]
    for column, values in zip(table.columns, zip(*names, strict=True)):
        column.min_width = max(len(v) for v in values)
    for e in lock.entries:
        err = f"{e.parity['max_rel']:.2e}" if e.parity else "-"
        tol = f"{e.parity['tolerance']:.0e}" if e.parity else "-"
        reason = e.reason if len(e.reason) <= 60 else e.reason[:57] + "..."  # in full below the table
        row = (e.target, e.family, *((_scope(e),) if scoped else ()), e.status, err, tol, f"{e.convert_seconds:.2f}")
        table.add_row(*row, reason)
    return table


def _scope(entry) -> str:
    """``symbol=AAPL`` / ``universe=SP500`` for a scoped model, else empty."""
    if entry.symbol is not None:
        return f"symbol={entry.symbol}"
    return f"universe={entry.universe}" if entry.universe is not None else ""


def latency_table(rows: Mapping[str, Mapping[str, float]], title: str) -> Table:
    """Per-bar latency summaries (``LatencyHistogram.summary`` keys) side by side, µs."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("path", no_wrap=True)
    for col in ("bars", "p50 µs", "p99 µs", "p99.9 µs", "max µs"):
        table.add_column(col, justify="right")
    for name, s in rows.items():
        table.add_row(name, f"{s['count']:,}", *(f"{s[k]:,.1f}" for k in ("p50_us", "p99_us", "p99.9_us", "max_us")))
    return table
