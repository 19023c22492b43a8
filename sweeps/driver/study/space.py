"""Spec -> Optuna: the search space as distributions (and as a grid), and the sampler a spec asks for."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeps.spec import CategoricalAxis, FloatAxis, IntAxis, SweepSpec


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
