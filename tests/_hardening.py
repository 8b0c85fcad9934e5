"""The hardening report: hostile cases tried and properties checked, counted, printed by the run.

Hostile-input tests call ``hostile(category, case)`` once per case they try (a parametrised
test therefore counts one case per parameter); hypothesis properties call ``example(name)``
at the top of their body, so every example hypothesis runs (shrinking included) is counted.
``tests/conftest.py`` prints the table in ``pytest_terminal_summary``.
"""

from __future__ import annotations

from collections import Counter

HOSTILE: Counter[str] = Counter()  # category -> cases tried
CASES: set[tuple[str, str]] = set()
EXAMPLES: Counter[str] = Counter()  # property -> hypothesis examples run


def hostile(category: str, case: str) -> None:
    HOSTILE[category] += 1
    CASES.add((category, case))


def example(prop: str) -> None:
    EXAMPLES[prop] += 1


def report_lines() -> list[str]:
    if not HOSTILE and not EXAMPLES:
        return []
    width = max(map(len, [*HOSTILE, *EXAMPLES, "property (hypothesis)", "TOTAL 999 properties"])) + 2
    lines = [f"{'hostile category':<{width}}{'cases':>7}"]
    lines += [f"{c:<{width}}{n:>7}" for c, n in sorted(HOSTILE.items())]
    lines.append(f"{'TOTAL hostile cases':<{width}}{sum(HOSTILE.values()):>7}")
    lines.append("")
    lines.append(f"{'property (hypothesis)':<{width}}{'examples':>9}")
    lines += [f"{p:<{width}}{n:>9}" for p, n in sorted(EXAMPLES.items())]
    lines.append(f"{'TOTAL ' + str(len(EXAMPLES)) + ' properties':<{width}}{sum(EXAMPLES.values()):>9}")
    return lines
