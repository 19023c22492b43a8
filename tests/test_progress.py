"""The live view: a long trial shows its epochs and how long it has run, in the table and in plain (log) mode."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

from rich.console import Console

from sweeps.cli.live import LiveView
from sweeps.driver.coordinator import TrialRow
from sweeps.spec import parse_yaml, validate_dict

SPEC = """
name: view
model: {base: bundled:all-minilm-l6-v2}
data: {source: bundled:drug-reviews, text_column: review, label_column: rating}
params: {epochs: 3}
search: {space: {rank: [2, 4]}}
objectives: [{metric: macro_f1, direction: maximize}]
budget: {trials: 2}
"""


def test_plain_mode_prints_each_epoch_once_and_the_end():
    spec = validate_dict(parse_yaml(SPEC))
    out = io.StringIO()
    view = LiveView(spec, Console(file=out, width=200), enabled=False)
    row = TrialRow(number=0, params={"rank": 2}, state="RUNNING", started=time.time() - 75)
    coordinator = SimpleNamespace(rows={0: row}, remaining=1)
    row.epoch, row.metrics = 1, {"macro_f1": 0.41}
    view.update(coordinator)
    view.update(coordinator)  # nothing new: no second line
    row.state, row.epoch, row.ended, row.metrics = "COMPLETE", 3, time.time(), {"macro_f1": 0.47}
    view.update(coordinator)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trial   0 epoch 1/3  macro_f1=0.41  (1m1") and len(lines) == 2
    assert lines[1].startswith("trial   0 COMPLETE") and "macro_f1=0.47" in lines[1]


def test_table_shows_epoch_of_total_and_running_time():
    spec = validate_dict(parse_yaml(SPEC))
    out = io.StringIO()
    console = Console(file=out, width=200)
    view = LiveView(spec, console, enabled=False)
    view.attach(SimpleNamespace(rows={0: TrialRow(number=0, params={"rank": 4}, state="RUNNING", epoch=2,
                                                  started=time.time() - 130)}, remaining=1))
    console.print(view.render())
    assert "2/3" in out.getvalue() and "2m1" in out.getvalue()


def test_live_front_is_the_tolerant_front():
    """Two trials 0.3 MB apart in memory and two SEs apart in F1: strictly both are on the front; the live view
    stars only the better one, as `sweep pareto` does."""
    spec = validate_dict(parse_yaml(SPEC.replace(
        "objectives: [{metric: macro_f1, direction: maximize}]",
        "objectives: [{metric: macro_f1, direction: maximize}, {metric: peak_memory_mb, direction: minimize}]")))
    view = LiveView(spec, Console(file=io.StringIO()), enabled=False)
    rows = [TrialRow(number=i, params={}, state="COMPLETE", started=0.0) for i in range(2)]
    rows[0].metrics = {"macro_f1": 0.439, "macro_f1_se": 0.04, "peak_memory_mb": 300.0}
    rows[1].metrics = {"macro_f1": 0.523, "macro_f1_se": 0.04, "peak_memory_mb": 300.3}
    assert view._front(rows) == {1}
    exact = validate_dict(parse_yaml(SPEC.replace(
        "objectives: [{metric: macro_f1, direction: maximize}]",
        "objectives: [{metric: macro_f1, direction: maximize}, "
        "{metric: peak_memory_mb, direction: minimize, tolerance: 0}]")))
    for r in rows:  # no SE and memory stated exact: trial 0's 0.3 MB less memory keeps it on the front
        del r.metrics["macro_f1_se"]
    assert LiveView(exact, Console(file=io.StringIO()), enabled=False)._front(rows) == {0, 1}
