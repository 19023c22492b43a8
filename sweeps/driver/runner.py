"""The sweep driver: reconcile, run trials through Ray, record each in MLflow then Optuna, select, promote.

Ordering rule that makes resume safe: a trial's MLflow run is created when the point is proposed and finished
(adapter uploaded, then status FINISHED) *before* Optuna is told. So after a crash:
  Optuna RUNNING + MLflow COMPLETE  -> the tell was lost: tell Optuna from MLflow's metrics;
  Optuna RUNNING + MLflow otherwise -> the trial was interrupted: FAIL it in both and queue its point again.
This module imports neither ray nor mlflow nor optuna: it goes through sweeps/driver/cluster (Ray Tune),
sweeps/tracking (MLflow) and sweeps/driver/study (Optuna); the coordinator (coordinator.py) writes both records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sweeps import store
from sweeps.driver import prepare
from sweeps.driver.cluster import tune
from sweeps.driver.coordinator import Coordinator, budget
from sweeps.driver.study.study import Study
from sweeps.spec import SweepSpec
from sweeps.tracking.tracker import Tracker


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    counts: dict[str, int]
    ran: int
    wall_seconds: float
    reconciled: list[str]
    interrupted: int = 0
    stopped: str | None = None  # why the driver stopped proposing before the budget was spent (None: it did not)


def reconcile(spec: SweepSpec, study: Study, tracker: Tracker) -> list[str]:
    """Repair what a crashed driver left behind; returns one line per repair."""
    notes = []
    records = {r.trial_number: r for r in tracker.trial_records(spec.name)}
    live = study.live_drivers()
    for trial in study.stale_running(live):
        rec = records.get(trial.number)
        if rec is not None and rec.state == "COMPLETE" and rec.status == "FINISHED":
            values = [rec.metrics.get(m) for m in spec.metric_names()]
            if all(v is not None for v in values):
                study.tell(trial.number, "COMPLETE", values=values,
                           attrs={"metrics": rec.metrics, "mlflow_run_id": rec.run_id, "reconciled": True})
                notes.append(f"trial {trial.number}: finished in MLflow, told Optuna now")
                continue
        reason = "interrupted: the driver stopped while it ran; its point is queued again"
        if rec is not None:
            tracker.discard_adapter(rec.run_id)  # it may have died between the adapter upload and FINISHED
            tracker.finish_trial(rec.run_id, "FAILED", reason=reason)
        study.tell(trial.number, "FAIL", attrs={"reason": reason, "interrupted": True})
        study.enqueue(trial.params)
        notes.append(f"trial {trial.number}: interrupted, marked FAIL and re-queued")
    running_elsewhere = {t.number for t in study.trials() if t.state == "RUNNING" and t.attrs.get("driver") in live}
    for number in tracker.reconcile_running(spec.name, keep=running_elsewhere):
        notes.append(f"trial {number}: MLflow run left RUNNING, marked FAILED")
    return notes


def open_sweep(spec: SweepSpec, spec_text: str) -> tuple[Study, Tracker, str]:
    study = Study(spec, store.study_storage(spec.infra.study_storage))
    tracker = Tracker(store.tracking_uri(spec.infra.tracking_uri))
    from sweeps.driver import inputs

    parent = tracker.start_sweep(spec.name, spec_text, spec.description,
                                 extra_tags={"sweeps.base_model": spec.model.base, "sweeps.task": spec.task},
                                 datasets=inputs.describe(spec))
    return study, tracker, parent


def run_sweep(spec: SweepSpec, spec_text: str, address: str | None = None, listener: Any = None,
              on_coordinator: Any = None) -> SweepOutcome:
    started = time.time()
    # Data, model and target checks first: a bad data file or a target group the model lacks fails here,
    # before any study, experiment or run is created.
    prepare.prepare(spec)
    refs = prepare.reference_points(spec)  # majority class and linear probe: computed once per base and data, cached
    lock = store.driver_lock(store.study_storage(spec.infra.study_storage), spec.name)  # SQLite: one driver
    try:
        return _run_locked(spec, spec_text, address, listener, on_coordinator, started, refs)
    finally:
        if lock is not None:
            lock.close()


def _run_locked(spec: SweepSpec, spec_text: str, address: str | None, listener: Any, on_coordinator: Any,
                started: float, refs: dict | None = None) -> SweepOutcome:
    study, tracker, parent = open_sweep(spec, spec_text)
    for name, figures in (refs or {}).items():  # runs of the experiment beside the trials, tagged as baselines
        tracker.log_baseline(spec.name, parent, name, figures, {"baseline": name, "base_model": spec.model.base})
    notes = reconcile(spec, study, tracker)
    remaining = budget(spec) - study.asked()
    coordinator = Coordinator(spec, study, tracker, parent, max(0, remaining), listener)
    coordinator.baselines = dict(refs or {})
    if on_coordinator:
        on_coordinator(coordinator)
    if remaining > 0:
        coordinator.start_heartbeat()
        try:
            tune.run_tune(spec, coordinator, remaining, str(store.store_dir()),
                             store.ray_address(address or spec.infra.ray_address))
        finally:
            coordinator.close_open()
            coordinator.stop_heartbeat()
            tune.shutdown()
    counts = study.counts()
    status = "FINISHED" if study.finished() >= budget(spec) else "KILLED"
    tracker.finish_sweep(parent, status=status, metrics={f"trials_{k.lower()}": v for k, v in counts.items()})
    ran = len([r for r in coordinator.rows.values() if r.ended])
    interrupted = len([r for r in coordinator.rows.values() if r.state == "INTERRUPTED"])
    return SweepOutcome(spec.name, parent, counts, ran, time.time() - started, notes, interrupted,
                        coordinator.stop_reason)
