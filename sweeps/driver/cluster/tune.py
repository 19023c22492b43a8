"""Ray Tune execution in the driver: Tuner, searcher, early stopping, resources (what runs on a worker: trainable.py).

Why a searcher of our own rather than ray's OptunaSearch: OptunaSearch keeps the Ray-trial -> Optuna-trial map
private, only logs a failed `tell` (leaving the trial RUNNING), and gives no hook to write MLflow *before* telling
Optuna. `_DriverSearcher` forwards every event to the `Coordinator` (sweeps/driver/coordinator.py), which owns the
order: MLflow run first, Optuna tell second, so a crash between the two is recoverable from MLflow.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweeps import faults
from sweeps.driver.cluster.trainable import trainable
from sweeps.driver.selection.pareto import rung_should_stop
from sweeps.driver.selection.tolerance import tolerance_matrix
from sweeps.spec import SweepSpec


class Coordinator(Protocol):
    def propose(self) -> dict[str, Any] | None: ...
    def epoch(self, number: int, result: dict[str, Any]) -> None: ...
    def completed(self, number: int, result: dict[str, Any] | None, pruned: bool, error: str | None) -> None: ...
    def stopping(self) -> bool: ...


# Tune pickles its searcher, scheduler and callbacks into its experiment state. The coordinator holds database
# connections and locks, so those objects carry only a key into this driver-process registry.
_LIVE: dict[str, dict[str, Any]] = {}


def _live(key: str) -> dict[str, Any]:
    return _LIVE[key]


class _DriverSearcher(Searcher):
    def __init__(self, key: str):
        super().__init__(metric=None, mode=None)
        self.key = key
        self.numbers: dict[str, int] = {}

    def suggest(self, trial_id: str):
        coordinator = _live(self.key)["coordinator"]
        if coordinator.stopping():
            return Searcher.FINISHED
        config = coordinator.propose()
        if config is None:
            return Searcher.FINISHED
        self.numbers[trial_id] = config["trial_number"]
        return config

    # The search state lives in the Optuna study (persisted on every ask/tell), not in Tune's checkpoints.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.numbers and result.get("phase") == "epoch":
            _live(self.key)["coordinator"].epoch(self.numbers[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        live = _live(self.key)
        reason = f"worker failed: {_error_text(live['trials'].get(trial_id))}" if error else None
        pruned = trial_id in live["pruned"]
        live["coordinator"].completed(number, result, pruned=pruned, error=reason)


def _error_text(trial: Any) -> str:
    try:
        err = trial.get_error() if trial is not None else None
        text = str(err) if err else ""
    except Exception as exc:  # the error file may be gone with the worker
        text = f"({exc})"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no error text"


class _ParetoHalving(FIFOScheduler):
    """Multi-objective successive halving: at each rung epoch, stop a trial dominated by a peer at that rung.

    Ray's ASHA compares one metric; Optuna cannot prune multi-objective studies. This rule looks at every
    objective (see sweeps.driver.selection.pareto.rung_should_stop): a trial on the rung's Pareto front is never
    stopped, and dominance counts only beyond each objective's tolerance (`tolerances`: the spec's stated ones,
    resolved per report by sweeps.driver.selection.tolerance.tolerance_matrix; a report carrying `<metric>_se` gets
    one SE on that metric).
    """

    def __init__(self, key: str, rungs: list[int], min_trials: int, metrics: list[str], directions: list[str],
                 tolerances: list | None = None):
        super().__init__()
        self.key, self.min_trials, self.metrics, self.directions = key, min_trials, metrics, directions
        self.objectives = list(zip(metrics, directions, strict=True))
        self.tolerances = tolerances
        # Keyed by trial: a trial Ray restarts after its worker died reports the rung again and replaces its own
        # entry. In a plain list its first attempt stayed as a peer and, with a different measured peak memory,
        # could dominate the second attempt: the trial pruned by itself.
        self.rungs: dict[int, dict[str, tuple[list[float], list[float]]]] = {r: {} for r in rungs}  # (vec, tol)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch = result.get("epoch")
        if result.get("phase") != "epoch" or epoch not in self.rungs:
            return TrialScheduler.CONTINUE
        if any(m not in result for m in self.metrics):
            return TrialScheduler.CONTINUE
        vec = [float(result[m]) for m in self.metrics]
        tol = tolerance_matrix([result], self.objectives, self.tolerances)[0].tolist()
        peers = self.rungs[epoch]
        others = [v for tid, v in peers.items() if tid != trial.trial_id]
        stop = rung_should_stop(vec, [v for v, _ in others], self.directions, self.min_trials,
                                [tol, *(t for _, t in others)])
        peers[trial.trial_id] = (vec, tol)
        if stop:
            _live(self.key)["pruned"].add(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


class _Remember(Callback):
    """Keeps Trial objects by id so the searcher can read a dead worker's error text."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_start(self, iteration, trials, trial, **info):
        _live(self.key)["trials"][trial.trial_id] = trial

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Its worker died and Ray restarts it (FailureConfig.max_failures = budget.max_retries)."""
        live = _live(self.key)
        number = trial.config.get("trial_number")
        if number is not None:
            live["coordinator"].retried(number, _error_text(trial))


def _trial_name(trial: Any) -> str:
    return f"trial-{trial.config.get('trial_number', trial.trial_id)}"


def build_scheduler(spec: SweepSpec, key: str):
    es = spec.search.early_stopping
    if es is None:
        return FIFOScheduler()
    return _ParetoHalving(key, list(es.rungs), es.min_trials, spec.metric_names(), spec.directions(),
                          spec.tolerances())


def run_tune(spec: SweepSpec, coordinator: Coordinator, remaining: int, store: str, address: str | None,
             on_ready: Callable[[], None] | None = None) -> None:
    """Run up to `remaining` trials through Ray Tune; returns when they are done or the driver is stopped."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is our logger; no tensorboard/csv
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
        if address:
            kwargs["address"] = address
        else:
            # Ray starts its workers at niceness 15, below every ordinary process: on a shared machine the trials
            # (the work the user asked for) then get a fraction of the CPU they are allotted (measured: 4-6x slower
            # than the same trials at niceness 0 next to other jobs; no difference on an idle machine).
            kwargs.update(include_dashboard=False, num_gpus=None, _system_config={"worker_niceness": 0})
        ray.init(**kwargs, runtime_env={"env_vars": _worker_env(store)})
    if on_ready:
        on_ready()
    key = f"{spec.name}-{os.getpid()}-{time.time_ns()}"
    _LIVE[key] = {"coordinator": coordinator, "trials": {}, "pruned": set()}
    searcher = _DriverSearcher(key)
    resources = {"cpu": spec.budget.cpus_per_trial, "gpu": spec.budget.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(spec, key),
            num_samples=remaining,
            max_concurrent_trials=spec.budget.concurrency,
            time_budget_s=spec.budget.time_limit_s,
            # One worker process serves many trials: importing torch/transformers/peft/bitsandbytes costs ~10 s per
            # process. The worker returns freed memory to the OS before each trial (sweeps.trial.worker.release_memory)
            # so the measured peak above the trial's start is still the trial's own.
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}",
            storage_path=os.path.join(store, "ray"),
            verbose=0,
            callbacks=[_Remember(key)],
            failure_config=tune.FailureConfig(max_failures=spec.budget.max_retries),
            log_to_file=False,  # True wraps stdout in a Tee without isatty(), which transformers calls
        ),
    )
    # Tune's own result loggers are off (MLflow is the record), so its end-of-run analysis finds no result.json
    # and warns once per trial; nothing is missing.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        tuner.fit()
    finally:
        _LIVE.pop(key, None)


def _worker_env(store: str) -> dict[str, str]:
    # No MALLOC_MMAP_THRESHOLD_ here: forcing every large tensor through mmap/munmap costs page faults on every
    # allocation and made trials 2x slower (measured); sweeps.trial.worker.release_memory trims between trials instead.
    # On a cluster the workers inherit the raylet's environment, not the driver's: forward what locates the caches.
    env = {"SWEEPS_STORE": store, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    for name in ("SWEEPS_CACHE", faults.ENV, faults.DIR_ENV):  # the fault rules reach the workers too
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
