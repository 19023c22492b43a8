"""The live view: a long trial shows its epochs and how long it has run, in the table and in plain (log) mode."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

from rich.console import Console

from sweeps.progress import LiveView
from sweeps.runner import TrialRow
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
