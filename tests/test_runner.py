"""The driver's bookkeeping without Ray: every outcome lands identically in MLflow and Optuna, and a crash
between the two is reconciled on the next start."""

from __future__ import annotations

import pytest

from sweeps.driver import coordinator, runner
from sweeps.driver.study.study import Study
from sweeps.spec import parse_yaml, validate_dict
from sweeps.tracking.tracker import Tracker

SPEC = """
name: NAME
model: {base: bundled:all-minilm-l6-v2}
data: {source: bundled:drug-reviews}
search: {sampler: random, space: {rank: [2, 4, 8]}}
objectives:
  - {metric: macro_f1, direction: maximize}
  - {metric: peak_memory_mb, direction: minimize}
budget: {trials: 6, concurrency: 1}
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
    coord = coordinator.Coordinator(spec, study, t, parent, remaining=5)
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
    assert study.asked() == 4
    assert mlflow[numbers[0]].params["rank"] == str(optuna[numbers[0]].params["rank"])


def test_missing_objective_fails_the_trial(tracker, tmp_path):
    spec, study, t, parent = _setup(tracker, "missing")
    coord = coordinator.Coordinator(spec, study, t, parent, remaining=1)
    n = coord.propose()["trial_number"]
    result = _final(_adapter(tmp_path))
    del result["peak_memory_mb"]
    coord.completed(n, result, pruned=False, error=None)
    assert study.trials()[0].state == "FAIL"
    assert "objective" in t.trial_records("missing")[0].tags["sweeps.failure_reason"]


def test_reconcile_after_a_crash_between_mlflow_and_optuna(tracker, tmp_path):
    spec, study, t, parent = _setup(tracker, "crash")
    coord = coordinator.Coordinator(spec, study, t, parent, remaining=2)
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


def test_reconcile_after_a_crash_inside_the_mlflow_close(tracker, tmp_path):
    """The driver died inside Tracker.finish_trial: the adapter uploaded, the run not FINISHED yet (issue 7, fault 2;
    the other crash windows are killed for real in tests/faults/test_driver_faults.py). Reconcile must not keep the
    uploaded adapter on a run that is not FINISHED: it is removed, the run FAILED, the point queued again."""
    spec, study, t, parent = _setup(tracker, "crash-in-close")
    coord = coordinator.Coordinator(spec, study, t, parent, remaining=1)
    number = coord.propose()["trial_number"]
    run_id = coord.run_ids[number]
    t.client.log_artifacts(run_id, str(_adapter(tmp_path)), artifact_path="adapter")  # ...and then SIGKILL
    assert t.client.list_artifacts(run_id, "adapter")
    notes = runner.reconcile(spec, study, t)
    assert notes == [f"trial {number}: interrupted, marked FAIL and re-queued"]
    [record] = t.trial_records("crash-in-close")
    assert (record.status, record.state) == ("FAILED", "FAILED")
    assert t.client.list_artifacts(run_id, "adapter") == []
    assert study.waiting() == 1 and study.trials()[0].attrs["interrupted"] is True


def test_grid_budget_is_capped_at_the_grid():
    spec = validate_dict(parse_yaml(SPEC.replace("NAME", "g").replace("sampler: random", "sampler: grid")
                                    .replace("trials: 6", "trials: 10")))
    assert coordinator.budget(spec) == 3


def test_a_live_driver_keeps_its_trials_and_shares_the_budget(tracker, tmp_path):
    """Two `sweep run` on one study (a team on PostgreSQL): B must not reconcile A's running trials away, and
    both together stop at the budget."""
    spec, study, t, parent = _setup(tracker, "two-drivers")
    a = coordinator.Coordinator(spec, study, t, parent, remaining=4)
    a.start_heartbeat()
    try:
        running = a.propose()["trial_number"]
        assert runner.reconcile(spec, study, t) == []  # what driver B does at its start
        assert study.trials()[0].state == "RUNNING"
        assert t.trial_records("two-drivers")[0].status == "RUNNING"
        b = coordinator.Coordinator(spec, study, t, parent, remaining=6)
        proposed = [b.propose() for _ in range(6)]
        assert sum(p is not None for p in proposed) == 5  # 6 in the budget, 1 already running in A
        assert a.propose() is None
    finally:
        a.stop_heartbeat()
    a.completed(running, _final(_adapter(tmp_path)), pruned=False, error=None)
    assert study.asked() == 6


def test_a_dead_drivers_trials_are_reconciled(tracker):
    spec, study, t, parent = _setup(tracker, "dead-driver")
    a = coordinator.Coordinator(spec, study, t, parent, remaining=1)
    a.start_heartbeat()
    a.stop_heartbeat()
    a.propose()
    assert a.driver in study.live_drivers()  # it beat a moment ago
    assert study.stale_running() == []
    assert study.live_drivers(max_age_s=0.0) == set()  # ... and is dead once its beat is older than the timeout
    assert [tr.state for tr in study.stale_running(live=set())] == ["RUNNING"]


def _wait_for(predicate, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_failing_heartbeat_is_logged_retried_and_stops_proposals(tracker, tmp_path, monkeypatch, caplog):
    """Issue 17: the beat's exceptions used to be swallowed without a word; 45 s later a second driver took this
    one for dead and failed its running trials. Now each failure is logged, retried sooner, and after
    MAX_MISSED_BEATS in a row the driver stops proposing and says why."""
    spec, study, t, parent = _setup(tracker, "heartbeat-fails")
    monkeypatch.setenv("SWEEPS_FAULT_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("SWEEPS_FAULT", "driver.heartbeat:enospc:skip=1")  # the first beat passes, then none
    coord = coordinator.Coordinator(spec, study, t, parent, remaining=4)
    coord.heartbeat_s = 0.2
    caplog.set_level("WARNING", logger="sweeps.driver.coordinator")
    coord.start_heartbeat()
    try:
        running = coord.propose()["trial_number"]
        assert _wait_for(coord.stopping), caplog.text
    finally:
        coord.stop_heartbeat()
    failures = [r for r in caplog.records if "heartbeat" in r.getMessage() and r.levelname == "WARNING"]
    assert len(failures) >= coordinator.MAX_MISSED_BEATS
    assert "heartbeat 1/3 failed: OSError" in failures[0].getMessage()
    assert "No space left on device" in failures[0].getMessage()
    assert "stops proposing" in caplog.text and "3 times in a row" in coord.stop_reason
    assert coord.propose() is None  # budget left (3), but no new trials
    assert study.asked() == 1 and study.trials()[0].state == "RUNNING"  # the running one is left to finish
    coord.completed(running, _final(_adapter(tmp_path)), pruned=False, error=None)
    assert study.trials()[0].state == "COMPLETE"


def test_a_transient_heartbeat_failure_recovers(tracker, tmp_path, monkeypatch, caplog):
    spec, study, t, parent = _setup(tracker, "heartbeat-blip")
    monkeypatch.setenv("SWEEPS_FAULT_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("SWEEPS_FAULT", "driver.heartbeat:enospc:skip=1:times=2")  # 2 misses < MAX_MISSED_BEATS
    coord = coordinator.Coordinator(spec, study, t, parent, remaining=2)
    coord.heartbeat_s = 0.2
    caplog.set_level("WARNING", logger="sweeps.driver.coordinator")
    coord.start_heartbeat()
    try:
        assert _wait_for(lambda: "recovered after 2 failure(s)" in caplog.text), caplog.text
    finally:
        coord.stop_heartbeat()
    assert not coord.stopping() and coord.stop_reason is None and coord.missed == 0
    assert coord.propose() is not None
