"""Sections that run other tools on the benchmark's data: plain Ray Tune around our trial function, and SetFit.

Both use the default spec's data (benchkit/common.py DEFAULT_SPEC: same train / validation / test rows as our
trials); Ray Tune trains the same 8 configurations as the overhead and hf sections (sweeps_vs.SPACE8).
"""

from __future__ import annotations

import time
from pathlib import Path

from benchkit.common import bench_spec, child, log, threads_env
from benchkit.sweeps_vs import CORES, SPACE8, _check_learned, shared_sweep, specs

OBJECTIVES = [("macro_f1", "maximize"), ("peak_memory_mb", "minimize"), ("trainable_params", "minimize")]
# without the measured peak: a worker's first trial measures more than its later ones (a fresh process's first
# allocations), and plain Ray Tune starts every trial in a fresh worker while `sweep run` reuses them
NO_MEMORY = [("macro_f1", "maximize"), ("trainable_params", "minimize")]
SETFIT_ITERATIONS = 5  # pairs per training row and side: 480 rows -> 4,800 pairs, ~11 min fit on 1 thread
SETFIT_MAX_LENGTH = 128


def majority_macro_f1(spec: Path) -> float:
    """Validation macro-F1 of always predicting the training split's majority class (what `did not learn` reads)."""
    import numpy as np

    from sweeps.spec import load_spec
    from sweeps.trial.data.labelled import load_classification
    from sweeps.trial.tasks.classify import macro_f1

    loaded = load_spec(spec)
    task = load_classification(loaded.data, loaded.seed)
    y_val = np.asarray(task.validation["label"])
    return macro_f1(y_val, np.full(len(y_val), np.bincount(np.asarray(task.train["label"])).argmax()))


def hypervolumes(tools: dict[str, list[dict]], objectives: list[tuple[str, str]] = OBJECTIVES) -> dict:
    """Each tool's hypervolume on our three objectives (sweeps.driver.selection.pareto, the code `sweep pareto`
    reports), all against one reference point: sweeps' reference_point over every tool's trials together (worst
    value of each objective plus a 10 % margin). `fraction`: a tool's HV / the HV of all trials together."""
    import numpy as np

    from sweeps.driver.selection.pareto import hypervolume, reference_point

    directions = [d for _, d in objectives]
    points = {name: np.asarray([[t[m] for m, _ in objectives] for t in trials
                                if all(t.get(m) is not None for m, _ in objectives)], dtype=float)
              .reshape(-1, len(objectives)) for name, trials in tools.items()}
    union = np.vstack(list(points.values()))
    ref = reference_point(union, directions)
    full = hypervolume(union, directions, ref)
    out = {"reference": ref.tolist(), "union": full, "objectives": [m for m, _ in objectives]}
    for name, p in points.items():
        hv = hypervolume(p, directions, ref) if len(p) else 0.0
        out[name] = {"hv": hv, "fraction": hv / full if full else None, "trials": len(p)}
    return out


