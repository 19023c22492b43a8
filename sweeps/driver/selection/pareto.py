"""Multi-objective selection: Pareto fronts, hypervolume and early stopping (the tolerances they compare with are
built in tolerance.py; selection policies and registry aliases live in policies.py).

Everything here is a pure function over plain metric dicts / numpy arrays (numpy is the only third-party
import), so the same code ranks finished sweeps, picks the trial to promote and decides early stopping.

Conventions
-----------
* ``directions`` holds one of ``"maximize"`` / ``"minimize"`` per objective.  Internally every objective is
  flipped to *minimise* (``value * -1`` for maximise) so all comparisons read "smaller is better".
* A NaN metric (a diverged or failed trial) is treated as the worst possible value (+inf after the flip):
  it can never dominate anything, and it is dominated by every finite point that is no worse elsewhere.
* ``tolerances`` (optional everywhere; None = exact) are absolute, non-negative, in each metric's units, one
  per point and objective (an (n, m) array, or anything that broadcasts to it).  Why: on a 120-row validation
  split macro-F1 differences of .02-.05 are within one standard error and peak memory moves by a fraction of a
  MB between identical runs; the exact rule lets such noise decide who is on the front.  A pair is compared
  with the larger of its two points' tolerances, per objective:

      i dominates j  iff  x_i <= x_j + tol  on every objective  and  x_i < x_j - tol  on at least one.

  With every tolerance 0 this is the strict rule.  It is not transitive: with three or more objectives a cycle
  (A dominates B dominates C dominates A) can leave no point undominated; the front then falls back to the
  strict front.  (With two objectives no cycle exists: each step of one would need a positive coordinate sum.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DIRECTIONS = ("maximize", "minimize")


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


def _tols(tolerances, shape: tuple[int, ...]) -> np.ndarray | None:
    """Validate `tolerances` and broadcast them to `shape` (None stays None: the exact rule)."""
    if tolerances is None:
        return None
    t = np.asarray(tolerances, dtype=float)
    try:
        t = np.broadcast_to(t, shape)
    except ValueError:
        raise ValueError(f"tolerances of shape {t.shape} do not fit values of shape {shape}") from None
    if not np.all(np.isfinite(t) & (t >= 0)):
        raise ValueError("tolerances must be finite and >= 0")
    return t


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str], tolerances=None) -> bool:
    """True if `a` is no worse than `b` in every objective and strictly better in at least one.

    `tolerances`: (m,) for both points or (2, m) for a's and b's (the larger counts): see the module docstring.
    """
    x, y = _to_min(a, directions), _to_min(b, directions)
    t = _tols(tolerances, (2, x.size))
    pair = np.zeros(x.size) if t is None else t.max(axis=0)
    return bool(np.all(x <= y + pair) and np.any(x < y - pair))


def _front_min(v: np.ndarray, tol: np.ndarray | None = None) -> np.ndarray:
    """Non-dominated mask of rows of an (n, m) minimisation-space array under per-point tolerances `tol` (None =
    exact), without the cycle fallback; O(n^2 m), chunked to bound memory."""
    n = v.shape[0]
    dominated = np.zeros(n, dtype=bool)
    chunk = max(1, 4_000_000 // max(1, n * v.shape[1]))
    for s in range(0, n, chunk):
        c = v[s : s + chunk]  # candidates i; compare against all j: j dominates i
        t = 0.0 if tol is None else np.maximum(tol[None, :, :], tol[s : s + chunk, None, :])
        le = np.all(v[None, :, :] <= c[:, None, :] + t, axis=2)
        lt = np.any(v[None, :, :] < c[:, None, :] - t, axis=2)
        dominated[s : s + chunk] = np.any(le & lt, axis=1)
    return ~dominated  # equal rows never dominate each other, so duplicates of a front point are all kept


def _tolerant_front(v: np.ndarray, tol: np.ndarray | None) -> np.ndarray:
    """The front under `tol`; the strict front if a dominance cycle leaves nothing (see the module docstring)."""
    mask = _front_min(v, tol)
    return mask if tol is None or mask.any() or v.shape[0] == 0 else _front_min(v)


def pareto_mask(values: np.ndarray, directions: Sequence[str], tolerances=None) -> np.ndarray:
    """(n, m) -> bool mask (n,) of the non-dominated rows (duplicates of a front point are all kept).

    With `tolerances` ((n, m) absolute, see the module docstring) a row is kept unless another row beats it by
    more than the tolerance on some objective without being worse by more than it on any.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be 2-D (n trials, m objectives), got shape {v.shape}")
    return _tolerant_front(_to_min(v, directions), _tols(tolerances, v.shape))


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


