"""The coordinator: in the driver process, the one writer of MLflow and Optuna for Ray's trial events.

Ray Tune's searcher (sweeps.driver.cluster) asks it for points (`propose`) and hands it every epoch report and
every trial's end (`epoch`, `completed`, `retried`). For each trial it writes MLflow first and tells Optuna second
(the ordering rule of sweeps/driver/runner.py), and it keeps the driver's heartbeat in the study so that a second
driver on the same study knows this one is alive.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps import faults, store
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
            # MLflow first (adapter uploaded, then FINISHED), Optuna second: see sweeps/driver/runner.py.
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



def budget(spec: SweepSpec) -> int:
    """Trials the sweep asks for; a grid never asks for more points than it has."""
    from sweeps.driver.study.space import grid_size

    return min(spec.budget.trials, grid_size(spec)) if spec.search.sampler == "grid" else spec.budget.trials


