"""Selection policies (which front trial to promote) and registry aliases; numpy only, over plain metric dicts.

Dominance and fronts are pareto.py's.  `tolerances` arguments are (n trials, m objectives) absolute tolerances as
built by `tolerance.tolerance_matrix` (tolerance.py); None = exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sweeps.driver.selection.pareto import _signs, _to_min, _tolerant_front, _tols
from sweeps.driver.selection.tolerance import _num

DEFAULT_POLICY = "1se"
POLICY_GRAMMAR = (
    'policy := selector [";" constraint]* ; selector := "1se" | "1se:<metric>" | "one-se" | "knee" | '
    '"max:<metric>" | "min:<metric>" | "weights:<metric>=<w>[,<metric>=<w>]*" ; '
    "constraint := <metric> (<=|<|>=|>|==) <number>   "
    'e.g. "max:macro_f1;peak_memory_mb<=300;trainable_params<200000"'
)

_OPS = {"<=": np.less_equal, "<": np.less, ">=": np.greater_equal, ">": np.greater, "==": np.equal}
_NAME = r"[A-Za-z_][\w.\-/]*"
_CONSTRAINT_RE = re.compile(rf"^\s*({_NAME})\s*(<=|>=|==|<|>)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # one of <=, <, >=, >, ==
    value: float

    def holds(self, x: float) -> bool:
        return bool(_OPS[self.op](x, self.value))


@dataclass(frozen=True)
class Policy:
    kind: str  # "1se" | "knee" | "max" | "min" | "weights"
    metric: str | None = None  # for max / min / 1se (None for 1se: the first maximised objective)
    weights: dict[str, float] = field(default_factory=dict)  # for weights
    constraints: tuple[Constraint, ...] = ()

    def metrics(self) -> list[str]:
        names = [self.metric] if self.metric else []
        names += list(self.weights) + [c.metric for c in self.constraints]
        return list(dict.fromkeys(names))


def _number(text: str, what: str, policy: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        msg = f"bad policy {policy!r}: {what} {text!r} is not a finite number"
        raise ValueError(f"{msg}. Grammar: {POLICY_GRAMMAR}")
    return x


def parse_policy(text: str) -> Policy:
    """Parse a selection policy string (see POLICY_GRAMMAR); raises ValueError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty selection policy. Grammar: {POLICY_GRAMMAR}")

    def fail(msg: str) -> ValueError:
        return ValueError(f"bad policy {text!r}: {msg}. Grammar: {POLICY_GRAMMAR}")

    head, *rest = [s.strip() for s in text.split(";")]
    constraints = []
    for part in filter(None, rest):  # tolerate a trailing ";"
        m = _CONSTRAINT_RE.match(part)
        if not m:
            raise fail(f"constraint {part!r} is not '<metric> <op> <number>' with op in {list(_OPS)}")
        constraints.append(Constraint(m[1], m[2], _number(m[3], "constraint bound", text)))
    kind, sep, arg = (s.strip() for s in head.partition(":"))
    if kind == "knee" and not sep:
        return Policy("knee", constraints=tuple(constraints))
    if kind in ("1se", "one-se"):
        if sep and not re.fullmatch(_NAME, arg):
            raise fail(f"{kind}: needs a metric name, got {arg!r}")
        return Policy("1se", metric=arg or None, constraints=tuple(constraints))
    if kind in ("max", "min") and sep:
        if not re.fullmatch(_NAME, arg):
            raise fail(f"{kind}: needs a metric name, got {arg!r}")
        return Policy(kind, metric=arg, constraints=tuple(constraints))
    if kind == "weights" and sep:
        weights: dict[str, float] = {}
        for item in (s.strip() for s in arg.split(",")):
            name, eq, w = (s.strip() for s in item.partition("="))
            if not eq or not re.fullmatch(_NAME, name):
                raise fail(f"weight {item!r} is not '<metric>=<number>'")
            if name in weights:
                raise fail(f"metric {name!r} weighted twice")
            weights[name] = _number(w, f"weight of {name!r}", text)
        if not any(weights.values()):
            raise fail("at least one weight must be non-zero")
        return Policy("weights", weights=weights, constraints=tuple(constraints))
    raise fail(f"unknown selector {head!r}")


