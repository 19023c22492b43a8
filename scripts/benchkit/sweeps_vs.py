"""Sections that run whole sweeps: platform overhead (sweep run vs a bare loop) and HF Trainer's search.

Both use the same 8 configurations: the default spec (search_spaces/rank_study.yaml) with a grid space of
rank x alpha_ratio x learning_rate (2 x 2 x 2), so `sweep run` (sampler grid), the bare loop and Trainer's Optuna
GridSampler all train exactly the same points.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchkit.common import SWEEP, Child, bench_spec, child, grid_points, log, median, run, threads_env

SPACE8 = {"rank": [4, 16], "alpha_ratio": [1.0, 4.0], "learning_rate": [0.001, 0.003]}
# all cores; BENCH_CORES=N caps it (a smoke run beside other work: the `all cores` figures then use N)
CORES = int(os.environ.get("BENCH_CORES") or 0) or os.cpu_count() or 1


def specs(ctx) -> dict[str, Path]:
    """The benchmark specs: concurrency 2 x 1 thread (the default layout) and 1 x all cores (pure overhead)."""
    params = {"epochs": ctx.epochs}
    return {
        "concurrent": bench_spec(ctx.work, "bench_sweep", SPACE8, params=params, data=ctx.data,
                                 budget={"trials": 8, "concurrency": 2, "cpus_per_trial": 1}),
        "serial": bench_spec(ctx.work, "bench_sweep_serial", SPACE8, params=params, data=ctx.data,
                             budget={"trials": 8, "concurrency": 1, "cpus_per_trial": CORES}),
    }


def sweep_run(spec: Path, store: Path) -> dict:
    """`sweep run SPEC --no-live` in a fresh store; wall time plus the timeline MLflow recorded."""
    env = {"SWEEPS_STORE": str(store), "MLFLOW_TRACKING_URI": "", "SWEEPS_STUDY_STORAGE": "",
           "SWEEPS_RAY_ADDRESS": ""}
    launched = time.time()
    done: Child = run([SWEEP, "run", str(spec), "--no-live"], env=env, timeout=3 * 3600)
    return {"wall": done.wall, **timeline(spec, store, launched, launched + done.wall)}


def timeline(spec: Path, store: Path, launched: float, ended: float) -> dict:
    """Where a sweep's wall time went, from the runs MLflow recorded (times in seconds from launch)."""
    import yaml

    from sweeps.tracking.tracker import Tracker

    name = yaml.safe_load(spec.read_text())["name"]
    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}")
    parent = next((s for s in tracker.sweeps() if s["name"] == name), {})
    records = [r for r in tracker.trial_records(name) if r.end_time]
    spans = sorted((r.start_time / 1000 - launched, r.end_time / 1000 - launched) for r in records)
    trials = [{**{k: r.metrics.get(k) for k in ("macro_f1", "macro_f1_se", "peak_memory_mb", "trainable_params",
                                                "wall_seconds", "train_seconds")}, "params": r.params}
              for r in records]
    return {"parent_start": (parent.get("start_time") or 0) / 1000 - launched if parent else None,
            "first_trial_start": spans[0][0] if spans else None, "last_trial_end": spans[-1][1] if spans else None,
            "trial_spans": spans, "trials": trials, "exit": ended - launched,
            "best_macro_f1": max((t["macro_f1"] for t in trials if t["macro_f1"] is not None), default=None)}


def bare_loop(ctx, spec: Path, tag: str) -> dict:
    """The same configurations one after another in one process (all cores), through run_trial."""
    store = ctx.work / f"store-bare-{tag}"
    done = child("trials", {"spec": str(spec), "configs": grid_points(SPACE8), "out": str(store / "out"),
                            "launched": time.time()},  # the trial loop as it is: the sweep's workers run it so
                 env={**threads_env(CORES), "SWEEPS_STORE": str(store)}, timeout=3 * 3600)
    rows = [r for r in done.results if r.get("phase") == "trial"]
    imported = next((r["since_launch"] for r in done.results if r.get("phase") == "imported"), None)
    return {"wall": done.wall, "imports": imported, "trials": rows,
            "best_macro_f1": max(r["macro_f1"] for r in rows),
            "trial_wall": sum(r["wall_seconds"] for r in rows), "train": sum(r["train_seconds"] for r in rows)}


