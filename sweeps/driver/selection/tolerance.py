"""Tolerances: how far apart two trials' metrics must be before one counts as better (numpy only).

On a 120-row validation split macro-F1 differences of .02-.05 are within one standard error, and peak memory moves
by a fraction of a MB between identical runs: the exact dominance rule lets such noise decide who is on the front.
`tolerance_matrix` turns the spec's stated tolerances (sweeps/spec/tolerance.py: a number or "p%") and the trials'
own standard errors into absolute per-point tolerances, which the front, hypervolume, early stopping and the
policies (pareto.py, policies.py) compare with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sweeps.spec.tolerance import parse_tolerance

# An objective without a stated tolerance: one standard error when the trials report `<metric>_se`, else this
# fraction of each value (peak memory moves ~1-3% between identical runs: allocator, threads, sampling), else 0.
DEFAULT_RELATIVE = {"peak_memory_mb": 0.05, "peak_memory_bytes": 0.05}


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _rule(name: str, stated: Any, trials: list[dict]) -> tuple[str, float]:
    """("abs", x) | ("rel", f) | ("se", fallback fraction): how `name`'s tolerance is resolved."""
    try:
        parsed = parse_tolerance(stated)
    except ValueError as exc:
        raise ValueError(f"tolerance of {name}: {exc} (got {stated!r})") from None
    if parsed is not None:
        return parsed
    if any(math.isfinite(_num(t.get(f"{name}_se"))) for t in trials):
        return ("se", DEFAULT_RELATIVE.get(name, 0.0))
    if name in DEFAULT_RELATIVE:
        return ("rel", DEFAULT_RELATIVE[name])
    return ("abs", 0.0)


def tolerance_matrix(
    trials: list[dict[str, Any]], objectives: list[tuple[str, str]], stated: Sequence[Any] | None = None
) -> np.ndarray:
    """(n, m) absolute per-point tolerances for `trials` (metric dicts) on `objectives`.

    `stated[j]` (the spec's `objectives[j].tolerance`): a number (absolute), "p%" (of each trial's own
    |value|), or None for the default: one standard error where a trial reports `<metric>_se` (a trial lacking
    it falls back as below), p% of the value for peak_memory_mb / peak_memory_bytes (5%), otherwise 0 (exact).
    A missing or NaN value gets 0: NaN is the worst value anyway.
    """
    stated = [None] * len(objectives) if stated is None else list(stated)
    if len(stated) != len(objectives):
        raise ValueError(f"{len(stated)} tolerance(s) given for {len(objectives)} objective(s)")
    out = np.zeros((len(trials), len(objectives)))
    for j, ((name, _), s) in enumerate(zip(objectives, stated, strict=True)):
        kind, x = _rule(name, s, trials)
        vals = np.array([_num(t.get(name)) for t in trials])
        rel = x * np.abs(vals) if kind in ("rel", "se") else np.full(len(trials), x)
        if kind == "se":
            se = np.array([_num(t.get(f"{name}_se")) for t in trials])
            rel = np.where(np.isfinite(se) & (se >= 0), se, rel)
        out[:, j] = rel
    return np.where(np.isfinite(out) & (out > 0), out, 0.0)


def _shown(x: float, name: str) -> str:
    unit = " MB" if name.endswith("_mb") else " bytes" if name.endswith("_bytes") else ""
    return (f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}") + unit


def describe_tolerances(
    trials: list[dict[str, Any]], objectives: list[tuple[str, str]], stated: Sequence[Any] | None = None
) -> list[str]:
    """One line per objective saying how its tolerance was resolved, e.g. "macro_f1: 1 SE (macro_f1_se, median
    0.041)", "peak_memory_mb: 5% (median 14.2 MB)", "trainable_params: exact"."""
    stated = [None] * len(objectives) if stated is None else list(stated)
    tol = tolerance_matrix(trials, objectives, stated)
    lines = []
    for j, ((name, _), s) in enumerate(zip(objectives, stated, strict=True)):
        kind, x = _rule(name, s, trials)
        med = _shown(float(np.median(tol[:, j])), name) if len(trials) else "n/a"
        if kind == "se":
            have = sum(math.isfinite(_num(t.get(f"{name}_se"))) for t in trials)
            fallback = f"{x * 100:g}%" if x else "exact"
            part = "" if have == len(trials) else f"; {len(trials) - have} trial(s) without it: {fallback}"
            lines.append(f"{name}: 1 SE ({name}_se, median {med}{part})")
        elif kind == "rel":
            lines.append(f"{name}: {x * 100:g}% (median {med})")
        else:
            lines.append(f"{name}: exact" if x == 0 else f"{name}: {_shown(x, name)} (absolute)")
    return lines