def _matrix(trials: list[dict[str, float]], names: Sequence[str]) -> np.ndarray:
    """(n, len(names)) float matrix; a metric missing from a trial is NaN; unknown metrics -> ValueError."""
    known = set().union(*(t.keys() for t in trials)) if trials else set()
    missing = [k for k in names if k not in known]
    if missing:
        raise ValueError(f"metric(s) {missing} not found in any trial; metrics that exist: {sorted(known)}")
    return np.array([[float(t.get(k, math.nan)) for k in names] for t in trials], dtype=float).reshape(
        len(trials), len(names)
    )


def _best_on(idx: np.ndarray, key: np.ndarray, tiebreak: np.ndarray) -> int:
    """Index (from `idx`) minimising `key`; ties -> columns of `tiebreak` in order, then lowest index."""
    order = np.lexsort((idx, *tiebreak.T[::-1], key))  # lexsort's primary key is the last one
    return int(idx[order[0]])


def _with_default_metric(pol: Policy, objectives: list[tuple[str, str]]) -> Policy:
    if pol.kind != "1se" or pol.metric:
        return pol
    # The accuracy-like objective: the first maximised one; with none (e.g. loss, memory) the first objective,
    # so the default policy works on every spec.
    first = next((k for k, d in objectives if d == "maximize"), objectives[0][0] if objectives else None)
    if first is None:
        raise ValueError("policy '1se' needs a metric to be within one SE of its best: name one, e.g. '1se:macro_f1'")
    return Policy("1se", metric=first, constraints=pol.constraints)


def choose(trials: list[dict[str, float]], objectives: list[tuple[str, str]], policy: str | Policy,
           tolerances=None) -> int | None:
    """Index of the trial picked by `policy` among the Pareto front of the constraint-satisfying trials.

    `tolerances` ((n, m), see `tolerance.tolerance_matrix`; None = exact) make that front the tolerant one (see
    pareto.py).  A trial lacking (or NaN on) any objective or policy metric is not a candidate.
    Returns None when no trial is feasible.  Selectors:
      1se[:<m>]     the one-standard-error rule, see `_one_se` (<m> defaults to the first maximised objective,
                    else the first objective; a metric that is not an objective is taken as "maximize").
      knee          front point nearest (Euclidean) to the ideal corner after min-max scaling each objective
                    over the feasible trials to [0, 1] (0 = best); ties -> lowest index.
      max/min:<m>   best front point on <m> (which need not be an objective); ties -> the objectives in order.
      weights:...   maximise sum_i w_i * s_i, where s_i maps metric i min-max over the feasible trials
                    to [0, 1] with 1 = best per its objective direction; a metric that is not an objective
                    is taken as "maximize" (give it a negative weight to prefer low values).  A constant
                    metric scores 0 everywhere.
    """
    pol = _with_default_metric(parse_policy(policy) if isinstance(policy, str) else policy, objectives)
    if not trials:
        return None
    names = [k for k, _ in objectives]
    dirs = [d for _, d in objectives]
    _signs(dirs)
    tol = _tols(tolerances, (len(trials), len(names)))
    extra = [k for k in pol.metrics() if k not in names]
    mat = _matrix(trials, names + extra)
    col = {k: j for j, k in enumerate(names + extra)}
    needed = names + [k for k in ([pol.metric] if pol.metric else []) + list(pol.weights)]
    ok = np.all(np.isfinite(mat[:, [col[k] for k in needed]]), axis=1)
    for c in pol.constraints:
        x = mat[:, col[c.metric]]
        ok &= np.isfinite(x) & _OPS[c.op](np.nan_to_num(x, nan=0.0), c.value)
    feas = np.flatnonzero(ok)
    if feas.size == 0:
        return None
    obj = _to_min(mat[feas][:, : len(names)], dirs)
    ftol = None if tol is None else tol[feas]
    front = _tolerant_front(obj, ftol)
    idx, fobj = feas[front], obj[front]

    # min-max over the feasible trials, 0 = best (minimisation space)
    def scaled(v: np.ndarray) -> np.ndarray:
        lo, hi = v.min(axis=0), v.max(axis=0)
        return np.divide(v - lo, hi - lo, out=np.zeros_like(v), where=hi > lo)

    if pol.kind == "1se":
        sign = -1.0 if dict(objectives).get(pol.metric, "maximize") == "maximize" else 1.0
        key = mat[feas, col[pol.metric]] * sign  # minimisation space
        se = _num(trials[int(feas[np.argmin(key)])].get(f"{pol.metric}_se"))
        if not (math.isfinite(se) and se >= 0):  # no SE reported: the objective's tolerance at the best, or 0
            j = col[pol.metric]
            se = float(ftol[np.argmin(key), j]) if ftol is not None and j < len(names) else 0.0
        costs = [j for j, k in enumerate(names) if k != pol.metric]
        return int(feas[_one_se(key, se, front, obj[:, costs], None if ftol is None else ftol[:, costs])])
    if pol.kind == "knee":
        dist = np.linalg.norm(scaled(obj)[front], axis=1)
        return int(idx[np.argmin(dist)])  # argmin takes the first minimum: idx is ascending -> lowest index
    if pol.kind in ("max", "min"):
        key = mat[idx, col[pol.metric]] * (-1.0 if pol.kind == "max" else 1.0)
        return _best_on(idx, key, fobj)
    if pol.kind == "weights":
        wnames = list(pol.weights)
        wdirs = [dict(objectives).get(k, "maximize") for k in wnames]
        s = 1.0 - scaled(_to_min(mat[feas][:, [col[k] for k in wnames]], wdirs))  # 1 = best
        score = s[front] @ np.array([pol.weights[k] for k in wnames])
        return int(idx[np.argmax(score)])
    raise ValueError(f"unknown policy kind {pol.kind!r}; allowed: 1se, knee, max, min, weights")