def overhead(ctx, record: dict) -> None:
    """The headline: `sweep run` with one trial at a time on all cores against the bare loop (the same parallelism,
    so the ratio is the platform's own cost); the default layout (two 1-thread trials at once) as a second line.
    Each repeat runs the three one after another; min / median / max over the repeats."""
    paths = specs(ctx)
    record["configs"] = grid_points(SPACE8)
    record["runs"] = runs = record.get("runs", [])
    for rep in range(ctx.repeats_for("overhead")):
        log(f"overhead {rep + 1}/{ctx.repeats_for('overhead')}: bare loop (8 trials, 1 process, {CORES} threads)")
        bare = bare_loop(ctx, paths["concurrent"], f"{rep}")
        log(f"  bare loop {bare['wall']:.0f} s; sweep run, 2 concurrent x 1 thread")
        concurrent = sweep_run(paths["concurrent"], ctx.work / f"store-sweep-{rep}")
        log(f"  sweep run {concurrent['wall']:.0f} s; sweep run, 1 x {CORES} threads")
        serial = sweep_run(paths["serial"], ctx.work / f"store-serial-{rep}")
        log(f"  sweep run (serial) {serial['wall']:.0f} s")
        runs.append({"bare": bare, "concurrent": concurrent, "serial": serial, "ratio_serial": serial["wall"] /
                     bare["wall"], "ratio_concurrent": concurrent["wall"] / bare["wall"]})
        ctx.save()
    record["summary"] = summary = {"repeats": len(runs), "threads": CORES}
    for key, values in (("bare_wall", [r["bare"]["wall"] for r in runs]),
                        ("concurrent_wall", [r["concurrent"]["wall"] for r in runs]),
                        ("serial_wall", [r["serial"]["wall"] for r in runs]),
                        ("ratio_serial", [r["ratio_serial"] for r in runs]),
                        ("ratio_concurrent", [r["ratio_concurrent"] for r in runs])):
        summary.update({key: median(values), f"{key}_min": min(values), f"{key}_max": max(values)})
    ctx.shared.update(sweep_concurrent=runs[-1]["concurrent"], sweep_store=ctx.work / f"store-sweep-{len(runs) - 1}")


def hf(ctx, record: dict) -> None:
    """`sweep run` against HF Trainer.hyperparameter_search on the same 8 points and the same trial recipe
    (hf_child.hf: rows, batch order, mean-pooled model, no dropout below the adapters, weighted loss, head learning
    rate, schedule, no pruning: an HF trial follows run_trial's of the same point step for step, up to rounding).
    Each tool's pick is its best validation macro-F1 trial (last epoch, as both score a trial); its test macro-F1
    is measured once.
    Raises when HF's best validation macro-F1 is not clearly above the majority class: a run that learned
    nothing compares nothing."""
    paths = specs(ctx)
    record["runs"] = runs = record.get("runs", [])
    for rep in range(ctx.repeats_for("hf")):
        log(f"hf {rep + 1}/{ctx.repeats_for('hf')}: Trainer.hyperparameter_search, 8 trials, {CORES} threads")
        launched = time.time()
        done = child("hf", {"spec": str(paths["concurrent"]), "space": SPACE8, "trials": 8, "launched": launched,
                            "out": str(ctx.work / f"hf-{rep}")},
                     env={**threads_env(CORES), "SWEEPS_STORE": str(ctx.work / f"store-hf-{rep}")},
                     timeout=3 * 3600)
        final = done.result
        majority = next(r["macro_f1"] for r in done.results if r.get("phase") == "majority")
        epochs = [r for r in done.results if r.get("phase") == "epoch"]
        hf_row = {"wall": done.wall, "search_wall": done.wall - final["test_seconds"],
                  "best_macro_f1": final["best_macro_f1"], "best_macro_f1_se": final.get("best_macro_f1_se"),
                  "best": final.get("best"), "test_macro_f1": final["test_macro_f1"],
                  "test_macro_f1_se": final["test_macro_f1_se"], "majority_macro_f1": majority, "epochs": epochs}
        log(f"  HF {hf_row['search_wall']:.0f} s, best validation macro-F1 {hf_row['best_macro_f1']:.3f}, "
            f"test {hf_row['test_macro_f1']:.3f} (majority {majority:.3f})")
        _check_learned(hf_row, [e["macro_f1"] for e in epochs], strict=not ctx.quick)
        sweep, store, pick = shared_sweep(ctx, paths["concurrent"], fresh=rep > 0)
        log(f"  sweep {sweep['wall']:.0f} s, best validation macro-F1 {pick['best_macro_f1']:.3f}, "
            f"test {pick['test_macro_f1']:.3f}")
        runs.append({"hf": hf_row, "sweep": {**{k: sweep[k] for k in ("wall", "trials")}, **pick}})
        ctx.save()
    record["summary"] = {
        "hf_wall": median([r["hf"].get("search_wall", r["hf"]["wall"]) for r in runs]),
        "sweep_wall": median([r["sweep"]["wall"] for r in runs]),
        "ratio": median([r["sweep"]["wall"] / r["hf"].get("search_wall", r["hf"]["wall"]) for r in runs]),
        "repeats": len(runs), "majority_macro_f1": runs[-1]["hf"].get("majority_macro_f1"),
        **{f"{tool}_{k}": median([r[tool][k] for r in runs if r[tool].get(k) is not None]) for tool in ("hf", "sweep")
           for k in ("best_macro_f1", "best_macro_f1_se", "test_macro_f1", "test_macro_f1_se")}}


