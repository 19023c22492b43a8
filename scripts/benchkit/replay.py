"""Search efficiency on a tabular benchmark: replay samplers against a full grid measured once.

The grid (benchmarks/grid_reviews.csv, written by `scripts/bench.py --only grid`) holds every configuration's
objectives. A replay is an Optuna study whose objective looks the proposed point up in the table, so a sampler can be
run for many seeds in seconds. Samplers come from sweeps.search.make_sampler (the product's settings for the given
budget) and are asked `concurrency` points at a time, as a sweep with 2 concurrent trials asks them. Hypervolume is
sweeps.select's (the code `sweep pareto` reports), over the product's three objectives, with one reference point for
the whole table, and given as a fraction of the full grid's hypervolume.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

OBJECTIVES = [("macro_f1", "maximize"), ("peak_memory_mb", "minimize"), ("trainable_params", "minimize")]


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def key(values: dict, axes: list[str]) -> tuple:
    return tuple(f"{values[a]:.6g}" if isinstance(values[a], float) else str(values[a]) for a in axes)


def load_table(path: Path, axes: list[str]) -> tuple[dict[str, list], dict[tuple, list[float]]]:
    """(axis -> sorted distinct values, point key -> objective vector) from a grid CSV."""
    with Path(path).open() as fh:
        rows = list(csv.DictReader(fh))
    space: dict[str, list] = {a: sorted({_value(r[a]) for r in rows}, key=lambda v: (str(type(v)), v)) for a in axes}
    table = {}
    for r in rows:
        table[key({a: _value(r[a]) for a in axes}, axes)] = [float(r[m]) if r[m] not in ("", "nan") else np.nan
                                                             for m, _ in OBJECTIVES]
    return space, table


def _sampler(kind: str, seed: int, budget: int, concurrency: int, space: dict):
    from sweeps.search import distributions, make_sampler
    from sweeps.spec import validate_dict

    raw = {"name": "replay", "seed": seed, "model": {"base": "bundled:all-minilm-l6-v2"},
           "data": {"source": "bundled:drug-reviews", "text_column": "review", "label_column": "rating"},
           "search": {"sampler": kind, "space": space},
           "objectives": [{"metric": m, "direction": d} for m, d in OBJECTIVES],
           "budget": {"trials": budget, "concurrency": concurrency}}
    spec = validate_dict(raw, "replay")
    return make_sampler(spec), distributions(spec)


def replay(kind: str, seed: int, n_trials: int, space: dict, table: dict, budget: int | None = None,
           concurrency: int = 2) -> list[list[float]]:
    """The objective vectors of the first n_trials points `kind` proposes, in proposal order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler, dists = _sampler(kind, seed, budget or n_trials, concurrency, space)
    study = optuna.create_study(directions=[d for _, d in OBJECTIVES], sampler=sampler)
    axes = list(space)
    seen: list[list[float]] = []
    while len(seen) < n_trials:
        asked = [study.ask(dists) for _ in range(min(concurrency, n_trials - len(seen)))]
        for trial in asked:
            values = table.get(key(trial.params, axes), [np.nan] * len(OBJECTIVES))  # not in the table: failed
            seen.append(values)
            if any(np.isnan(values)):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, values)
    return seen


def hv_curve(points: list[list[float]], reference: np.ndarray, full: float) -> list[float]:
    """Hypervolume of the first n points (n = 1..len) as a fraction of the full table's."""
    from sweeps.select import hypervolume

    directions = [d for _, d in OBJECTIVES]
    arr = np.asarray(points, dtype=float)
    return [hypervolume(arr[:n], directions, reference) / full for n in range(1, len(arr) + 1)]


def reference(table: dict) -> tuple[np.ndarray, float]:
    from sweeps.select import hypervolume, reference_point

    directions = [d for _, d in OBJECTIVES]
    values = np.asarray(list(table.values()), dtype=float)
    finite = values[np.all(np.isfinite(values), axis=1)]
    ref = reference_point(finite, directions)
    return ref, hypervolume(finite, directions, ref)


def run_all(table_path: Path, axes: list[str], seeds: int, runs: dict[str, tuple[str, int, int]],
            progress=print) -> dict:
    """runs: label -> (sampler kind, budget, trials). Returns per-label curves (seeds x trials) and medians."""
    space, table = load_table(table_path, axes)
    ref, full = reference(table)
    out: dict = {"grid_points": len(table), "space": {k: [str(v) for v in vs] for k, vs in space.items()},
                 "reference": ref.tolist(), "full_hv": full, "curves": {}}
    for label, (kind, budget, trials) in runs.items():
        curves = [hv_curve(replay(kind, seed, trials, space, table, budget), ref, full) for seed in range(seeds)]
        out["curves"][label] = curves
        progress(f"replay {label}: median HV@{trials} = {np.median([c[-1] for c in curves]):.3f}")
    return out


def at(curves: list[list[float]], n: int) -> float:
    return float(np.median([c[n - 1] for c in curves]))


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, curves in result["curves"].items():
        arr = np.asarray(curves)
        x = np.arange(1, arr.shape[1] + 1)
        line, = ax.plot(x, np.median(arr, axis=0), label=f"{label} (median of {arr.shape[0]} seeds)")
        ax.fill_between(x, np.percentile(arr, 25, axis=0), np.percentile(arr, 75, axis=0), alpha=0.15,
                        color=line.get_color())
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume / full grid's")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