def _one_se(key: np.ndarray, se: float, front: np.ndarray, costs: np.ndarray, cost_tol: np.ndarray | None) -> int:
    """The one-standard-error rule over feasible trials; returns a position in `key` (all minimisation space).

    Breiman, Friedman, Olshen & Stone (1984, CART, sec. 3.4.3) prune a tree to the *simplest* one whose
    cross-validated error is within one standard error of the minimum; Hastie, Tibshirani & Friedman (ESL,
    2nd ed., sec. 7.10) recommend the same for any complexity parameter.  The reason carries over: differences
    smaller than one SE of the estimate are not evidence that the more expensive model is better, so the
    cheaper one is the better bet.  Here: take the trials whose metric is within `se` of the best feasible
    value (`se` = the best trial's `<metric>_se`), then the cheapest by the remaining objectives in order --
    values within tolerance of the minimum (the larger of the two points' tolerances) tie and go on to the next
    objective -- then the better metric, then the lowest index.

    Only trials on the (tolerant) front are candidates, so the pick is never one that another trial beats
    beyond noise on some objective while being within noise on all others; lexicographic cost order alone
    does not guarantee that (a trial just outside the 1-SE band, or just outside a cost tie, could be far
    cheaper on a later objective).  Should no front trial be within `se` of the best feasible value (possible
    only when the best is itself off the tolerant front), the band is anchored on the best front trial.
    """
    band = front & (key <= key.min() + se)
    if not band.any():
        band = front & (key <= key[front].min() + se)
    pos = np.flatnonzero(band)
    for k in range(costs.shape[1]):
        x = costs[pos, k]
        at = int(np.argmin(x))
        t = 0.0 if cost_tol is None else np.maximum(cost_tol[pos, k], cost_tol[pos[at], k])
        pos = pos[x <= x[at] + t]
    return int(pos[np.lexsort((pos, key[pos]))[0]])


# -------------------------------------------------------------------------------- registry aliases
_SHORT = {  # short alias -> (predicate on metric name, the direction that makes the name true)
    "pareto-lowmem": (lambda k: k.startswith("peak_memory"), "minimize"),
    "pareto-small": (lambda k: k == "trainable_params", "minimize"),
    "pareto-accurate": (lambda k: k in ("macro_f1", "accuracy"), "maximize"),
}


def objective_aliases(trials: list[dict[str, float]], objectives: list[tuple[str, str]],
                      tolerances=None) -> dict[str, int]:
    """Registry aliases -> trial index: for each objective, the (tolerant, with `tolerances`) front point best on it.

    Names: "pareto-best-<metric>" (non-alphanumerics -> "-"), plus "pareto-lowmem" (peak_memory_*,
    minimised), "pareto-small" (trainable_params, minimised), "pareto-accurate" (macro_f1 / accuracy,
    maximised).  A short name is only given when the direction matches its meaning, and the first
    objective in order claims it.
    """
    out: dict[str, int] = {}
    for name, direction in objectives:
        pol = Policy("max" if direction == "maximize" else "min", metric=name)
        best = choose(trials, objectives, pol, tolerances)
        if best is None:
            continue
        out["pareto-best-" + re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-").lower()] = best
        for alias, (pred, want) in _SHORT.items():
            if pred(name) and direction == want:
                out.setdefault(alias, best)
    return out
