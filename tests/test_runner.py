"""The driver's bookkeeping without Ray: every outcome lands identically in MLflow and Optuna, and a crash
between the two is reconciled on the next start."""

from __future__ import annotations

import pytest

from sweeps import runner
from sweeps.search import Study
from sweeps.spec import parse_yaml, validate_dict
from sweeps.track import Tracker

SPEC = """
name: NAME
model: {base: bundled:all-minilm-l6-v2}
data: {source: bundled:drug-reviews}
search: {sampler: random, space: {rank: [2, 4, 8]}}
objectives:
  - {metric: macro_f1, direction: maximize}
  - {metric: peak_memory_mb, direction: minimize}
budget: {trials: 4, concurrency: 1}
"""


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    return Tracker(f"sqlite:///{root / 'mlflow.db'}"), root


def _setup(tracker, name):
    t, root = tracker
    spec = validate_dict(parse_yaml(SPEC.replace("NAME", name)))
    study = Study(spec, f"sqlite:///{root / 'optuna.db'}")
    parent = t.start_sweep(name, SPEC, "")
    return spec, study, t, parent


def _adapter(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir(exist_ok=True)
    (d / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (d / "adapter_config.json").write_text("{}")
    return d


def _final(adapter, f1=0.5, mem=100.0):
    return {"phase": "final", "state": "COMPLETE", "macro_f1": f1, "peak_memory_mb": mem, "epoch": 2,
            "adapter_dir": str(adapter)}


def test_each_outcome_is_recorded_the_same_in_both_stores(tracker, tmp_path):
    spec, study, t, parent = _setup(tracker, "outcomes")
    coord = runner.Coordinator(spec, study, t, parent, remaining=5)
    numbers = [coord.propose()["trial_number"] for _ in range(5)]
    assert coord.propose() is None  # budget exhausted
    coord.epoch(numbers[0], {"phase": "epoch", "epoch": 1, "macro_f1": 0.3, "peak_memory_mb": 90.0})
    coord.completed(numbers[0], _final(_adapter(tmp_path)), pruned=False, error=None)
    coord.completed(numbers[1], {"phase": "final", "state": "FAILED", "reason": "loss became nan at epoch 1"},
                    pruned=False, error=None)
    coord.completed(numbers[2], {"phase": "epoch", "epoch": 1, "macro_f1": 0.1, "peak_memory_mb": 120.0},
                    pruned=True, error=None)
    coord.completed(numbers[3], None, pruned=False, error="worker failed: killed")
    coord.completed(numbers[4], {"phase": "epoch", "epoch": 1}, pruned=False, error=None)  # Ctrl-C
    optuna = {tr.number: tr for tr in study.trials()}
    mlflow = {r.trial_number: r for r in t.trial_records("outcomes")}
    assert [optuna[n].state for n in numbers] == ["COMPLETE", "FAIL", "PRUNED", "FAIL", "FAIL"]
    assert [mlflow[n].state for n in numbers] == ["COMPLETE", "FAILED", "PRUNED", "FAILED", "FAILED"]
    assert [mlflow[n].status for n in numbers] == ["FINISHED", "FAILED", "KILLED", "FAILED", "FAILED"]
    assert optuna[numbers[0]].values == [0.5, 100.0]
    assert mlflow[numbers[0]].metrics["macro_f1"] == 0.5  # the final value, not the epoch-1 value
    assert "nan" in mlflow[numbers[1]].tags["sweeps.failure_reason"]
    assert "killed" in mlflow[numbers[3]].tags["sweeps.failure_reason"]
    assert study.waiting() == 1  # the interrupted point is queued again
    assert study.finished() == 4  # ... and does not count against the budget
    assert mlflow[numbers[0]].params["rank"] == str(optuna[numbers[0]].params["rank"])


def test_missing_objective_fails_the_trial(tracker, tmp_path):
    spec, study, t, parent = _setup(tracker, "missing")
    coord = runner.Coordinator(spec, study, t, parent, remaining=1)
    n = coord.propose()["trial_number"]
    result = _final(_adapter(tmp_path))
    del result["peak_memory_mb"]
    coord.completed(n, result, pruned=False, error=None)
    assert study.trials()[0].state == "FAIL"
    assert "objective" in t.trial_records("missing")[0].tags["sweeps.failure_reason"]


def test_reconcile_after_a_crash_between_mlflow_and_optuna(tracker, tmp_path):
    spec, study, t, parent = _setup(tracker, "crash")
    coord = runner.Coordinator(spec, study, t, parent, remaining=2)
    told_lost = coord.propose()["trial_number"]
    interrupted = coord.propose()["trial_number"]
    # the driver died after MLflow finished trial 0 but before telling Optuna; trial 1 was mid-training
    t.log_metrics(coord.run_ids[told_lost], {"macro_f1": 0.6, "peak_memory_mb": 80.0})
    t.finish_trial(coord.run_ids[told_lost], "COMPLETE", adapter_dir=_adapter(tmp_path))
    notes = runner.reconcile(spec, study, t)
    assert len(notes) == 2
    states = {tr.number: tr for tr in study.trials()}
    assert states[told_lost].state == "COMPLETE" and states[told_lost].values == [0.6, 80.0]
    assert states[interrupted].state == "FAIL"
    records = {r.trial_number: r for r in t.trial_records("crash")}
    assert records[interrupted].status == "FAILED" and records[told_lost].status == "FINISHED"
    assert study.waiting() == 1
    assert not study.stale_running()
    assert runner.reconcile(spec, study, t) == []  # idempotent


def test_grid_budget_is_capped_at_the_grid():
    spec = validate_dict(parse_yaml(SPEC.replace("NAME", "g").replace("sampler: random", "sampler: grid")
                                    .replace("trials: 4", "trials: 10")))
    assert runner.budget(spec) == 3
