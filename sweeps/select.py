"""Multi-objective selection: Pareto fronts, hypervolume, policies, registry aliases, early stopping.

Everything here is a pure function over plain metric dicts / numpy arrays (numpy is the only third-party
import), so the same code ranks finished sweeps, picks the trial to promote and decides early stopping.

Conventions
-----------
* ``directions`` holds one of ``"maximize"`` / ``"minimize"`` per objective.  Internally every objective is
  flipped to *minimise* (``value * -1`` for maximise) so all comparisons read "smaller is better".
* A NaN metric (a diverged or failed trial) is treated as the worst possible value (+inf after the flip):
  it can never dominate anything, and it is dominated by every finite point that is no worse elsewhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DIRECTIONS = ("maximize", "minimize")
POLICY_GRAMMAR = (
    'policy := selector [";" constraint]* ; selector := "knee" | "max:<metric>" | "min:<metric>" | '
    '"weights:<metric>=<w>[,<metric>=<w>]*" ; constraint := <metric> (<=|<|>=|>|==) <number>   '
    'e.g. "max:macro_f1;peak_memory_mb<=300;trainable_params<200000"'
)


# ------------------------------------------------------------------------------- dominance / front
def _signs(directions: Sequence[str], m: int | None = None) -> np.ndarray:
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"unknown direction(s) {bad}; allowed: {list(DIRECTIONS)}")
    if m is not None and len(directions) != m:
        raise ValueError(f"{len(directions)} direction(s) given for {m} objective column(s)")
    return np.array([-1.0 if d == "maximize" else 1.0 for d in directions])


def _to_min(values, directions: Sequence[str]) -> np.ndarray:
    """(n, m) or (m,) values -> minimisation space, NaN -> +inf (worst)."""
    v = np.asarray(values, dtype=float)
    out = v * _signs(directions, v.shape[-1])
    return np.where(np.isnan(out), np.inf, out)


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if `a` is no worse than `b` in every objective and strictly better in at least one."""
    x, y = _to_min(a, directions), _to_min(b, directions)
    return bool(np.all(x <= y) and np.any(x < y))


