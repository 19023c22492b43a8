"""Search efficiency on a tabular benchmark: replay samplers against a full grid measured once.

The grid (benchmarks/grid_reviews.csv, written by `scripts/bench.py --only grid`) holds every configuration's
objectives. A replay is an Optuna study whose objective looks the proposed point up in the table, so a sampler can be
run for many seeds in seconds. Samplers come from sweeps.driver.study.space.make_sampler (the product's settings for
the given budget) and are asked `concurrency` points at a time, as a sweep with 2 concurrent trials asks them.
Hypervolume is sweeps.driver.selection's (the code `sweep pareto` reports), over the product's three objectives, with
one reference point for the whole table, and given as a fraction of the full grid's hypervolume.
"""

from __future__ import annotations

import csv
import time
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
    from sweeps.driver.study.space import distributions, make_sampler
    from sweeps.spec import validate_dict

    raw = {"name": "replay", "seed": seed, "model": {"base": "bundled:all-minilm-l6-v2"},
           "data": {"source": "bundled:drug-reviews", "text_column": "review", "label_column": "rating"},
           "search": {"sampler": kind, "space": space},
           "objectives": [{"metric": m, "direction": d} for m, d in OBJECTIVES],
           "budget": {"trials": budget, "concurrency": concurrency}}
    spec = validate_dict(raw, "replay")
    return make_sampler(spec), distributions(spec)


