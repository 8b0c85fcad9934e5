"""``fastinfer bench``: run ``benchmarks/`` under pytest-benchmark, then summarise the ratios.

The suite runs in a subprocess with this interpreter. ``benchmarks/conftest.py`` writes every
ratio group (one subject, its baselines, their medians) to the JSON file named by
``FASTINFER_BENCH_RATIOS``; from it come ``summary.md`` (a table, each ratio beside its target
from TARGETS.md where one applies) and ``ratios.png``. ``update_readme`` puts the summary
between the README's bench markers.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .atomic import read_json, write_atomic_bytes
from .latency import format_duration

RATIOS_ENV = "FASTINFER_BENCH_RATIOS"
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


@dataclass(frozen=True)
class Target:
    id: str
    minimum: float  # baseline median / subject median must reach this
    text: str


# TARGETS.md, as (group pattern, baseline-name pattern) → target. Groups are the names the
# benchmark files give to ``record_ratio``; a group with no rule has no target.
TARGET_RULES: tuple[tuple[str, str, Target], ...] = (
    (r"^one-symbol-bar$", r"seed path", Target("P1a", 1000.0, "≥ 1000× the spec's path")),
    (r"^one-symbol-bar-vs-peer$", r"", Target("P1b", 3.0, "≥ 3× TA-Lib + ORT sessions")),
    (r"^P1c one-symbol bar vs the sum of its parts$", r"", Target("P1c", 0.8, "on_bar ≤ 1.25× its parts")),
    (r"^P2 .*, 1 row$", r"onnxruntime", Target("P2", 3.0, "≥ 3× ONNX Runtime, 1 row")),
    (r"^P2 .*, 512 rows$", r"onnxruntime", Target("P2", 3.0, "≥ 3× ONNX Runtime, 512 rows")),
    (r"^P2 .*, 512 rows$", r"tl2cgen", Target("P2", 1.0, "≥ 1× tl2cgen compiled C, 512 rows")),
    (r"^P3 500 symbols per bar$", r"", Target("P3", 50.0, "≥ 50× the peer looped over symbols")),
    (r"^P3 500-symbol bar vs the sum of its parts$", r"", Target("P3", 0.8, "≤ 1.25× its parts")),
    (r"^P4 ", r"pandas", Target("P4", 1000.0, "≥ 1000× pandas recompute")),
    (r"^P4 ", r"talib", Target("P4", 50.0, "≥ 50× TA-Lib recompute")),
    (r"^P4b \d+ features, 500 symbols per bar$", r"talipp", Target("P4b", 100.0, "≥ 100× talipp")),
    (r"^P4b \d+ features, 500 symbols per bar$", r"nautilus", Target("P4b", 10.0, "≥ 10× NautilusTrader")),
    (r"^P4b \d+ features, 500 symbols per bar$", r"talib", Target("P4b", 50.0, "≥ 50× TA-Lib recompute")),
    (r"^P4b \d+ features, 500 symbols per bar$", r"pandas", Target("P4b", 1000.0, "≥ 1000× pandas recompute")),
    (r"^P4b 14 default features compiled vs hand-written", r"hand-written", Target("P4b", 0.909, "≤ 1.1× its time")),
    (r"^P5 push \+ get_sequence", r"slice copy", Target("P5", 0.5, "within 2× a bare slice copy")),
    (r"^P5 SPSC", r"Queue", Target("P5", 10.0, "≥ 10× multiprocessing.Queue")),
    (r"^P6 ", r"", Target("P6", 3.0, "≥ 3× TA-Lib + pandas + ORT sessions")),
    (r"^P7 engine\.predict ", r"library", Target("P7", 1.0, "≥ 1× the native library")),
    (r"^P7 engine\.predict .*, (512|65536) rows$", r"ONNX Runtime", Target("P7", 2.0, "≥ 2× ORT (trees)")),
    (r"^P7 RunPredictor.*vs native$", r"", Target("P7", 3.0, "≥ 3× Σ native batch predicts")),
    (r"^P7 RunPredictor.*vs ORT$", r"", Target("P7", 2.0, "≥ 2× one ORT session per model")),
    (r"^P7 predict --ohlcv, 1 symbol ", r"", Target("P7", 20.0, "≥ 20× the on_bar replay")),
    (r"^P7 predict --ohlcv, 500 symbols ", r"", Target("P7", 2.0, "≥ 2× the on_bar replay")),
    (r"^T1 tail, .*p99 against", r"", Target("T1", 1.0, "p99 ≤ 3× p50")),
    (r"^T1 tail, .*p99\.9 against", r"", Target("T1", 1.0, "p99.9 ≤ 5× p50")),
    (r"^S1 ", r"budget", Target("S1", 1.0, "≤ 2 s: budget / start-up ≥ 1")),
)


def target_for(group: str, baseline: str) -> Target | None:
    for group_pattern, baseline_pattern, target in TARGET_RULES:
        if re.search(group_pattern, group) and re.search(baseline_pattern, baseline):
            return target
    return None


@dataclass(frozen=True)
class RatioRow:
    group: str
    subject: str
    subject_median_s: float
    baseline: str
    baseline_median_s: float
    target: Target | None

    @property
    def ratio(self) -> float:
        return self.baseline_median_s / self.subject_median_s

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target.minimum


def read_ratio_rows(path: str | Path) -> list[RatioRow]:
    """The rows of a ratios file written by ``benchmarks/conftest.py``; ``ValueError`` naming a bad group."""
    data = read_json(path)
    rows = []
    for group, entries in data["groups"].items():
        subjects = [(name, e["median_s"]) for name, e in entries.items() if e["subject"]]
        if len(subjects) != 1:
            raise ValueError(f"{path}: group {group!r} has {len(subjects)} subjects, needs exactly one")
        subject, t0 = subjects[0]
        rows += [
            RatioRow(group, subject, t0, name, e["median_s"], target_for(group, name))
            for name, e in entries.items()
            if not e["subject"]
        ]
    return rows


def short_name(name: str) -> str:
    """``test_features_one_symbol[pandas]`` → ``pandas``: the parameter id names the implementation."""
    match = re.fullmatch(r"test_\w+\[(.+)\]", name)
    return match.group(1) if match else name


def _machine(benchmark_json: Path | None) -> str:
    """One line on where the numbers come from, from pytest-benchmark's machine_info."""
    if benchmark_json is None or not benchmark_json.is_file():
        return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    info = json.loads(benchmark_json.read_text())
    machine = info.get("machine_info", {})
    cpu = machine.get("cpu", {})
    return (
        f"{cpu.get('brand_raw', machine.get('processor', '?'))}, {cpu.get('count', os.cpu_count())} CPUs, "
        f"Python {machine.get('python_version', sys.version.split()[0])}, {info.get('datetime', '')[:10]}"
    )


