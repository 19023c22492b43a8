"""Spec -> Optuna: distributions, samplers and the persistent study (the only module importing optuna).

The study is driven by ask/tell from the sweep driver (Ray Tune's searcher calls in), so Optuna's own heartbeat
never runs: stale RUNNING trials left by a crashed driver are reconciled explicitly (`stale_running`). Every
storage call goes through `_retry` (see `_PatientStorage`), because a SQLite study locked by another process past
the busy timeout raises OperationalError.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweeps import faults, store
from sweeps.spec import CategoricalAxis, FloatAxis, IntAxis, SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)
T = TypeVar("T")

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
HEARTBEAT_S = 10.0  # how often a driver marks itself alive
HEARTBEAT_TIMEOUT_S = 45.0  # a driver silent for this long is taken for dead
# How long SQLite waits for another process's lock before raising "database is locked" (then `_retry` backs off
# and tries again). An environment variable so the fault tests can hold a lock "past the timeout" in seconds.
SQLITE_TIMEOUT_S = float(os.environ.get("SWEEPS_SQLITE_TIMEOUT_S", "30"))


@dataclass(frozen=True)
class StudyTrial:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    params: dict[str, Any]
    values: list[float] | None
    attrs: dict[str, Any]


def distributions(spec: SweepSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, axis in spec.search.space.items():
        if isinstance(axis, IntAxis):
            out[name] = IntDistribution(axis.low, axis.high, log=axis.log, step=1 if axis.log else axis.step)
        elif isinstance(axis, FloatAxis):
            out[name] = FloatDistribution(axis.low, axis.high, log=axis.log, step=None if axis.log else axis.step)
        elif isinstance(axis, CategoricalAxis):
            out[name] = CategoricalDistribution(axis.choices)
    return out


def grid_values(spec: SweepSpec) -> dict[str, list]:
    """Every value of every axis, for the grid sampler (validated to be categorical or stepped)."""
    grid: dict[str, list] = {}
    for name, axis in spec.search.space.items():
        if isinstance(axis, CategoricalAxis):
            grid[name] = list(axis.choices)
        else:
            step = axis.step or 1
            count = int(round((axis.high - axis.low) / step)) + 1
            grid[name] = [type(axis.low)(axis.low + i * step) for i in range(count)]
    return grid


def grid_size(spec: SweepSpec) -> int:
    size = 1
    for values in grid_values(spec).values():
        size *= len(values)
    return size


GP_MAX_TRIALS = 32  # `auto` picks the GP up to this budget: it fits in seconds there, and TPE led beyond


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    seed, kind, trials = spec.seed, spec.search.sampler, spec.budget.trials
    if kind == "auto":
        kind = "gp" if trials <= GP_MAX_TRIALS else "tpe"
    if kind == "gp":
        # Replayed on the 135-point rank x alpha x target x lr grid (BENCHMARKS.md, 10 seeds), hypervolume after
        # 16 trials: GP .900 with 8 random start-up trials (.886 with 4), TPE .861, random .832. After 48: TPE
        # (10 start-up) .980, GP .941. The GP scores running trials too (q-batch EHVI), so two concurrent
        # proposals do not coincide.
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(4, min(10, trials // 2)),
                                         warn_independent_sampling=False)
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_values(spec), seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, spec.budget.concurrency * 2))
    # TPE handles several objectives itself; a few random start-up trials anchor its density estimates.
    startup = max(4, min(10, spec.budget.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True)


def _is_locked(exc: BaseException | None) -> bool:
    # Optuna re-raises sqlalchemy's OperationalError("database is locked") as StorageInternalError with a generic
    # message and the original as __cause__: look down the whole chain, not at str(exc) alone (which missed it).
    seen = 0
    while exc is not None and seen < 10:
        if "locked" in str(exc).lower() or "busy" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Retry a storage call that hit a locked database; back off with jitter so two drivers interleave."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # sqlalchemy's OperationalError arrives wrapped in several optuna types
            if not _is_locked(exc) or attempt == attempts - 1:
                raise
            log.warning("study database locked during %s; retry %d/%d", what, attempt + 1, attempts)
            time.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class _PatientStorage(optuna.storages.RDBStorage):
    """RDBStorage whose every database call retries a locked database by itself (methods wrapped below).

    Retrying one storage call, not a whole Study operation, matters for `ask`: it creates the trial, then stores
    each sampled param in its own transaction. Retrying the whole `ask` after a param write hit the lock created
    a second trial and left the first RUNNING with no driver, counted against the budget until a later
    `sweep run` reconciled it (tests/faults/test_trial_faults.py, study locked at propose).
    """

    def _create_new_trial(self, study_id, template_trial=None):
        frozen = super()._create_new_trial(study_id, template_trial)
        faults.point("study.created", storage=self.url, trial=frozen.number)
        return frozen


_IN_CALL = threading.local()  # public methods call private ones: only the outermost call retries


def _patient(name: str):
    base = getattr(_PatientStorage, name)

    @functools.wraps(base)
    def call(self, *args, **kwargs):
        if getattr(_IN_CALL, "active", False):
            return base(self, *args, **kwargs)
        _IN_CALL.active = True
        try:
            return _retry(lambda: base(self, *args, **kwargs), name)
        finally:
            _IN_CALL.active = False

    return call


for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
              "_create_new_trial", "_set_trial_param", "get_trial_param", "set_trial_state_values",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "get_trial_id_from_study_id_trial_number", "get_trial", "_get_trials", "_get_best_trial_id"):
    setattr(_PatientStorage, _name, _patient(_name))


class Study:
    """One sweep's persistent Optuna study: ask for a point, tell its outcome."""

    def __init__(self, spec: SweepSpec, storage_url: str):
        self.spec = spec
        self.dists = distributions(spec)
        self.url = storage_url
        sqlite = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        storage = _retry(lambda: _PatientStorage(storage_url, engine_kwargs=sqlite if storage_url.startswith(
            "sqlite") else {}), "open storage")
        self.study = _retry(
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
        # Not wrapped in _retry: each storage write inside retries alone (see _PatientStorage).
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
            out.append(StudyTrial(t.number, t.state.name, dict(t.params), t.values, dict(t.user_attrs)))
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
        return [t for t in self.trials() if t.state == "RUNNING" and t.attrs.get("driver") not in live]


def delete_study(name: str, storage_url: str) -> None:
    optuna.delete_study(study_name=name, storage=storage_url)


def study_names(storage_url: str) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage_url)]


# ---------------------------------------------------------------- small free-form studies (adapter fusion)


class Suggest:
    """What an objective sees of an Optuna trial, so callers (sweeps.fuse) never import optuna."""

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
    study = _retry(lambda: optuna.create_study(
        study_name=name, storage=storage_url, direction=direction, load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, n_trials))), "create_study")
    study.optimize(lambda t: objective(Suggest(t)), n_trials=n_trials, catch=(Exception,))
    best = study.best_trial
    return best.number, dict(best.params), float(best.value)
