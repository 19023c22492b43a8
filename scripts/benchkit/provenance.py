"""Every number in BENCHMARKS.md is in BENCHMARKS.json: the check (tests/test_bench_report.py, scripts/bench.py).

A number of the markdown is sourced when it is
  - a numeric value of the JSON as the report formats numbers: 0 to 4 decimals, `:g`, `:.4g`, thousands separators,
    sign left aside (the report derives ratios, differences and unit conversions into each section's "derived"
    before it formats them: benchkit/report_fmt.py derived), or
  - part of a string of the JSON (a command, a date, a version, a row's label), or
  - part of the report's own prose: a string literal of the report modules ("8 configurations", "goal <= 1.05").
Anything else is a figure the markdown shows and the JSON does not hold.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

# a number not glued to a word or to another number's dot: "bf16" and "L6" hold none, "2.13x" holds 2.13
NUMBER = re.compile(r"(?<![\w.])[-+−]?(\d[\d,]*(?:\.\d+)?|\.\d+)")
REPORT_MODULES = ("report.py", "report_peers.py", "report_quality.py", "report_fmt.py")


def numbers(text: str) -> list[str]:
    """The unsigned number tokens of a text, trailing commas dropped ("8, 16" -> 8 and 16)."""
    return [m.rstrip(",") for m in NUMBER.findall(text) if m.rstrip(",")]


def _renderings(value: float) -> set[str]:
    v = abs(value)
    out = {f"{v:.{k}f}" for k in range(5)} | {f"{v:g}", f"{v:.4g}", f"{v:.3g}"}
    if v == int(v) or v >= 1000:
        out |= {f"{int(round(v)):,}", f"{int(v):,}", str(int(v))}
    out |= {f"{v:,.{k}f}" for k in range(2)}
    return out | {text.lstrip("0") for text in out if text.startswith("0.")}  # ".45" as prose writes it


def sourced(data) -> set[str]:
    """Every rendering of every number in a JSON value, and the number tokens of its strings and keys."""
    out: set[str] = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, (int, float)):
            if item == item and abs(item) != float("inf"):
                out |= _renderings(float(item))
        elif isinstance(item, str):
            out.update(numbers(item))
        elif isinstance(item, dict):
            out.update(t for k in item for t in numbers(str(k)))
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return out


def prose() -> set[str]:
    """Number tokens of the string literals (f-strings' literal parts included) of the report modules."""
    out: set[str] = set()
    for name in REPORT_MODULES:
        tree = ast.parse((Path(__file__).with_name(name)).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.update(numbers(node.value))
    return out


def unsourced(markdown: str, data: dict) -> list[tuple[str, str]]:
    """(number, its line) for each number of the markdown that neither the JSON nor the report's prose holds."""
    known = sourced(data) | prose()
    return [(token, line) for line in markdown.splitlines() for token in numbers(line) if token not in known]