def summary_markdown(rows: Sequence[RatioRow], benchmark_json: Path | None = None) -> str:
    """A Markdown table: one line per (group, baseline), ratio = baseline median / subject median."""
    lines = [
        f"Generated by `fastinfer bench` ({_machine(benchmark_json)}). Medians of pytest-benchmark rounds, "
        "subject and baselines measured in the same run; ratio = baseline median / subject median "
        "(how many times faster the subject is). Shared, noisy machines: read ratios, not absolute times.",
        "",
        "| target | group | subject | median | baseline | median | ratio | goal |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        goal = "" if r.target is None else f"{r.target.text} {'✅' if r.met else '❌'}"
        lines.append(
            f"| {r.target.id if r.target else ''} | {r.group} | {short_name(r.subject)} "
            f"| {format_duration(r.subject_median_s)} | {short_name(r.baseline)} "
            f"| {format_duration(r.baseline_median_s)} "
            f"| {r.ratio:,.1f}× | {goal} |"
        )
    return "\n".join(lines) + "\n"


def write_ratios_png(path: Path, rows: Sequence[RatioRow]) -> None:
    """One horizontal bar per ratio (log x); targets as black ticks; green met, red missed, grey none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("no ratios to plot")
    fig = Figure(figsize=(11, 1.2 + 0.32 * len(rows)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = list(range(len(rows)))[::-1]
    colors = ["tab:grey" if r.met is None else ("tab:green" if r.met else "tab:red") for r in rows]
    ax.barh(y, [r.ratio for r in rows], color=colors, alpha=0.8)
    for yi, r in zip(y, rows):
        if r.target is not None:
            ax.plot([r.target.minimum] * 2, [yi - 0.4, yi + 0.4], color="black", linewidth=2)
        ax.annotate(f"{r.ratio:,.1f}×", xy=(r.ratio, yi), xytext=(3, -3), textcoords="offset points", fontsize=7)
    ax.set_yticks(y, [f"{r.group[:48]} — vs {short_name(r.baseline)[:40]}" for r in rows], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(right=max(max(r.ratio for r in rows), max((r.target.minimum for r in rows if r.target), default=1)) * 4)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel("baseline median / fastinfer median (×, log scale); black tick: target")
    ax.set_title("fastinfer against its baselines, same run")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_atomic_bytes(path, buffer.getvalue())


def update_readme(readme: Path, summary: str) -> None:
    """Replace the text between the bench markers with ``summary``; ``ValueError`` when they are missing."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no '{README_START}' … '{README_END}' section to fill")
    new = text[: start + len(README_START)] + "\n" + summary.rstrip("\n") + "\n" + text[end:]
    write_atomic_bytes(readme, new.encode())


def find_benchmarks_dir() -> Path:
    """``benchmarks/`` of the current directory, else of the source checkout this package runs from."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        folder = base / "benchmarks"
        if (folder / "conftest.py").is_file():
            return folder
    raise FileNotFoundError("no benchmarks/ folder here or beside the fastinfer package: run from a source checkout")


def run_suite(out: Path, benchmarks: Path, keyword: str | None = None, extra: Sequence[str] = ()) -> int:
    """Run the suite (output to this terminal); returns pytest's exit code."""
    out = out.resolve()  # pytest runs in the checkout, not in the caller's directory
    out.mkdir(parents=True, exist_ok=True)
    ratios = out / "ratios.json"
    for stale in (ratios, out / "benchmarks.json"):  # never summarise a previous run's numbers
        stale.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(benchmarks),
        "--benchmark-only",
        f"--benchmark-json={out / 'benchmarks.json'}",
        "-p",
        "no:cacheprovider",
        *extra,
    ]
    if keyword:
        command += ["-k", keyword]
    env = {**os.environ, RATIOS_ENV: str(ratios)}
    return subprocess.run(command, cwd=benchmarks.parent, env=env).returncode


def summarise(out: Path) -> tuple[list[RatioRow], str]:
    """Write ``summary.md`` and ``ratios.png`` from the run in ``out``; returns the rows and the summary."""
    ratios = out / "ratios.json"
    if not ratios.is_file():
        raise FileNotFoundError(f"{ratios}: the benchmark run recorded no ratios")
    rows = read_ratio_rows(ratios)
    if not rows:
        raise ValueError(f"{ratios}: no ratio groups recorded (did any benchmark with a baseline run?)")
    summary = summary_markdown(rows, out / "benchmarks.json")
    write_atomic_bytes(out / "summary.md", summary.encode())
    write_ratios_png(out / "ratios.png", rows)
    return rows, summary
