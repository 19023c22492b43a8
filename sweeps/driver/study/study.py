"""The persistent Optuna study of a sweep, driven by ask/tell; and the small free-form studies of `sweep fuse`.

The study is driven by ask/tell from the sweep driver (Ray Tune's searcher calls in), so Optuna's own heartbeat
never runs: stale RUNNING trials left by a crashed driver are reconciled explicitly (`stale_running`), and drivers
keep heartbeats of their own in the study. Every storage call retries a locked database (sweeps/driver/study/
storage.py).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeps import faults, store
from sweeps.driver.study.space import distributions, make_sampler
from sweeps.driver.study.storage import open_storage, retry
from sweeps.spec import SweepSpec

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
HEARTBEAT_S = 10.0  # how often a driver marks itself alive
HEARTBEAT_TIMEOUT_S = 45.0  # a driver silent for this long is taken for dead


@dataclass(frozen=True)
class StudyTrial:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    params: dict[str, Any]
    values: list[float] | None
    attrs: dict[str, Any]
    started: float | None = None  # epoch seconds (Optuna's datetime_start)


# A RUNNING trial not yet tagged with its driver (between Coordinator.propose's ask and its set_attr) belongs to no
# one for a moment: another driver starting then took it for a crashed driver's and failed it (seen in
# test_scaleout's two-driver test). Untagged trials count as stale only after this long.
UNCLAIMED_GRACE_S = 120.0


class Study:
    """One sweep's persistent Optuna study: ask for a point, tell its outcome."""

    def __init__(self, spec: SweepSpec, storage_url: str):
        self.spec = spec
        self.dists = distributions(spec)
        self.url = storage_url
        storage = open_storage(storage_url)
        self.study = retry(
            lambda: optuna.create_study(
                study_name=spec.name,
                storage=storage,
                directions=spec.directions(),
                sampler=make_sampler(spec),
                load_if_exists=True,
            ),
            "create_study",
        )
        stored = [d.name.lower() for d in self.study.directions]
        if stored != spec.directions():
            raise ValueError(
                f"study {spec.name!r} already exists with directions {stored}, the spec asks {spec.directions()}; "
                "rename the sweep to start a new study"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names(spec.metric_names())

    def ask(self) -> tuple[int, dict[str, Any]]:
        # Not wrapped in retry: each storage write inside retries alone (see storage.PatientStorage).
        trial = self.study.ask(self.dists)
        return trial.number, dict(trial.params)

    def tell(self, number: int, state: str, values: list[float] | None = None, attrs: dict | None = None) -> None:
        for key, value in (attrs or {}).items():
            self.study._storage.set_trial_user_attr(self._id(number), key, value)
        faults.point("study.tell", storage=self.url, trial=number, state=state)
        target = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}[state]
        try:
            self.study.tell(number, values if target == TrialState.COMPLETE else None, state=target)
        except RuntimeError as exc:
            # GridSampler calls study.stop() once the grid is covered, which only works inside optimize(); the
            # state was stored before it raised (optuna's _tell stores in a `finally`), so nothing is lost.
            if "Study.stop" not in str(exc):
                raise

    def set_attr(self, number: int, key: str, value: Any) -> None:
        self.study._storage.set_trial_user_attr(self._id(number), key, value)

    def enqueue(self, params: dict[str, Any]) -> None:
        """Re-propose the exact point of an interrupted trial (it is run again within the budget)."""
        self.study.enqueue_trial(params, skip_if_exists=False)

    def _id(self, number: int) -> int:
        return self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)

    def trials(self) -> list[StudyTrial]:
        out = []
        for t in self.study.get_trials(deepcopy=False):
            started = t.datetime_start.timestamp() if t.datetime_start is not None else None
            out.append(StudyTrial(t.number, t.state.name, dict(t.params), t.values, dict(t.user_attrs), started))
        return out

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.trials():
            counts[t.state] = counts.get(t.state, 0) + 1
        return counts

    def finished(self) -> int:
        """Trials that count against the budget. An interrupted trial (stopped by Ctrl-C or a crashed driver) is
        FAIL in Optuna, which cannot re-open a trial, but its point is queued again and it does not count."""
        return sum(1 for t in self.trials() if t.state in FINISHED_STATES and not t.attrs.get("interrupted"))

    def waiting(self) -> int:
        return self.counts().get("WAITING", 0)

    def asked(self) -> int:
        """Trials that use up the budget, counting those running now (in this driver or another one)."""
        return sum(1 for t in self.trials()
                   if t.state in (*FINISHED_STATES, "RUNNING") and not t.attrs.get("interrupted"))

    # Optuna's own heartbeat never runs under ask/tell, so drivers keep theirs in study user attributes: a
    # RUNNING trial whose driver beat recently belongs to a live `sweep run`, not to a crash.
    def heartbeat(self, driver: str) -> None:
        beat = {"time": time.time(), "machine": store.machine_id(), "pid": os.getpid()}
        self.study.set_user_attr(f"driver.{driver}", beat)

    def live_drivers(self, max_age_s: float = HEARTBEAT_TIMEOUT_S) -> set[str]:
        """Drivers that beat within `max_age_s`, less those that ran on this machine and whose process is gone:
        a `sweep run` restarted right after a crash (SIGKILL, OOM killer) must not wait 45 s, nor take the dead
        driver's RUNNING trials for a live driver's and leave them RUNNING (found by the driver-kill faults)."""
        now, here = time.time(), store.machine_id()
        live = set()
        for key, value in self.study._storage.get_study_user_attrs(self.study._study_id).items():
            if not key.startswith("driver."):
                continue
            beat = value if isinstance(value, dict) else {"time": value}  # a bare timestamp: older drivers
            if not isinstance(beat.get("time"), (int, float)) or now - beat["time"] >= max_age_s:
                continue
            if beat.get("machine") == here and isinstance(beat.get("pid"), int) and not store.pid_alive(beat["pid"]):
                continue
            live.add(key.split(".", 1)[1])
        return live

    def stale_running(self, live: set[str] | None = None) -> list[StudyTrial]:
        live = self.live_drivers() if live is None else live
        now = time.time()
        return [t for t in self.trials() if t.state == "RUNNING" and t.attrs.get("driver") not in live
                and not ("driver" not in t.attrs and t.started is not None and now - t.started < UNCLAIMED_GRACE_S)]