def _front_min(v: np.ndarray) -> np.ndarray:
    """Non-dominated mask of rows of an (n, m) minimisation-space array; O(n^2 m), chunked to bound memory."""
    n = v.shape[0]
    dominated = np.zeros(n, dtype=bool)
    chunk = max(1, 4_000_000 // max(1, n * v.shape[1]))
    for s in range(0, n, chunk):
        c = v[s : s + chunk]  # candidates i; compare against all j: j dominates i
        le = np.all(v[None, :, :] <= c[:, None, :], axis=2)
        lt = np.any(v[None, :, :] < c[:, None, :], axis=2)
        dominated[s : s + chunk] = np.any(le & lt, axis=1)
    return ~dominated  # equal rows never dominate each other, so duplicates of a front point are all kept


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """(n, m) -> bool mask (n,) of the non-dominated rows (duplicates of a front point are all kept)."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be 2-D (n trials, m objectives), got shape {v.shape}")
    return _front_min(_to_min(v, directions))


# ------------------------------------------------------------------------------------- hypervolume
def _hv_min(p: np.ndarray, r: np.ndarray) -> float:
    """Exact HV of points `p` (minimisation, all strictly better than `r`) w.r.t. `r`, by HSO slicing."""
    n, m = p.shape
    if n == 0:
        return 0.0
    if m == 1:
        return float(r[0] - p[:, 0].min())
    if m == 2:
        # Sweep in x: on [x_i, x_{i+1}) the covered height is r_y - min(y_j : x_j <= x_i).
        p = p[np.lexsort((p[:, 1], p[:, 0]))]
        ymin = np.minimum.accumulate(p[:, 1])
        x_next = np.append(p[1:, 0], r[0])
        return float(np.sum((x_next - p[:, 0]) * (r[1] - ymin)))
    # HSO: sort by the last objective z ascending (z_{n+1} := r_z).  A slab z in [z_i, z_{i+1}) is covered
    # exactly by points 1..i, so HV = sum_i (z_{i+1} - z_i) * HV_{m-1}({p_1..p_i} without z).  E.g. boxes
    # (0,0,1) and (1,1,0) under r=(2,2,2): slab z in [0,1) -> 1 x HV_2({(1,1)}) = 1, z in [1,2) -> 1 x 4 = 4,
    # total 5.  Pruning dominated points first keeps the recursion small.
    p = p[_front_min(p)]
    p = p[np.argsort(p[:, -1], kind="stable")]
    z_next = np.append(p[1:, -1], r[-1])
    total = 0.0
    for i in range(p.shape[0]):
        depth = z_next[i] - p[i, -1]
        if depth > 0:
            total += depth * _hv_min(p[: i + 1, :-1], r[:-1])
    return float(total)


def hypervolume(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact volume dominated by `values` and bounded by `reference` (which should be worse than every point).

    Points not strictly better than the reference in every objective add nothing and are ignored.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be 2-D (n trials, m objectives), got shape {v.shape}")
    p = _to_min(v, directions)
    r = _to_min(np.asarray(reference, dtype=float), directions)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"reference point must be finite, got {list(reference)}")
    return _hv_min(p[np.all(p < r, axis=1)], r)


def reference_point(values, directions: Sequence[str], margin: float = 0.1) -> np.ndarray:
    """Nadir of `values` pushed `margin` x range past the worst side (x |value| if the range is 0, else 1)."""
    p = _to_min(values, directions)
    p = p[np.all(np.isfinite(p), axis=1)] if p.ndim == 2 else p.reshape(1, -1)
    if p.shape[0] == 0:
        raise ValueError("reference_point needs at least one point with finite values")
    worst, best = p.max(axis=0), p.min(axis=0)
    span = worst - best
    span = np.where(span > 0, span, np.abs(worst))
    span = np.where(span > 0, span, 1.0)  # all-zero column: any positive offset keeps the HV non-degenerate
    return (worst + margin * span) * _signs(directions)  # back to the caller's orientation


def normalized_hypervolume(values, directions: Sequence[str], reference, ideal) -> float:
    """HV after mapping each objective affinely so `ideal` -> 0 and `reference` -> 1 (result in [0, 1]).

    Lets sweeps measured in different units (MB vs parameters vs F1) be compared on one scale.
    """
    p = _to_min(values, directions)
    r = _to_min(np.asarray(reference, dtype=float), directions)
    i = _to_min(np.asarray(ideal, dtype=float), directions)
    if np.any(r <= i):
        raise ValueError(f"reference {list(reference)} must be strictly worse than ideal {list(ideal)}")
    scaled = (p.reshape(-1, r.size) - i) / (r - i)
    return hypervolume(scaled, ["minimize"] * r.size, np.ones(r.size))


# ---------------------------------------------------------------------------------------- policies
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
    kind: str  # "knee" | "max" | "min" | "weights"
    metric: str | None = None  # for max / min
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


def choose(trials: list[dict[str, float]], objectives: list[tuple[str, str]], policy: str | Policy) -> int | None:
    """Index of the trial picked by `policy` among the Pareto front of the constraint-satisfying trials.

    A trial lacking (or NaN on) any objective or policy metric is not a candidate.  Returns None when no
    trial is feasible.  Selectors:
      knee          front point nearest (Euclidean) to the ideal corner after min-max scaling each objective
                    over the feasible trials to [0, 1] (0 = best); ties -> lowest index.
      max/min:<m>   best front point on <m> (which need not be an objective); ties -> the objectives in order.
      weights:...   maximise sum_i w_i * s_i, where s_i maps metric i min-max over the feasible trials
                    to [0, 1] with 1 = best per its objective direction; a metric that is not an objective
                    is taken as "maximize" (give it a negative weight to prefer low values).  A constant
                    metric scores 0 everywhere.
    """
    pol = parse_policy(policy) if isinstance(policy, str) else policy
    if not trials:
        return None
    names = [k for k, _ in objectives]
    dirs = [d for _, d in objectives]
    _signs(dirs)
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
    front = _front_min(obj)
    idx, fobj = feas[front], obj[front]

    # min-max over the feasible trials, 0 = best (minimisation space)
    def scaled(v: np.ndarray) -> np.ndarray:
        lo, hi = v.min(axis=0), v.max(axis=0)
        return np.divide(v - lo, hi - lo, out=np.zeros_like(v), where=hi > lo)

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
    raise ValueError(f"unknown policy kind {pol.kind!r}; allowed: knee, max, min, weights")


# -------------------------------------------------------------------------------- registry aliases
_SHORT = {  # short alias -> (predicate on metric name, the direction that makes the name true)
    "pareto-lowmem": (lambda k: k.startswith("peak_memory"), "minimize"),
    "pareto-small": (lambda k: k == "trainable_params", "minimize"),
    "pareto-accurate": (lambda k: k in ("macro_f1", "accuracy"), "maximize"),
}


def objective_aliases(trials: list[dict[str, float]], objectives: list[tuple[str, str]]) -> dict[str, int]:
    """Registry aliases -> trial index: for each objective, the front point best on it.

    Names: "pareto-best-<metric>" (non-alphanumerics -> "-"), plus "pareto-lowmem" (peak_memory_*,
    minimised), "pareto-small" (trainable_params, minimised), "pareto-accurate" (macro_f1 / accuracy,
    maximised).  A short name is only given when the direction matches its meaning, and the first
    objective in order claims it.
    """
    out: dict[str, int] = {}
    for name, direction in objectives:
        best = choose(trials, objectives, Policy("max" if direction == "maximize" else "min", metric=name))
        if best is None:
            continue
        out["pareto-best-" + re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-").lower()] = best
        for alias, (pred, want) in _SHORT.items():
            if pred(name) and direction == want:
                out.setdefault(alias, best)
    return out


# ---------------------------------------------------------------------------------- early stopping
def rung_should_stop(
    candidate: Sequence[float], peers: Sequence[Sequence[float]], directions: Sequence[str], min_peers: int
) -> bool:
    """Multi-objective successive halving: stop `candidate` at a rung only if it is clearly beaten.

    Requires >= `min_peers` other results at the same rung (too few -> never stop on noise), the candidate
    dominated by at least one peer, and off the Pareto front of candidate + peers.  (The last two are the same
    condition; both are checked to mirror the rule's definition.)  Why: a trial already dominated at a rung
    rarely climbs onto the final front, while a non-dominated trial is never stopped, so every objective is
    respected -- unlike single-metric ASHA, which would kill e.g. a low-memory trial for a slightly lower F1.
    """
    c = np.asarray(candidate, dtype=float).reshape(-1)
    p = np.asarray(peers, dtype=float).reshape(-1, c.size)
    if p.shape[0] < max(min_peers, 1):
        return False
    cm, pm = _to_min(c, directions), _to_min(p, directions)
    dominated = bool(np.any(np.all(pm <= cm, axis=1) & np.any(pm < cm, axis=1)))
    on_front = bool(_front_min(np.vstack([cm, pm]))[0])
    return dominated and not on_front