def replay(kind: str, seed: int, n_trials: int, space: dict, table: dict, budget: int | None = None,
           concurrency: int = 2, make=None) -> list[list[float]]:
    """The objective vectors of the first n_trials points `kind` proposes, in proposal order. make(seed), when
    given, builds the sampler instead of make_sampler (a setting under study: benchkit/tuning.py)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler, dists = _sampler(kind, seed, budget or n_trials, concurrency, space)
    if make is not None:
        sampler = make(seed)
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
    from sweeps.driver.selection.pareto import hypervolume

    directions = [d for _, d in OBJECTIVES]
    arr = np.asarray(points, dtype=float)
    return [hypervolume(arr[:n], directions, reference) / full for n in range(1, len(arr) + 1)]


def reference(table: dict) -> tuple[np.ndarray, float]:
    from sweeps.driver.selection.pareto import hypervolume, reference_point

    directions = [d for _, d in OBJECTIVES]
    values = np.asarray(list(table.values()), dtype=float)
    finite = values[np.all(np.isfinite(values), axis=1)]
    ref = reference_point(finite, directions)
    return ref, hypervolume(finite, directions, ref)


def resolve(kind: str, budget: int, space: dict, concurrency: int = 2) -> str:
    """The concrete sampler `kind` makes at this budget ("auto" -> "gp" or "tpe"), read off the sampler
    sweeps.driver.study.space.make_sampler builds, so a change of the switch point there shows here."""
    if kind != "auto":
        return kind
    import optuna

    sampler, _ = _sampler(kind, 0, budget, concurrency, space)
    names = {optuna.samplers.GPSampler: "gp", optuna.samplers.TPESampler: "tpe", optuna.samplers.RandomSampler:
             "random", optuna.samplers.NSGAIISampler: "nsga2"}
    return names.get(type(sampler), kind)


def run_all(table_path: Path, axes: list[str], seeds: int, runs: dict[str, tuple[str, int, int]],
            progress=print) -> dict:
    """runs: label -> (sampler kind, budget, trials). Returns per-label curves (seeds x trials), the grid's size,
    reference point and full hypervolume.
    Seed s drives every sampler's RNG (seeds are paired across samplers). A label whose kind resolves to the
    same sampler at the same budget as an earlier label (`auto` -> gp) reuses that label's curves: make_sampler
    builds the identical sampler, so the proposals are the same; `aliases` records which."""
    space, table = load_table(table_path, axes)
    ref, full = reference(table)
    out: dict = {"grid_points": len(table), "space": {k: [str(v) for v in vs] for k, vs in space.items()},
                 "reference": ref.tolist(), "full_hv": full, "curves": {}, "aliases": {}}
    done: dict[tuple, str] = {}
    for label, (kind, budget, trials) in runs.items():
        concrete = resolve(kind, budget, space)
        if (concrete, budget, trials) in done:
            out["curves"][label] = out["curves"][done[concrete, budget, trials]]
            out["aliases"][label] = done[concrete, budget, trials]
            progress(f"replay {label}: {kind} is {concrete} at {budget} trials, the curves of {out['aliases'][label]}")
            continue
        started = time.time()
        curves = [hv_curve(replay(kind, seed, trials, space, table, budget), ref, full) for seed in range(seeds)]
        out["curves"][label] = curves
        done[concrete, budget, trials] = label
        finals = [c[-1] for c in curves]
        progress(f"replay {label}: HV@{trials} mean {np.mean(finals):.3f} ± {se(finals):.3f} "
                 f"({time.time() - started:.0f} s)")
    return out


def at(curves: list[list[float]], n: int) -> float:
    return float(np.median([c[n - 1] for c in curves]))


def se(values) -> float:
    """Standard error of the mean: sample sd (n - 1) / sqrt(n); 0 for a single value."""
    arr = np.asarray(values, dtype=float)
    return float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else 0.0


def compare(finals: dict[str, list[float]], z: float = 2.0) -> dict:
    """Mean ± SE per sampler, and which are indistinguishable from the best, from per-seed values.

    finals: sampler -> one value per seed, seed i of every sampler run with the same seed (paired): every gap is
    judged by the SE of the per-seed differences. A sampler is `tied` with the best where the best's mean lead is
    at most z SE of the difference; `pairs` calls each pair better / worse / tie the same way (no correction for
    the number of pairs)."""
    names = list(finals)
    lengths = {len(v) for v in finals.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"paired comparison needs the same number of seeds per sampler, got {lengths}")
    arr = {n: np.asarray(finals[n], dtype=float) for n in names}
    means = {n: float(arr[n].mean()) for n in names}
    best = max(names, key=lambda n: (means[n], -names.index(n)))
    rows = {}
    for n in names:
        diff = arr[best] - arr[n]
        gap, gap_se = float(diff.mean()), se(diff)
        rows[n] = {"mean": means[n], "se": se(arr[n]), "gap": gap, "gap_se": gap_se,
                   "tied": bool(n == best or gap <= z * gap_se)}
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = arr[a] - arr[b]
            d, d_se = float(diff.mean()), se(diff)
            verdict = "better" if d > z * d_se else "worse" if -d > z * d_se else "tie"
            pairs.append({"a": a, "b": b, "diff": d, "se": d_se, "verdict": verdict})
    return {"n": lengths.pop(), "z": z, "paired": True, "best": best, "rows": rows,
            "tied": [n for n in names if rows[n]["tied"]], "pairs": pairs}


def plot(result: dict, path: Path, title: str, labels: list[str] | None = None,
         marks: dict[str, list[tuple[int, list[float]]]] | None = None) -> None:
    """Mean HV vs trials with a ± 1 SE band per label (labels: which curves, default all); marks: name -> (trials,
    per-seed values) points drawn as mean ± SE error bars in the matching line's colour (a shorter budget's run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colours = {}
    for label in labels or list(result["curves"]):
        arr = np.asarray(result["curves"][label])
        x = np.arange(1, arr.shape[1] + 1)
        mean = arr.mean(axis=0)
        band = arr.std(axis=0, ddof=1) / np.sqrt(arr.shape[0]) if arr.shape[0] > 1 else np.zeros_like(mean)
        line, = ax.plot(x, mean, label=f"{label} (mean ± SE, {arr.shape[0]} seeds)")
        ax.fill_between(x, mean - band, mean + band, alpha=0.15, color=line.get_color())
        colours[label] = line.get_color()
    for label, points in (marks or {}).items():
        for n, values in points:
            ax.errorbar([n], [np.mean(values)], yerr=[se(values)], fmt="o", ms=4, capsize=3,
                        color=colours.get(label, "k"))
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume / full grid's")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
