"""Print the fault-suite table of issue 7 (markdown) from the rows the fault tests wrote.

    SWEEPS_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/python -m pytest -m faults tests/faults
    .venv/bin/python scripts/fault_table.py /tmp/faults.jsonl

Each row comes from tests/faults/_invariants.check (one per fault; faults injected into one sweep share its
counts). `retried`: Ray restarts of a trial whose worker died + trials a crash interrupted and re-queued.
`lost` and `orphans` must be 0 (the checker fails the test otherwise).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

COLUMNS = ("fault", "sweep", "asked", "completed", "failed", "retried", "lost", "orphans")


def _order(label: str) -> tuple[int, str]:
    number = re.match(r"\s*(\d+)", label)
    return (int(number.group(1)) if number else 99, label)


def table(rows: list[dict]) -> str:
    latest = {row["fault"]: row for row in rows}  # a test run twice: its last row counts
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for label in sorted(latest, key=_order):
        row = latest[label]
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else os.environ.get("SWEEPS_FAULT_REPORT", ""))
    if not path.is_file():
        print(f"usage: {argv[0]} ROWS.jsonl (written by the fault tests when SWEEPS_FAULT_REPORT is set)",
              file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(table(rows))
    bad = [r["fault"] for r in rows if r.get("lost") or r.get("orphans")]
    if bad:
        print(f"\nNOT OK: lost or orphaned in {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
