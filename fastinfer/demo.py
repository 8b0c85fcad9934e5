"""``fastinfer demo``: real bars → a TRAINING run → verified ONNX graphs → a replayed trading loop.

1. Bars shipped with ``backtesting`` (GOOG daily or EURUSD hourly). The last ``bars`` bars are
   held out for the replay; models train only on the bars before them.
2. ``testing.write_market_run`` trains the families on features and forward returns of each
   horizon and writes the run in the TRAINING layout.
3. The run is converted exactly as ``fastinfer convert`` does it (progress bar, parity table).
4. ``LivePredictor.on_bar`` replays the held-out bars one by one, as a trading loop would,
   after an untimed warm-up on the bars just before them; the seed path
   (``fastinfer.reference.SeedPath``) replays the last ``seed_bars`` of them (it takes ~0.5 s
   per bar, so it gets fewer). Both are timed the same way: wall time around each call.
5. Printed: predictions for the final bars and the latency table; written to the output
   folder: ``latency.png`` (both distributions) and ``report.json``.
"""

from __future__ import annotations

import io
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import families as fam
from .atomic import write_atomic_bytes, write_atomic_json
from .errors import ConfigError
from .latency import LatencyHistogram, format_duration
from .runtime import batch_threads

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console


@dataclass(frozen=True)
class Dataset:
    attribute: str  # the DataFrame's name in backtesting.test
    description: str
    interval_minutes: float
    default_horizons: str


DATASETS: dict[str, Dataset] = {
    "goog": Dataset("GOOG", "daily bars", 1440.0, "1d,5d,10d"),
    "eurusd": Dataset("EURUSD", "hourly bars", 60.0, "1h,4h,24h"),
}
DEFAULT_FAMILIES = ("lightgbm", "xgboost", "ridge", "mlp", "lstm")
DEFAULT_BARS = 1000
DEFAULT_SEED_BARS = 30
SEQUENCE_LENGTH = 10
# Replayed untimed before the measured bars: the longest feature (60-bar windows, 26-bar EMAs
# seeded over their window) and the sequence buffers fill, ONNX Runtime and numba run once; a
# live loop warms up the same way.
WARMUP_BARS = 100
# The run's own features beyond the vocabulary, recorded in it as feature_definitions.yaml.
DEMO_DEFINITIONS = {
    "features": {
        "gap": "open / lag(close, 1) - 1",
        "rsi_spread": "rsi(close, 7) - rsi(close, 28)",
        "vol_of_vol": "rolling_std(rolling_std(log_return(close, 1), 10), 20)",
        "range_z": "rolling_zscore(high / low - 1, 20)",
    }
}
MIN_TRAIN_ROWS = 200
FINAL_BARS_SHOWN = 3
# Sized like benchmarks/bench_predictor.py: 200-tree ensembles, a 32-unit MLP and LSTM (testing.TrainSize).
DEMO_SIZE = {"trees": 200, "depth": 6, "leaves": 31, "epochs": 5, "hidden": 32}

_UNIT_MINUTES = {"m": 1.0, "h": 60.0, "d": 1440.0}
_OHLCV = ("open", "high", "low", "close", "volume")


def demo_features(interval_minutes: float) -> tuple[str, ...]:
    """The vocabulary's realistic set (returns, volatilities, RSI, ATR, z-scores, Bollinger, volume,
    ...) for this interval, and the run's own definitions."""
    from .features import default_feature_set

    return (*default_feature_set(interval_minutes), *DEMO_DEFINITIONS["features"])


def parse_horizons(text: str, interval_minutes: float) -> tuple[int, ...]:
    """``"1d,5d,10d"``, ``"1h,4h"``, ``"15m"`` or bar counts ``"1,5"`` → bar counts, in order given."""
    bars: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mhd]?)", item.lower())
        if not match:
            raise ConfigError(f"horizon {item!r}: expected a number of bars or a duration like 15m, 4h, 5d")
        amount, unit = float(match.group(1)), match.group(2)
        n = amount * _UNIT_MINUTES[unit] / interval_minutes if unit else amount
        if n < 1 or abs(n - round(n)) > 1e-9:
            raise ConfigError(f"horizon {item!r} is not a whole number (≥ 1) of {interval_minutes:g}-minute bars")
        if round(n) in bars:
            raise ConfigError(f"horizon {item!r} given twice")
        bars.append(round(n))
    return tuple(bars)