def hypervolume(values: np.ndarray, directions: Sequence[str], reference: Sequence[float], tolerances=None) -> float:
    """Exact volume dominated by `values` and bounded by `reference` (which should be worse than every point).

    Points not strictly better than the reference in every objective add nothing and are ignored.  With
    `tolerances` only the points on the tolerant front count: a point beaten beyond noise on one objective adds
    no volume for being within noise better on another (e.g. 0.3 MB less memory), so the hypervolume of a sweep
    is that of its tolerant front.  Without them (or all 0) it is the usual hypervolume.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be 2-D (n trials, m objectives), got shape {v.shape}")
    p = _to_min(v, directions)
    r = _to_min(np.asarray(reference, dtype=float), directions)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"reference point must be finite, got {list(reference)}")
    t = _tols(tolerances, v.shape)
    if t is not None:
        p = p[_tolerant_front(p, t)]
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


def normalized_hypervolume(values, directions: Sequence[str], reference, ideal, tolerances=None) -> float:
    """HV after mapping each objective affinely so `ideal` -> 0 and `reference` -> 1 (result in [0, 1]).

    Lets sweeps measured in different units (MB vs parameters vs F1) be compared on one scale.  `tolerances`
    (in the original units): only the tolerant front counts, as in `hypervolume`.
    """
    r = _to_min(np.asarray(reference, dtype=float), directions)
    p = _to_min(values, directions).reshape(-1, r.size)
    i = _to_min(np.asarray(ideal, dtype=float), directions)
    if np.any(r <= i):
        raise ValueError(f"reference {list(reference)} must be strictly worse than ideal {list(ideal)}")
    t = _tols(tolerances, p.shape)
    if t is not None:
        p = p[_tolerant_front(p, t)]
    scaled = (p - i) / (r - i)
    return hypervolume(scaled, ["minimize"] * r.size, np.ones(r.size))


# ---------------------------------------------------------------------------------- early stopping
def rung_should_stop(
    candidate: Sequence[float], peers: Sequence[Sequence[float]], directions: Sequence[str], min_peers: int,
    tolerances=None,
) -> bool:
    """Multi-objective successive halving: stop `candidate` at a rung only if it is clearly beaten.

    Requires >= `min_peers` other results at the same rung (too few -> never stop on noise), the candidate
    dominated by at least one peer, and off the Pareto front of candidate + peers.  Why: a trial already
    dominated at a rung rarely climbs onto the final front, while a non-dominated trial is never stopped, so
    every objective is respected -- unlike single-metric ASHA, which would kill e.g. a low-memory trial for a
    slightly lower F1.  `tolerances` ((1 + len(peers), m), the candidate's row first; or (m,) for all): a peer
    must beat the candidate beyond noise.  The two conditions differ only when a tolerant dominance cycle
    empties the rung's front: the strict front is used then, and a candidate on it is kept.
    """
    c = np.asarray(candidate, dtype=float).reshape(-1)
    p = np.asarray(peers, dtype=float).reshape(-1, c.size)
    if p.shape[0] < max(min_peers, 1):
        return False
    v = np.vstack([_to_min(c, directions), _to_min(p, directions)])
    t = _tols(tolerances, v.shape)
    pair = 0.0 if t is None else np.maximum(t[0], t[1:])
    dominated = bool(np.any(np.all(v[1:] <= v[0] + pair, axis=1) & np.any(v[1:] < v[0] - pair, axis=1)))
    on_front = bool(_tolerant_front(v, t)[0])
    return dominated and not on_front