def shared_sweep(ctx, spec: Path, fresh: bool = False) -> tuple[dict, Path, dict]:
    """The concurrent `sweep run` of this invocation (the overhead section's last one) and its pick scored on test;
    run here when there is none (or `fresh`). Kept in ctx.shared for the next section that compares with it."""
    sweep, store = ctx.shared.get("sweep_concurrent"), ctx.shared.get("sweep_store")
    if fresh or sweep is None or store is None or not (store / "mlflow.db").is_file():
        log("  sweep run, 2 concurrent x 1 thread")
        store = ctx.work / f"store-cmpsweep-{time.time_ns()}"
        sweep = sweep_run(spec, store)
        ctx.shared.update(sweep_concurrent=sweep, sweep_store=store, sweep_pick=None)
    pick = ctx.shared.get("sweep_pick") or sweep_pick(spec, store)
    ctx.shared["sweep_pick"] = pick
    return sweep, store, pick


MIN_MACRO_F1 = 0.45  # the default spec's trials reach .5-.55 on validation; the majority class .26


def _check_learned(row: dict, scores: list[float] | None = None, strict: bool = True, tool: str = "HF Trainer"
                   ) -> None:
    """Raise if a tool's best validation macro-F1 is not well above the majority class (strict: and >= .45);
    `scores`: its trials' validation macro-F1 (per epoch or per trial; default row["epochs"]), for the message."""
    best, majority = row["best_macro_f1"], row["majority_macro_f1"]
    scores = [e["macro_f1"] for e in row.get("epochs", [])] if scores is None else scores
    floor = max(majority + 0.1, MIN_MACRO_F1) if strict else majority + 0.1
    if best is None or best < floor:
        message = (f"{tool}'s best validation macro-F1 {best if best is None else round(best, 3)} is below "
                   f"{floor:.3f} (majority class {majority:.3f}): its trials did not learn; scores "
                   f"{[round(x, 3) for x in scores if x is not None]}")
        if strict:
            raise RuntimeError(message)
        log(f"  WARNING (quick run, not raised): {message}")


def sweep_pick(spec: Path, store: Path) -> dict:
    """The sweep's best validation macro-F1 trial (MLflow) and its saved adapter scored once on the test split."""
    import yaml

    from sweeps.tracking.tracker import Tracker

    name = yaml.safe_load(spec.read_text())["name"]
    records = [r for r in Tracker(f"sqlite:///{store / 'mlflow.db'}").trial_records(name)
               if r.metrics.get("macro_f1") is not None and r.state == "COMPLETE"]
    best = max(records, key=lambda r: r.metrics["macro_f1"])  # the first of equals, by trial number
    adapter = store / "trials" / name / f"trial-{best.trial_number:04d}" / "adapter"
    done = child("pick_test", {"spec": str(spec), "config": {k: best.params[k] for k in SPACE8},
                               "adapter": str(adapter)}, env={**threads_env(CORES), "SWEEPS_STORE": str(store)})
    return {"best_macro_f1": best.metrics["macro_f1"], "best_macro_f1_se": best.metrics.get("macro_f1_se"),
            "best": {k: best.params[k] for k in SPACE8}, "best_trial": best.trial_number,
            "test_macro_f1": done.result["macro_f1"], "test_macro_f1_se": done.result["macro_f1_se"]}