def parse_families(text: str) -> tuple[str, ...]:
    """Comma-separated family names (any spelling) → canonical names; ``ConfigError`` on an unknown one."""
    names = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        family = fam.find(item)
        if family is None:
            raise ConfigError(f"unknown family {item!r} (known: {', '.join(f.name for f in fam.FAMILIES)})")
        if family.name not in names:
            names.append(family.name)
    if not names:
        raise ConfigError("no families given")
    return tuple(names)


@dataclass(frozen=True)
class DemoOptions:
    dataset: str = "goog"
    horizons: str | None = None  # None: the dataset's default_horizons
    families: tuple[str, ...] = DEFAULT_FAMILIES
    bars: int = DEFAULT_BARS
    seed_bars: int = DEFAULT_SEED_BARS
    out: Path | None = None  # None: ./fastinfer-demo-<timestamp>


@dataclass
class Replay:
    """Per-bar wall times (ns) of one path and what it predicted."""

    name: str
    ns: np.ndarray
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)

    def __post_init__(self) -> None:
        for value in self.ns:
            self.histogram.record(float(value))

    @property
    def summary(self) -> dict[str, float]:
        return self.histogram.summary()


def load_bars(dataset: str) -> tuple[Dataset, pd.DataFrame]:
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    import backtesting.test

    spec = DATASETS[dataset]
    return spec, getattr(backtesting.test, spec.attribute)


def default_out_dir() -> Path:
    return Path.cwd() / f"fastinfer-demo-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_sizes(options: DemoOptions, data: pd.DataFrame, horizons: tuple[int, ...], name: str) -> None:
    if options.bars < 1 or options.seed_bars < 1:
        raise ConfigError(f"--bars and --seed-bars must be ≥ 1, got {options.bars} and {options.seed_bars}")
    if options.seed_bars > options.bars:
        raise ConfigError(f"--seed-bars {options.seed_bars} exceeds --bars {options.bars}")
    # Rows left to train on: bars before the replay, less indicator warm-up and the longest horizon.
    train_rows = len(data) - options.bars - 61 - max(horizons)
    if train_rows < MIN_TRAIN_ROWS or len(data) - options.bars < WARMUP_BARS:
        most = len(data) - 61 - max(horizons) - MIN_TRAIN_ROWS
        raise ConfigError(
            f"--bars {options.bars} leaves too few {name} bars to train on "
            f"({len(data)} bars in all; at most {most} can be replayed)"
        )