def raytune(ctx, record: dict) -> None:
    """Plain Ray Tune (peer_children.raytune: Tuner + OptunaSearch + ASHAScheduler on macro-F1, run_trial as the
    trial function) against `sweep run` on the same 8 configurations, 2 concurrent x 1 thread each. Each tool's pick
    is its best validation macro-F1 trial, scored once on test. Raises when Ray Tune's best validation macro-F1
    is below .45 or not clearly above the majority class (quick: only the latter, and only a warning)."""
    spec = specs(ctx)["concurrent"]
    majority = majority_macro_f1(spec)
    log("raytune: Tuner + OptunaSearch(GridSampler) + ASHAScheduler, 8 trials, 2 concurrent x 1 thread")
    done = child("raytune", {"spec": str(spec), "space": SPACE8, "trials": 8, "concurrency": 2,
                             "out": str(ctx.work / "raytune"), "launched": time.time()},
                 env={**threads_env(1), "SWEEPS_STORE": str(ctx.work / "store-raytune")}, timeout=3 * 3600)
    trials = [r for r in done.results if r.get("phase") == "trial"]
    final = done.result
    pick = trials[final["pick"]] if final.get("pick") is not None else {}
    row = {"wall": done.wall, "trials": trials, "epochs": final.get("epochs"), "majority_macro_f1": majority,
           "stopped_early": sum(bool(t["stopped_early"]) for t in trials),
           "failed": sum(t["error"] is not None for t in trials), "best": pick.get("config"),
           "best_macro_f1": pick.get("macro_f1"), "best_macro_f1_se": pick.get("macro_f1_se")}
    log(f"  Ray Tune {row['wall']:.0f} s, {row['stopped_early']} of {len(trials)} stopped by ASHA, best validation "
        f"macro-F1 {row['best_macro_f1'] if row['best_macro_f1'] is None else round(row['best_macro_f1'], 3)}")
    record["raytune"] = row
    ctx.save()
    _check_learned(row, [t["macro_f1"] for t in trials], strict=not ctx.quick, tool="Ray Tune")
    if pick:
        test = child("pick_test", {"spec": str(spec), "config": pick["config"], "adapter": pick["adapter"]},
                     env={**threads_env(CORES), "SWEEPS_STORE": str(ctx.work / "store-raytune")}).result
        row.update(test_macro_f1=test["macro_f1"], test_macro_f1_se=test["macro_f1_se"])
    sweep, _, sweep_pick = shared_sweep(ctx, spec)
    record["sweep"] = {"wall": sweep["wall"], "trials": sweep["trials"], **sweep_pick}
    tools = {"raytune": [t for t in trials if t.get("adapter")], "sweep": sweep["trials"]}
    record["hv"], record["hv_no_memory"] = hv, hv2 = hypervolumes(tools), hypervolumes(tools, NO_MEMORY)
    record["summary"] = {
        "raytune_wall": row["wall"], "sweep_wall": sweep["wall"], "ratio": sweep["wall"] / row["wall"],
        "majority_macro_f1": majority, "trials": len(trials), "epochs": row["epochs"],
        "stopped_early": row["stopped_early"], "failed": row["failed"],
        "raytune_hv": hv["raytune"]["hv"], "raytune_hv_fraction": hv["raytune"]["fraction"],
        "sweep_hv": hv["sweep"]["hv"], "sweep_hv_fraction": hv["sweep"]["fraction"],
        "raytune_hv_no_memory_fraction": hv2["raytune"]["fraction"], "sweep_hv_no_memory_fraction":
            hv2["sweep"]["fraction"],
        **{f"{tool}_{k}": src.get(k) for tool, src in (("raytune", row), ("sweep", record["sweep"]))
           for k in ("best_macro_f1", "best_macro_f1_se", "test_macro_f1", "test_macro_f1_se")}}
    s = record["summary"]
    log(f"  Ray Tune: test {s['raytune_test_macro_f1']}, HV fraction {s['raytune_hv_fraction']:.3f}; sweep "
        f"{s['sweep_wall']:.0f} s, test {s['sweep_test_macro_f1']:.3f}, HV fraction {s['sweep_hv_fraction']:.3f}")


def setfit(ctx, record: dict) -> None:
    """SetFit (peer_children.setfit) on the default spec's base body and splits, all cores: its test macro-F1 is
    the reference a specialised few-shot tool reaches; the report compares our promoted adapters with it."""
    spec = bench_spec(ctx.work, "bench_setfit", {"rank": [8]}, data=ctx.data)
    iterations = 1 if ctx.quick else SETFIT_ITERATIONS
    log(f"setfit: MiniLM body, {iterations} pair iterations, max_length {SETFIT_MAX_LENGTH}, {CORES} threads")
    done = child("setfit", {"spec": str(spec), "iterations": iterations, "max_length": SETFIT_MAX_LENGTH,
                            "out": str(ctx.work / "setfit"), "launched": time.time()},
                 env={**threads_env(CORES), "SWEEPS_STORE": str(ctx.work / "store-setfit"), "HF_HUB_OFFLINE": "1",
                      "TRANSFORMERS_OFFLINE": "1"}, timeout=3 * 3600)
    final = done.result
    record.update(wall=done.wall, iterations=iterations, max_length=SETFIT_MAX_LENGTH, head="LogisticRegression("
                  "class_weight='balanced')", **{k: final[k] for k in ("fit_seconds", "train_rows", "pairs", "bf16",
                                                                        "threads", "validation", "test", "version")})
    log(f"  SetFit {done.wall:.0f} s (fit {final['fit_seconds']:.0f} s): validation macro-F1 "
        f"{final['validation']['macro_f1']:.3f}, test {final['test']['macro_f1']:.3f}")
