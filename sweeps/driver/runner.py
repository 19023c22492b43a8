"""The sweep driver: reconcile, run trials through Ray, record each in MLflow then Optuna, select, promote.

Ordering rule that makes resume safe: a trial's MLflow run is created when the point is proposed and finished
(adapter uploaded, then status FINISHED) *before* Optuna is told. So after a crash:
  Optuna RUNNING + MLflow COMPLETE  -> the tell was lost: tell Optuna from MLflow's metrics;
  Optuna RUNNING + MLflow otherwise -> the trial was interrupted: FAIL it in both and queue its point again.
This module imports neither ray nor mlflow nor optuna: it goes through execute, track and search.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sweeps import faults, store
from sweeps.driver import prepare
from sweeps.driver.cluster import tune
from sweeps.driver.study.study import HEARTBEAT_S, Study
from sweeps.spec import SweepSpec
from sweeps.tracking.tracker import Tracker

log = logging.getLogger(__name__)
# A failed beat is retried after HEARTBEAT_S / 4; after MAX_MISSED_BEATS failures in a row (~15 s at the default
# 10 s) the driver stops proposing, well inside the 45 s (HEARTBEAT_TIMEOUT_S) after which another driver on the
# study takes it for dead and fails its running trials: it then has no new trials of ours to reap.
MAX_MISSED_BEATS = 3


@dataclass
class TrialRow:
    number: int
    params: dict[str, Any]
    state: str = "STARTING"
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    retries: int = 0


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


class Coordinator:
    """Receives Ray's trial events in the driver process and writes MLflow and Optuna (one writer each)."""

    def __init__(self, spec: SweepSpec, study: Study, tracker: Tracker, parent_run_id: str, remaining: int,
                 listener: Any = None):
        self.spec, self.study, self.tracker, self.parent = spec, study, tracker, parent_run_id
        self.remaining = remaining
        self.rows: dict[int, TrialRow] = {}
        self.run_ids: dict[int, str] = {}
        self.listener = listener
        self._stop = threading.Event()
        self.spec_dict = spec.model_dump(mode="json")
        self.driver = uuid.uuid4().hex[:12]
        self._beating = threading.Event()
        self.heartbeat_s, self.max_missed = HEARTBEAT_S, MAX_MISSED_BEATS
        self.missed = 0  # consecutive failed beats
        self.stop_reason: str | None = None
        self.baselines: dict[str, dict[str, float]] = {}  # name -> figures, for the live view's footer

    def _beat(self) -> None:
        faults.point("driver.heartbeat", driver=self.driver)
        self.study.heartbeat(self.driver)

    def start_heartbeat(self) -> None:
        """Mark this driver alive in the study until `stop_heartbeat`, so a concurrent `sweep run` on the same
        study (a team on one PostgreSQL) does not take our running trials for a crash's leftovers."""
        self._beat()  # the first one unguarded: a study we cannot write to fails the sweep before it starts

        def loop() -> None:
            wait = self.heartbeat_s
            while not self._beating.wait(wait):
                wait = self.heartbeat_s if self._beat_once() else self.heartbeat_s / 4

        threading.Thread(target=loop, name="sweeps-heartbeat", daemon=True).start()

    def _beat_once(self) -> bool:
        """One beat; a failure is logged and counted, and `max_missed` in a row stop new proposals."""
        try:
            self._beat()
        except Exception as exc:  # never kill the sweep for it: the running trials may still finish fine
            self.missed += 1
            log.warning("driver %s: heartbeat %d/%d failed: %s: %s", self.driver, self.missed, self.max_missed,
                        type(exc).__name__, exc)
            if self.missed >= self.max_missed and self.stop_reason is None:
                self.stop_reason = (f"the heartbeat failed {self.missed} times in a row (last: "
                                    f"{type(exc).__name__}: {exc}): another driver on this study would soon take "
                                    "this one for dead and fail its trials, so no new trials are proposed; "
                                    "running ones finish, and `sweep run` again continues the sweep")
                log.error("driver %s stops proposing: %s", self.driver, self.stop_reason)
                self.request_stop()
            return False
        if self.missed:
            log.warning("driver %s: heartbeat recovered after %d failure(s)", self.driver, self.missed)
        self.missed = 0
        return True

    def stop_heartbeat(self) -> None:
        self._beating.set()

    # --- called by the Ray searcher
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def propose(self) -> dict[str, Any] | None:
        # The live study, not a count taken at start: other drivers may be filling the same budget.
        if self.stop_reason or self.remaining <= 0 or self.study.asked() >= budget(self.spec):
            return None
        self.remaining -= 1
        number, sampled = self.study.ask()
        self.study.set_attr(number, "driver", self.driver)
        faults.point("driver.proposed", trial=number)  # an Optuna trial with no MLflow run yet
        params = self.spec.trial_params(sampled)  # the one place a trial's parameters are built
        run_id = self.tracker.start_trial(self.spec.name, self.parent, number, params.flat(),
                                          tags={"sweeps.optuna_study": self.spec.name})
        self.study.set_attr(number, "mlflow_run_id", run_id)
        self.run_ids[number] = run_id
        self.rows[number] = TrialRow(number, sampled)
        self._notify()
        return {"trial_number": number, "trial_params": params.model_dump(mode="json"), "spec": self.spec_dict,
                "store": str(store.store_dir()), "cpus": self.spec.budget.cpus_per_trial}

    def epoch(self, number: int, result: dict[str, Any]) -> None:
        faults.point("driver.epoch", trial=number, epoch=result.get("epoch"))  # mid-trial
        row = self.rows[number]
        row.state, row.epoch = "RUNNING", int(result.get("epoch", row.epoch))
        metrics = _numeric(result, self.spec)
        row.metrics.update(metrics)
        self.tracker.log_metrics(self.run_ids[number], metrics, step=row.epoch)
        self._notify()

    def completed(self, number: int, result: dict[str, Any] | None, pruned: bool, error: str | None) -> None:
        row, run_id = self.rows[number], self.run_ids[number]
        result = result or {}
        row.ended = time.time()
        if result.get("phase") == "final" and result.get("state") == "COMPLETE":
            metrics = _numeric(result, self.spec)
            values = [metrics.get(m) for m in self.spec.metric_names()]
            if any(v is None or not math.isfinite(v) for v in values):
                self._fail(number, "an objective metric is missing or not finite in the final result", result)
                return
            row.metrics.update(metrics)
            # MLflow first (adapter uploaded, then FINISHED), Optuna second: see the module docstring.
            from pathlib import Path

            # Same step as the last epoch report: MLflow shows the value at the highest step (then the newest),
            # so the final figures are what the UI's compare view shows.
            self.tracker.log_metrics(run_id, metrics, step=row.epoch)
            # String facts about the run (the Ray node, the memory method, ...) become tags; metrics stay numeric.
            info = {f"sweeps.{k}": str(v) for k, v in result.items() if k.startswith("info.")}
            if result.get("tables_dir"):  # e.g. generations before/after tuning (instruction task)
                self.tracker.log_tables(run_id, Path(result["tables_dir"]))
            try:
                self.tracker.finish_trial(run_id, "COMPLETE", adapter_dir=Path(result["adapter_dir"]),
                                          extra_tags=info)
            except Exception as exc:  # e.g. the store is full: this trial fails, the sweep goes on
                # (uncaught, it escaped into Ray Tune's searcher callback, ended the whole sweep with a
                # traceback and left the Optuna trial RUNNING; found by tests/faults, store full).
                self._fail(number, f"adapter upload failed: {type(exc).__name__}: {exc}", result)
                self._notify()
                return
            faults.point("driver.finished", trial=number)  # MLflow FINISHED, Optuna not told yet
            attrs = {"metrics": metrics, "mlflow_run_id": run_id}
            self.study.tell(number, "COMPLETE", values=values, attrs=attrs)
            row.state = "COMPLETE"
        elif result.get("phase") == "final":
            self._fail(number, result.get("reason") or "trial failed", result)
        elif pruned:
            self.tracker.finish_trial(run_id, "PRUNED", metrics=_numeric(result, self.spec),
                                      reason=f"dominated at rung epoch {result.get('epoch')}")
            self.study.tell(number, "PRUNED", attrs={"reason": "dominated at its rung"})
            row.state = "PRUNED"
        elif error:
            self._fail(number, error, result)
        else:
            self._interrupt(number, "interrupted before it finished")
        self._notify()

    def retried(self, number: int, error: str) -> None:
        """Ray restarts a trial whose worker died (budget.max_retries): same Optuna trial, same MLflow run."""
        row = self.rows.get(number)
        if row is None:
            return
        row.retries += 1
        row.state, row.epoch = "RETRYING", 0
        self.tracker.set_trial_tags(self.run_ids[number], {"sweeps.retries": row.retries,
                                                           "sweeps.last_retry_reason": error[:500]})
        self.study.set_attr(number, "retries", row.retries)
        self._notify()

    def close_open(self) -> list[int]:
        """After Tune returns (done, Ctrl-C or time limit): trials it stopped without telling us are interrupted."""
        open_rows = [n for n, r in self.rows.items() if r.ended is None]
        for number in open_rows:
            self.rows[number].ended = time.time()
            self._interrupt(number, "interrupted: the sweep was stopped (Ctrl-C or time limit)")
        return open_rows

    def _interrupt(self, number: int, why: str) -> None:
        # Free its slot in the budget and run the same point again on the next `sweep run`.
        reason = f"{why}; its point is queued again"
        self.tracker.finish_trial(self.run_ids[number], "FAILED", reason=reason)
        self.study.tell(number, "FAIL", attrs={"reason": reason, "interrupted": True})
        self.study.enqueue(self.rows[number].params)
        self.rows[number].state, self.rows[number].reason = "INTERRUPTED", reason

    def _fail(self, number: int, reason: str, result: dict[str, Any]) -> None:
        row = self.rows[number]
        self.tracker.finish_trial(self.run_ids[number], "FAILED", metrics=_numeric(result, self.spec), reason=reason,
                                  extra_tags={"sweeps.infeasible": str(bool(result.get("infeasible")))})
        self.study.tell(number, "FAIL", attrs={"reason": reason})
        row.state, row.reason = "FAILED", reason

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener(self)


def _numeric(result: dict[str, Any], spec: SweepSpec) -> dict[str, float]:
    skip = {"trial_number", "epoch", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
            "pid", "time_since_restore", "iterations_since_restore", "done"}
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip and "/" not in k
            and not k.startswith("info.")}


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


def budget(spec: SweepSpec) -> int:
    """Trials the sweep asks for; a grid never asks for more points than it has."""
    from sweeps.driver.study.study import grid_size

    return min(spec.budget.trials, grid_size(spec)) if spec.search.sampler == "grid" else spec.budget.trials


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
