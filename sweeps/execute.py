"""Ray Tune execution (the only module importing ray): Tuner, searcher, early stopping, resources.

Why a searcher of our own rather than ray's OptunaSearch: OptunaSearch keeps the Ray-trial -> Optuna-trial map
private, only logs a failed `tell` (leaving the trial RUNNING), and gives no hook to write MLflow *before* telling
Optuna. `_DriverSearcher` forwards every event to the `Coordinator` (sweeps/runner.py), which owns the order:
MLflow run first, Optuna tell second, so a crash between the two is recoverable from MLflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from sweeps.select import rung_should_stop
from sweeps.spec import SweepSpec


class Coordinator(Protocol):
    def propose(self) -> dict[str, Any] | None: ...
    def epoch(self, number: int, result: dict[str, Any]) -> None: ...
    def completed(self, number: int, result: dict[str, Any] | None, pruned: bool, error: str | None) -> None: ...
    def stopping(self) -> bool: ...


def _trainable(config: dict[str, Any]) -> None:
    """Runs on a Ray worker: one trial, reported back through ray.tune.report (the trial code never sees ray)."""
    import ray.tune

    os.environ["SWEEPS_STORE"] = config["store"]
    threads = max(1, int(config["cpus"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from sweeps.worker import run_one  # heavy imports (torch, transformers) only in the worker

    def report(metrics: dict[str, Any]) -> None:
        ray.tune.report({**metrics, "phase": "epoch"})

    final = run_one(config["spec"], config["trial_number"], config["params"], report, threads)
    ray.tune.report({**final, "phase": "final"})


def _import_ray():
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher

    return ray, tune, FIFOScheduler, TrialScheduler, Searcher


def build_searcher(coordinator: Coordinator, trials_by_id: dict[str, Any]):
    _, _, _, _, Searcher = _import_ray()

    class _DriverSearcher(Searcher):
        def __init__(self):
            super().__init__(metric=None, mode=None)
            self.numbers: dict[str, int] = {}

        def suggest(self, trial_id: str):
            if coordinator.stopping():
                return Searcher.FINISHED
            config = coordinator.propose()
            if config is None:
                return Searcher.FINISHED
            self.numbers[trial_id] = config["trial_number"]
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self.numbers and result.get("phase") == "epoch":
                coordinator.epoch(self.numbers[trial_id], result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            number = self.numbers.pop(trial_id, None)
            if number is None:
                return
            reason = None
            if error:
                trial = trials_by_id.get(trial_id)
                reason = f"worker failed: {_error_text(trial)}"
            pruned = bool(getattr(self, "pruned", set()) & {trial_id})
            coordinator.completed(number, result, pruned=pruned, error=reason)

    return _DriverSearcher()


def _error_text(trial: Any) -> str:
    try:
        err = trial.get_error() if trial is not None else None
        text = str(err) if err else "no error text"
    except Exception as exc:  # the error file may be gone with the worker
        text = f"no error text ({exc})"
    return text.strip().splitlines()[-1][:500] if text.strip() else "no error text"


def build_scheduler(spec: SweepSpec, searcher: Any):
    """Multi-objective successive halving: at each rung epoch, stop a trial dominated by a peer at that rung.

    Ray's ASHA compares one metric; Optuna cannot prune multi-objective studies. This rule looks at every
    objective (see sweeps.select.rung_should_stop): a trial on the rung's Pareto front is never stopped.
    """
    _, _, FIFOScheduler, TrialScheduler, _ = _import_ray()
    es = spec.search.early_stopping
    if es is None:
        return FIFOScheduler()
    metrics, directions = spec.metric_names(), spec.directions()
    searcher.pruned = set()

    class _ParetoHalving(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.rungs: dict[int, list[list[float]]] = {r: [] for r in es.rungs}

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            epoch = result.get("epoch")
            if result.get("phase") != "epoch" or epoch not in self.rungs:
                return TrialScheduler.CONTINUE
            if any(m not in result for m in metrics):
                return TrialScheduler.CONTINUE
            vec = [float(result[m]) for m in metrics]
            peers = self.rungs[epoch]
            stop = rung_should_stop(vec, peers, directions, es.min_trials)
            peers.append(vec)
            if stop:
                searcher.pruned.add(trial.trial_id)
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    return _ParetoHalving()


def build_callback(trials_by_id: dict[str, Any]):
    from ray.tune import Callback

    class _Remember(Callback):
        """Keeps Trial objects by id so the searcher can read a dead worker's error text."""

        def on_trial_start(self, iteration, trials, trial, **info):
            trials_by_id[trial.trial_id] = trial

    return _Remember()


def run_tune(spec: SweepSpec, coordinator: Coordinator, remaining: int, store: str, address: str | None,
             on_ready: Callable[[], None] | None = None) -> None:
    """Run up to `remaining` trials through Ray Tune; returns when they are done or the driver is stopped."""
    ray, tune, *_ = _import_ray()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is our logger; no tensorboard/csv
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(include_dashboard=False, num_gpus=None)
        ray.init(**kwargs, runtime_env={"env_vars": {"SWEEPS_STORE": store, "TOKENIZERS_PARALLELISM": "false"}})
    if on_ready:
        on_ready()
    trials_by_id: dict[str, Any] = {}
    searcher = build_searcher(coordinator, trials_by_id)
    resources = {"cpu": spec.budget.cpus_per_trial, "gpu": spec.budget.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(_trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(spec, searcher),
            num_samples=remaining,
            max_concurrent_trials=spec.budget.concurrency,
            time_budget_s=spec.budget.time_limit_s,
            reuse_actors=False,  # a fresh process per trial, so its measured peak memory is its own
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}",
            storage_path=os.path.join(store, "ray"),
            verbose=0,
            callbacks=[build_callback(trials_by_id)],
            failure_config=tune.FailureConfig(max_failures=spec.budget.max_retries),
            log_to_file=True,
        ),
    )
    tuner.fit()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
