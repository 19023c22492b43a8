"""Spec -> Optuna: distributions, samplers and the persistent study (the only module importing optuna).

The study is driven by ask/tell from the sweep driver (Ray Tune's searcher calls in), so Optuna's own heartbeat
never runs: stale RUNNING trials left by a crashed driver are reconciled explicitly (`stale_running`). Every call
that writes goes through `_retry`, because a SQLite study locked by another process raises OperationalError.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweeps.spec import CategoricalAxis, FloatAxis, IntAxis, SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)
T = TypeVar("T")

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


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    seed, kind = spec.seed, spec.search.sampler
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_values(spec), seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, spec.budget.concurrency * 2))
    # TPE handles several objectives itself; a few random start-up trials anchor its density estimates.
    startup = max(4, min(10, spec.budget.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True)


def _retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Retry a storage call that hit a locked database; back off with jitter so two drivers interleave."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # sqlalchemy's OperationalError arrives wrapped in several optuna types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            log.warning("study database locked during %s; retry %d/%d", what, attempt + 1, attempts)
            time.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class Study:
    """One sweep's persistent Optuna study: ask for a point, tell its outcome."""

    def __init__(self, spec: SweepSpec, storage_url: str):
        self.spec = spec
        self.dists = distributions(spec)
        storage = optuna.storages.RDBStorage(
            storage_url,
            engine_kwargs={"connect_args": {"timeout": 30}} if storage_url.startswith("sqlite") else {},
        )
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
        trial = _retry(lambda: self.study.ask(self.dists), "ask")
        return trial.number, dict(trial.params)

    def tell(self, number: int, state: str, values: list[float] | None = None, attrs: dict | None = None) -> None:
        for key, value in (attrs or {}).items():
            _retry(lambda k=key, v=value: self.study._storage.set_trial_user_attr(self._id(number), k, v), "attr")
        target = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}[state]
        try:
            _retry(lambda: self.study.tell(number, values if target == TrialState.COMPLETE else None, state=target),
                   "tell")
        except RuntimeError as exc:
            # GridSampler calls study.stop() once the grid is covered, which only works inside optimize(); the
            # state was stored before it raised (optuna's _tell stores in a `finally`), so nothing is lost.
            if "Study.stop" not in str(exc):
                raise

    def set_attr(self, number: int, key: str, value: Any) -> None:
        _retry(lambda: self.study._storage.set_trial_user_attr(self._id(number), key, value), "attr")

    def enqueue(self, params: dict[str, Any]) -> None:
        """Re-propose the exact point of an interrupted trial (it is run again within the budget)."""
        _retry(lambda: self.study.enqueue_trial(params, skip_if_exists=False), "enqueue")

    def _id(self, number: int) -> int:
        return self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)

    def trials(self) -> list[StudyTrial]:
        out = []
        for t in _retry(lambda: self.study.get_trials(deepcopy=False), "get_trials"):
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
        _retry(lambda: self.study.set_user_attr(f"driver.{driver}", time.time()), "heartbeat")

    def live_drivers(self, max_age_s: float = HEARTBEAT_TIMEOUT_S) -> set[str]:
        now = time.time()
        attrs = _retry(lambda: self.study._storage.get_study_user_attrs(self.study._study_id), "attrs")
        return {k.split(".", 1)[1] for k, v in attrs.items()
                if k.startswith("driver.") and isinstance(v, (int, float)) and now - v < max_age_s}

    def stale_running(self, live: set[str] | None = None) -> list[StudyTrial]:
        live = self.live_drivers() if live is None else live
        return [t for t in self.trials() if t.state == "RUNNING" and t.attrs.get("driver") not in live]


def delete_study(name: str, storage_url: str) -> None:
    optuna.delete_study(study_name=name, storage=storage_url)


def study_names(storage_url: str) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage_url)]
