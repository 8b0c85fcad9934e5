"""Shared benchmark plumbing: ratios against baselines, printed at the end of the run.

Benchmarks here are files named ``bench_*.py`` (collected by the hook below, so both
``pytest benchmarks --benchmark-only`` and ``pytest benchmarks/bench_x.py`` find them).

To report a ratio, time the subject and each baseline in the same group, then record them::

    def test_update(benchmark, record_ratio):          # test id names the baseline, e.g. [pandas]
        benchmark(work)
        record_ratio("features-500", subject=False)    # True for the thing being measured

or record any timing yourself with ``RESULTS.record(group, name, seconds, subject=...)``.
At the end of the session every group prints each baseline's median time divided by the
subject's ("how many times faster the subject is"). Medians, because these machines are noisy.
With ``FASTINFER_BENCH_RATIOS=path.json`` in the environment (``fastinfer bench`` sets it) the
same results are also written to that file, for ``fastinfer.bench`` to summarise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from fastinfer.bench import RATIOS_ENV
from fastinfer.latency import format_duration


@dataclass
class RatioResults:
    """Timings by group; one entry per group is the subject the others are compared with."""

    groups: dict[str, dict[str, tuple[float, bool]]] = field(default_factory=dict)

    def record(self, group: str, name: str, seconds: float, *, subject: bool = False) -> None:
        self.groups.setdefault(group, {})[name] = (float(seconds), subject)

    def to_dict(self) -> dict:
        """``{"groups": {group: {name: {"median_s": …, "subject": …}}}}``, what ``fastinfer.bench`` reads."""
        return {
            "groups": {
                group: {
                    name: {"median_s": seconds, "subject": is_subject}
                    for name, (seconds, is_subject) in entries.items()
                }
                for group, entries in self.groups.items()
            }
        }

    def lines(self) -> list[str]:
        out = []
        for group, entries in self.groups.items():
            subjects = [(n, s) for n, (s, is_subject) in entries.items() if is_subject]
            if len(subjects) != 1:
                out.append(f"{group}: needs exactly one subject, has {len(subjects)}")
                continue
            name, t0 = subjects[0]
            out.append(f"{group}: {name} median {format_duration(t0)}")
            for other, (t, is_subject) in entries.items():
                if not is_subject:
                    out.append(f"    vs {other}: {format_duration(t)} -> {t / t0:,.1f}x")
        return out


RESULTS = RatioResults()


@pytest.fixture
def record_ratio(benchmark, request):
    """``record_ratio(group, subject=False, name=None)``: record this test's benchmark median
    (name defaults to the test id). Does nothing when benchmarks are disabled."""

    def record(group: str, subject: bool = False, name: str | None = None) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            RESULTS.record(group, name or request.node.name, stats.stats.median, subject=subject)

    return record


@pytest.fixture
def results():
    """The shared ``RESULTS``, for figures ``benchmark`` does not time itself (budgets, percentiles)."""
    return RESULTS


def pytest_collect_file(file_path, parent):
    # bench_*.py is not in pytest's default pattern; a path given on the command line is
    # collected by pytest itself, so leave those alone.
    if file_path.name.startswith("bench_") and file_path.suffix == ".py" and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session):
    path = os.environ.get(RATIOS_ENV)
    if path:
        from fastinfer.atomic import write_atomic_json

        write_atomic_json(path, RESULTS.to_dict())


def pytest_terminal_summary(terminalreporter):
    if RESULTS.groups:
        terminalreporter.section("ratios (baseline median / subject median)")
        for line in RESULTS.lines():
            terminalreporter.write_line(line)
