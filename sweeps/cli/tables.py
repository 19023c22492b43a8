"""Rich tables for `sweep ls`, `sweep show` and `sweep pareto`."""

from __future__ import annotations

from datetime import datetime

from rich.table import Table
from rich.text import Text

from sweeps.cli.common import fmt
from sweeps.cli.live import reference_text
from sweeps.tracking.tracker import Tracker

_STATE_STYLE = {"COMPLETE": "green", "FAILED": "red", "PRUNED": "yellow", "RUNNING": "cyan"}


def sweeps_table(tracker: Tracker | None = None) -> Table:
    tracker = tracker or Tracker()
    table = Table(title=f"sweeps in {tracker.ui_hint()}")
    for col in ("sweep", "status", "trials", "complete", "failed", "started", "description"):
        table.add_column(col)
    for row in tracker.sweeps():
        started = datetime.fromtimestamp(row["start_time"] / 1000).strftime("%Y-%m-%d %H:%M") if row.get(
            "start_time") else ""
        table.add_row(row["name"], row.get("status", ""), str(row.get("trials", 0)), str(row.get("complete", 0)),
                      str(row.get("failed", 0)), started, row.get("description", ""))
    return table


def trials_table(sweep: str, tracker: Tracker | None = None) -> Table:
    from sweeps.driver.promotion.front import sweep_spec
    from sweeps.store import safe_name

    safe_name(sweep, "sweep name")  # before Tracker(): opening it creates the store
    tracker = tracker or Tracker()
    spec = sweep_spec(tracker, sweep)
    axes, metrics = list(spec.search.space), spec.metric_names()
    table = Table(title=f"sweep {sweep}", caption=reference_text(tracker.baselines(sweep), metrics[0]) or None)
    for col in ("trial", "state", *axes, *metrics, "reason"):
        table.add_column(col, max_width=40 if col == "reason" else None, no_wrap=col in ("trial", "state"),
                         overflow="fold")
    for rec in tracker.trial_records(sweep):
        table.add_row(str(rec.trial_number), Text(rec.state, style=_STATE_STYLE.get(rec.state, "")),
                      *[fmt(rec.params.get(a)) for a in axes], *[fmt(rec.metrics.get(m)) for m in metrics],
                      rec.tags.get("sweeps.failure_reason", ""))
    return table


def front_table(report) -> Table:
    names = report.spec.metric_names()
    axes = list(report.spec.search.space)
    table = Table(title=f"Pareto front of {report.spec.name}: {sum(report.front)} of {len(report.records)} "
                        f"complete trials",
                  caption=reference_text(report.baselines, names[0]) or None)
    for col in ("trial", *axes, *[f"{m} ({d[:3]})" for m, d in zip(names, report.spec.directions(), strict=True)]):
        table.add_column(col)
    for rec in sorted(report.front_records(), key=lambda r: -r.metrics[names[0]]):
        table.add_row(str(rec.trial_number), *[fmt(rec.params.get(a)) for a in axes],
                      *[fmt(rec.metrics[m]) for m in names])
    return table
