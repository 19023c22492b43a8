"""Pareto-front plots of a sweep (PNG, headless: matplotlib's Agg backend)."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

_FRONT = "#1f77b4"
_CHOSEN = "#d62728"
_DOMINATED = "#b0b0b0"
_REF_COLORS = ("#8c564b", "#2ca02c", "#9467bd")  # baselines: dashed vertical lines


def _label(name: str, direction: str) -> str:
    return f"{name} ({'max' if direction == 'maximize' else 'min'})"


def _panel(ax, x, y, xo, front, chosen, ids, color=None, cmap=None, norm=None):
    """One scatter panel: x/y objective columns; returns the ScalarMappable of the front (for a colorbar)."""
    ok = np.isfinite(x) & np.isfinite(y)
    dom = ok & ~front
    fr = ok & front
    ax.scatter(x[dom], y[dom], s=22, c=_DOMINATED, alpha=0.7, edgecolors="none", label="dominated", zorder=2)
    if color is None:
        sm = ax.scatter(
            x[fr], y[fr], s=60, c=_FRONT, edgecolors="black", linewidths=0.8, label="Pareto front", zorder=3
        )
    else:
        sm = ax.scatter(
            x[fr],
            y[fr],
            s=60,
            c=color[fr],
            cmap=cmap,
            norm=norm,
            edgecolors="black",
            linewidths=0.8,
            label="Pareto front",
            zorder=3,
        )
    if color is None and fr.sum() > 1:
        # Staircase = boundary of the dominated region.  With x minimised, the height on [x_i, x_{i+1}) is
        # set by the points left of it (point i: "post"); with x maximised, by the points right of it ("pre").
        xs, ys = x[fr], y[fr]
        order = np.argsort(xs, kind="stable")
        ax.step(
            xs[order],
            ys[order],
            where="post" if xo == "minimize" else "pre",
            color=_FRONT,
            alpha=0.6,
            linewidth=1.2,
            zorder=2.5,
        )
    for i in np.flatnonzero(ok):
        ax.annotate(
            str(ids[i]),
            (x[i], y[i]),
            xytext=(4, 3),
            textcoords="offset points",
            fontsize=6.5,
            color="black" if front[i] else "#777777",
            zorder=4,
        )
    if chosen is not None and ok[chosen]:
        ax.scatter(
            [x[chosen]],
            [y[chosen]],
            marker="*",
            s=320,
            c=_CHOSEN,
            edgecolors="black",
            linewidths=0.8,
            label=f"chosen (trial {ids[chosen]})",
            zorder=5,
        )
        # Put the label on the side with more room so it never runs off the axes.
        lo, hi = np.nanmin(x[ok]), np.nanmax(x[ok])
        right = hi > lo and (x[chosen] - lo) / (hi - lo) > 0.6
        ax.annotate(
            f"chosen: trial {ids[chosen]}",
            (x[chosen], y[chosen]),
            xytext=(-14 if right else 14, -22),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=8.5,
            color=_CHOSEN,
            fontweight="bold",
            zorder=6,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": _CHOSEN, "lw": 0.6, "alpha": 0.9},
            arrowprops={"arrowstyle": "-", "color": _CHOSEN, "lw": 0.8},
        )
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.margins(0.08)
    return sm


def pareto_plot(
    trials: list[dict[str, float]],
    objectives: list[tuple[str, str]],
    front: Sequence[bool],
    chosen: int | None,
    path: pathlib.Path,
    title: str = "",
    references: dict[str, float] | None = None,
) -> pathlib.Path:
    """Write a PNG of the sweep's trade-offs and return its path.

    2 objectives: obj0 vs obj1 with the front as a staircase.  3+ objectives: one panel per (obj0, obj_k),
    the third objective (obj2) as the colour of front points in every panel.  Dominated trials are grey,
    front trials larger and outlined, the chosen one a red star; every point carries its trial number (a
    "trial_number" key of the trial when present, else its index in `trials`).  `references` (name -> value of
    the first objective, e.g. the majority class and the linear probe) are drawn as labelled vertical lines.
    """
    if len(objectives) < 2:
        raise ValueError(f"pareto_plot needs at least 2 objectives, got {len(objectives)}")
    if len(front) != len(trials):
        raise ValueError(f"front has {len(front)} entries for {len(trials)} trials")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [k for k, _ in objectives]
    dirs = [d for _, d in objectives]
    vals = np.array([[float(t.get(k, math.nan)) for k in names] for t in trials], dtype=float).reshape(
        len(trials), len(names)
    )
    fr = np.asarray(front, dtype=bool)
    ids = [int(t.get("trial_number", i)) for i, t in enumerate(trials)]

    npanels = len(names) - 1
    cols = min(npanels, 2)
    rows = math.ceil(npanels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.8 * rows), squeeze=False, layout="constrained")
    try:
        color = cmap = norm = None
        if len(names) >= 3:
            c = vals[:, 2]
            finite = c[np.isfinite(c)]
            cmap = "viridis" if dirs[2] == "minimize" else "viridis_r"  # dark = better on obj2 either way
            norm = plt.Normalize(finite.min(), finite.max()) if finite.size else None
            color = c
        sm = None
        for k in range(1, len(names)):
            ax = axes.flat[k - 1]
            sm = _panel(ax, vals[:, 0], vals[:, k], dirs[0], fr, chosen, ids, color, cmap, norm)
            ax.set_xlabel(_label(names[0], dirs[0]))
            ax.set_ylabel(_label(names[k], dirs[k]))
            if len(names) >= 3:
                ax.set_title(f"{names[0]} vs {names[k]}", fontsize=10)
            for j, (ref_name, value) in enumerate((references or {}).items()):
                ax.axvline(value, color=_REF_COLORS[j % len(_REF_COLORS)], linestyle="--", linewidth=1.0,
                           label=f"{ref_name} {value:.3f}", zorder=1)
        for ax in list(axes.flat)[npanels:]:
            ax.set_visible(False)
        axes.flat[0].legend(loc="best", fontsize=8, framealpha=0.85)
        if color is not None and sm is not None and norm is not None:
            cb = fig.colorbar(sm, ax=list(axes.flat[:npanels]), shrink=0.9 if rows == 1 else 0.6)
            cb.set_label(_label(names[2], dirs[2]) + " - front points")
        n_front = int(fr.sum())
        sub = f"{len(trials)} trials, {n_front} on the Pareto front"
        fig.suptitle(f"{title}\n{sub}" if title else sub, fontsize=11)
        fig.savefig(path, dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