def delete_study(name: str, storage_url: str) -> None:
    optuna.delete_study(study_name=name, storage=storage_url)


def study_names(storage_url: str) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage_url)]


# ---------------------------------------------------------------- small free-form studies (adapter fusion)


class Suggest:
    """What an objective sees of an Optuna trial, so callers (sweeps/production/fusion.py) never import optuna."""

    def __init__(self, trial: optuna.Trial):
        self.number = trial.number
        self._trial = trial

    def categorical(self, name: str, choices: list) -> Any:
        return self._trial.suggest_categorical(name, choices)

    def float(self, name: str, low: float, high: float) -> float:
        return self._trial.suggest_float(name, low, high)


def optimize(name: str, storage_url: str, objective: Callable[[Suggest], float], n_trials: int, seed: int,
             direction: str = "minimize") -> tuple[int, dict[str, Any], float]:
    """Run (or continue) a single-objective TPE study; return the best (trial number, params, value).

    An objective that raises fails only its own trial (Optuna records FAIL and goes on), so one bad candidate
    does not end the search.
    """
    study = retry(lambda: optuna.create_study(
        study_name=name, storage=storage_url, direction=direction, load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, n_trials))), "create_study")
    study.optimize(lambda t: objective(Suggest(t)), n_trials=n_trials, catch=(Exception,))
    best = study.best_trial
    return best.number, dict(best.params), float(best.value)
