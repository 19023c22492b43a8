"""The sampler's settings, chosen on a second grid (issue 18 item 5), so the search section's figures are not in-sample.

`grid_polarity` records the same 135-point grid (rank x alpha x target x learning rate, 1 epoch) on another task: the
drug reviews' polarity (negative / positive, neutral dropped), as search_spaces/review_polarity.yaml defines it.
`sampler_tuning` replays, on that second table only, the settings that sweeps/driver/study/space.py fixes: the GP's
random start-up trial count at each budget and `auto`'s choice of gp over tpe at 32 trials. The product's setting is
called supported where it is within 2 SE (paired by seed) of the best setting tried; the search section then reports
on grid_reviews.csv, which none of these choices looked at.
"""

from __future__ import annotations

import time

from benchkit import replay
from benchkit.common import ROOT, log
from benchkit.report_fmt import met, pm
from benchkit.sections import GRID_AXES, build_grid

GRID2_FILE = ROOT / "benchmarks" / "grid_polarity.csv"
POLARITY = {"label_column": "rating", "labels": ["negative", "positive"], "other_labels": "drop"}
# Start-up counts tried per budget; each list holds the product's own value (max(4, min(10, budget // 2))).
STARTUP = {8: [2, 4, 6], 16: [4, 8, 12], 32: [4, 10, 16]}
SWITCH_BUDGET = 32  # auto picks gp up to here (GP_MAX_TRIALS): gp vs tpe at this budget


def grid_polarity(ctx, record: dict) -> None:
    """The grid on the polarity task (2 processes x 1 thread, 1 epoch per point; ~8 min on 2 cores)."""
    build_grid(ctx, record, "grid_polarity", GRID2_FILE, {**(ctx.data or {}), **POLARITY})


def _product_startup(budget: int) -> int:
    import optuna

    sampler, _ = replay._sampler("gp", 0, budget, 2, {"rank": [2, 4]})
    assert isinstance(sampler, optuna.samplers.GPSampler)
    return sampler._n_startup_trials


def _gp(n_startup: int):
    import optuna

    return lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup,
                                                  warn_independent_sampling=False)


def sampler_tuning(ctx, record: dict) -> None:
    """GP start-up counts per budget, and gp vs tpe at the switch budget, replayed on the second grid."""
    # replaying costs no training: --quick replays the recorded table too (fewer seeds and budgets), and only a
    # checkout without it replays the tiny grid that --quick then records first (bench.py)
    table_path = GRID2_FILE if GRID2_FILE.is_file() or not ctx.quick else ctx.work / "grid_polarity_quick.csv"
    if not table_path.is_file():
        raise FileNotFoundError(f"{table_path}: run `python scripts/bench.py --only grid_polarity` first")
    space, table = replay.load_table(table_path, GRID_AXES)
    ref, full = replay.reference(table)
    budgets = [b for b in STARTUP if not ctx.quick or b <= 8]
    started = time.time()
    by_budget = {}
    for b in budgets:
        product = _product_startup(b)
        arms = {}
        for n in sorted(set(STARTUP[b]) | {product}):
            arms[f"startup {n}"] = [replay.hv_curve(replay.replay("gp", s, b, space, table, b, make=_gp(n)),
                                                    ref, full)[-1] for s in range(ctx.seeds)]
            log(f"tuning @{b}: gp startup {n}: {sum(arms[f'startup {n}']) / ctx.seeds:.3f}")
        if b == SWITCH_BUDGET:
            arms["tpe"] = [replay.hv_curve(replay.replay("tpe", s, b, space, table, b), ref, full)[-1]
                           for s in range(ctx.seeds)]
        by_budget[str(b)] = {**replay.compare(arms), "finals": arms, "product": f"startup {product}",
                             "auto_is": replay.resolve("auto", b, space)}
    record.update(table=str(table_path.relative_to(ROOT)) if table_path.is_relative_to(ROOT) else str(table_path),
                  grid_points=len(table), seeds=ctx.seeds, budgets=budgets, by_budget=by_budget,
                  replay_seconds=round(time.time() - started, 1))


def render(lines: list, rec: dict) -> None:
    by = rec.get("by_budget")
    if not by:
        return
    lines += [f"Table: `{rec['table']}` ({rec['grid_points']} configurations of the polarity task, not the grid the "
              "search section reports on). Normalised HV after the budget's last trial, mean ± SE over "
              f"{rec['seeds']} paired seeds; a setting is behind where the best's lead exceeds 2 SE of the paired "
              "difference.", "", "| budget | setting | HV | |", "|---|---|---|---|"]
    supported = []
    for b in rec["budgets"]:
        d = by[str(b)]
        for name, row in d["rows"].items():
            mark = "**best**" if name == d["best"] else "tie" if row["tied"] else "behind"
            ours = " (ours)" if name == d["product"] else " (ours at this budget: auto picks it)" if (
                name == d["auto_is"]) else ""
            lines.append(f"| {b} | gp {name}{ours} |" if name != "tpe" else f"| {b} | tpe{ours} |")
            lines[-1] += f" {pm(row['mean'], row['se'])} | {mark} |"
        supported.append(d["rows"][d["product"]]["tied"] and (d["auto_is"] == "gp" or "tpe" not in d["rows"]
                                                              or d["rows"]["tpe"]["tied"]))
    ok = all(supported)
    lines += ["", f"- the product's settings (`n_startup_trials = max(4, min(10, budget // 2))`, gp up to "
              f"{SWITCH_BUDGET} trials) within 2 SE of the best setting at every budget on this second grid: "
              f"{met(ok)}", f"- replay time: {rec['replay_seconds']:.0f} s", ""]