def run_demo(options: DemoOptions, console: Console) -> dict[str, Any]:
    """Run every step, print as it goes, write ``latency.png`` and ``report.json``; returns the report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import testing
    from .console import convert_with_progress, latency_table
    from .predictor import LivePredictor
    from .reference import SeedPath

    started = time.perf_counter()
    spec, data = load_bars(options.dataset)
    horizons = parse_horizons(options.horizons or spec.default_horizons, spec.interval_minutes)
    families = tuple(fam.resolve(f).name for f in options.families)
    _check_sizes(options, data, horizons, spec.attribute)
    out = Path(options.out) if options.out is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    symbol = spec.attribute
    replay_start = len(data) - options.bars
    train = data.iloc[:replay_start]
    console.print(
        f"[bold]fastinfer demo[/bold] — {spec.description} of {symbol}: {len(data):,} bars, "
        f"{data.index[0]:%Y-%m-%d} … {data.index[-1]:%Y-%m-%d}"
    )
    features = demo_features(spec.interval_minutes)
    console.print(
        f"training {', '.join(families)} × {len(horizons)} horizon{'s' * (len(horizons) > 1)} "
        f"on {len(features)} features of the first {len(train):,} bars "
        f"({len(DEMO_DEFINITIONS['features'])} of them defined in the run's feature_definitions.yaml); "
        f"replaying the last {options.bars:,}; output folder {out}"
    )

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    columns = (TextColumn("training {task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("", total=len(horizons) * len(families))
        root = testing.write_market_run(
            out,
            train,
            list(families),
            horizons=horizons,
            interval_minutes=spec.interval_minutes,
            feature_names=features,
            definitions=DEMO_DEFINITIONS,
            run_id="demo",
            timestamp=time.strftime("%Y%m%dT%H%M%S"),
            sequence_length=SEQUENCE_LENGTH,
            size=testing.TrainSize(**DEMO_SIZE),
            progress=lambda target, family: progress.update(task, advance=1, description=f"{target}/{family}"),
        )
    timings["train_s"] = time.perf_counter() - t0
    console.print(f"trained {len(horizons) * len(families)} models in {timings['train_s']:.1f} s → {root}")

    t0 = time.perf_counter()
    lock = convert_with_progress(root, console)
    timings["convert_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with console.status(f"replaying {options.bars:,} bars through LivePredictor.on_bar …"):
        fast, final = _replay_fastinfer(
            LivePredictor(root, [symbol], spec.interval_minutes),
            data,
            replay_start,
            symbol,
            "%Y-%m-%d" if spec.interval_minutes >= 1440 else "%Y-%m-%d %H:%M",
        )
    timings["replay_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with console.status(
        f"replaying the last {options.seed_bars} bars through the seed path (pandas FeatureBuilder + native predict) …"
    ):
        seed = _replay_seed(SeedPath(root), data, len(data) - options.seed_bars)
    timings["seed_s"] = time.perf_counter() - t0

    console.print(
        _predictions_table(final, families, [testing.horizon_label(h, spec.interval_minutes) for h in horizons])
    )
    ratio = seed.summary["p50_us"] / fast.summary["p50_us"]
    console.print(
        latency_table(
            {fast.name: fast.summary, seed.name: seed.summary},
            title=f"latency per bar, one symbol, {len(lock.entries)} models",
        )
    )
    console.print(
        f"fastinfer's p50 is [bold]{ratio:,.0f}×[/bold] lower than the seed path's "
        f"(seed path measured over {options.seed_bars} bars only: it takes "
        f"~{seed.summary['p50_us'] / 1e6:.2f} s per bar)"
    )

    png = out / "latency.png"
    write_latency_png(
        png,
        [fast, seed],
        title=f"{symbol} {spec.description}, {len(lock.entries)} models: wall time per bar, one symbol",
    )
    timings["total_s"] = time.perf_counter() - started
    report = {
        "dataset": options.dataset,
        "symbol": symbol,
        "interval_minutes": spec.interval_minutes,
        "bars": options.bars,
        "seed_bars": options.seed_bars,
        "warmup_bars": WARMUP_BARS,
        "train_bars": len(train),
        "train_period": [f"{train.index[0]:%Y-%m-%d %H:%M}", f"{train.index[-1]:%Y-%m-%d %H:%M}"],
        "horizons": {testing.horizon_label(h, spec.interval_minutes): h for h in horizons},
        "families": list(families),
        "features": len(features),
        "definitions": DEMO_DEFINITIONS,
        "run_root": str(root),
        "parity": [
            {
                "target": e.target,
                "family": e.family,
                "status": e.status,
                "reason": e.reason,
                **({k: e.parity[k] for k in ("max_abs", "max_rel", "tolerance")} if e.parity else {}),
            }
            for e in lock.entries
        ],
        "latency_us": {"fastinfer": fast.summary, "seed_path": seed.summary},
        "p50_ratio": ratio,
        "final_predictions": final,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": _versions(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "usable_cpus": batch_threads(0),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    write_atomic_json(out / "report.json", report)
    console.print(f"wrote {png} and {out / 'report.json'} (demo took {timings['total_s']:.0f} s)")
    return report


def _replay_fastinfer(
    predictor, data: pd.DataFrame, start: int, symbol: str, date_format: str
) -> tuple[Replay, list[dict]]:
    """Warm up on the bars before ``start`` (untimed), then time ``on_bar`` on every bar from ``start``."""
    from .feature_builder import ohlcv_arrays

    arrays = ohlcv_arrays(data)
    stamps = data.index.asi8  # int ns since the epoch: what a feed hands the loop
    # Each bar's arguments are built before the loop, as a feed handler would hand them over.
    args = [tuple(arrays[k][t : t + 1] for k in _OHLCV) for t in range(len(data))]
    for t in range(start - WARMUP_BARS, start):
        predictor.on_bar(*args[t], timestamp=int(stamps[t]))
    ns = np.empty(len(data) - start, dtype=np.int64)
    final: list[dict] = []
    clock = time.perf_counter_ns
    for i, t in enumerate(range(start, len(data))):
        begin = clock()
        predictor.on_bar(*args[t], timestamp=int(stamps[t]))
        ns[i] = clock() - begin
        if t >= len(data) - FINAL_BARS_SHOWN:
            when = data.index[t].strftime(date_format)
            final += [
                {"bar": when, "horizon": h, "family": f, "value": _finite_or_none(v)}
                for h, by_family in predictor.as_dict(symbol).items()
                for f, v in by_family.items()
            ]
    return Replay("fastinfer on_bar", ns), final


def _replay_seed(seed, data: pd.DataFrame, start: int) -> Replay:
    """The seed path over the bars from ``start``, after an untimed warm-up that fills its sequence buffers."""
    windows = [data.iloc[max(0, t - seed.lookback) : t + 1] for t in range(start - SEQUENCE_LENGTH, len(data))]
    for window in windows[:SEQUENCE_LENGTH]:
        seed.on_bar(window)
    ns = np.empty(len(windows) - SEQUENCE_LENGTH, dtype=np.int64)
    clock = time.perf_counter_ns
    for i, window in enumerate(windows[SEQUENCE_LENGTH:]):
        begin = clock()
        seed.on_bar(window)
        ns[i] = clock() - begin
    return Replay("seed path", ns)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None  # JSON has no NaN


def _predictions_table(final: list[dict], families: tuple[str, ...], horizons: list[str]):
    from rich.table import Table

    table = Table(title="fastinfer predictions (forward return) for the final bars")
    table.add_column("bar")
    table.add_column("horizon")
    for f in families:
        table.add_column(f, justify="right")
    rows: dict[tuple[str, str], dict[str, float | None]] = {}
    for p in final:
        rows.setdefault((p["bar"], p["horizon"]), {})[p["family"]] = p["value"]
    for (bar, horizon), values in sorted(rows.items(), key=lambda kv: (kv[0][0], horizons.index(kv[0][1]))):
        table.add_row(bar, horizon, *("-" if values.get(f) is None else f"{values[f]:+.5f}" for f in families))
    return table


def write_latency_png(path: Path, replays: list[Replay], title: str) -> None:
    """Histogram of each path's per-bar latency on a log-x axis, p50 (solid) and p99 (dashed) marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    all_us = np.concatenate([r.ns for r in replays]) / 1e3
    bins = np.geomspace(all_us.min() / 1.2, all_us.max() * 1.2, 120)
    for replay, color in zip(replays, ("tab:blue", "tab:red", "tab:green")):
        us = replay.ns / 1e3
        ax.hist(
            us,
            bins=bins,
            weights=np.full(len(us), 1.0 / len(us)),
            color=color,
            alpha=0.65,
            label=f"{replay.name} ({len(us):,} bars)",
        )
        s = replay.summary
        for key, style in (("p50_us", "-"), ("p99_us", "--")):
            ax.axvline(s[key], color=color, linestyle=style, linewidth=1.2)
            ax.annotate(
                f"{key[:-3]} {format_duration(s[key] / 1e6)}",
                xy=(s[key], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -14 if style == "-" else -28),
                textcoords="offset points",
                color=color,
                fontsize=8,
            )
    ax.set_xscale("log")
    ax.set_xlabel("wall time per bar (µs, log scale)")
    ax.set_ylabel("fraction of bars")
    ax.set_title(title)
    ax.legend(loc="center right", fontsize=9)
    ax.grid(True, which="major", axis="x", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_atomic_bytes(path, buffer.getvalue())


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in (
        "fastinfer",
        "numpy",
        "numba",
        "onnx",
        "onnxruntime",
        "pandas",
        "lightgbm",
        "xgboost",
        "xgboost-cpu",
        "scikit-learn",
        "keras",
        "tensorflow-cpu",
        "tensorflow",
        "tf2onnx",
        "backtesting",
        "matplotlib",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions
