"""Sections of scripts/bench.py other than the whole-sweep ones (benchkit/sweeps_vs.py)."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

from benchkit import replay
from benchkit.common import ROOT, SWEEP, bench_spec, child, grid_points, log, median, run, threads_env

# One configuration of the default spec for throughput / memory / profile: rank 8, attention, upper half.
CONFIG = {"rank": 8}
GRID_AXES = ["rank", "alpha_ratio", "target", "learning_rate"]
GRID = {"rank": [2, 4, 8, 16, 32], "alpha_ratio": [0.5, 2.0, 8.0], "target": ["attention", "ffn", "all-linear"],
        "learning_rate": [0.0005, 0.002, 0.008]}
QUICK_GRID = {"rank": [2, 16], "alpha_ratio": [2.0], "target": ["attention", "ffn"], "learning_rate": [0.002]}
GRID_COLUMNS = [*GRID_AXES, "macro_f1", "accuracy", "loss", "peak_memory_mb", "trainable_params",
                "base_weight_bytes", "train_seconds", "tokens_per_second", "wall_seconds"]
GRID_FILE = ROOT / "benchmarks" / "grid_reviews.csv"


def cli(ctx, record: dict) -> None:
    commands = {"sweep --help": [SWEEP, "--help"],
                "sweep validate search_spaces/rank_study.yaml": [SWEEP, "validate", "search_spaces/rank_study.yaml"]}
    run([SWEEP, "--help"])  # the first start reads the files from disk; the figures are for a warm page cache
    record["rows"] = rows = []
    for label, cmd in commands.items():
        walls = [run(cmd).wall for _ in range(ctx.repeats_for("cli"))]
        rows.append({"command": label, "walls": walls, "median": median(walls), "min": min(walls)})
        log(f"cli: {label}: median {median(walls):.2f} s")


def memory(ctx, record: dict) -> None:
    spec = bench_spec(ctx.work, "bench_memory", {"rank": [8]}, data=ctx.data, params={"epochs": 1})
    record["rows"] = rows = []
    for mode in ("none", "int8", "nf4", "fp4"):
        peaks, result = [], {}
        for _ in range(ctx.repeats_for("memory")):
            done = child("trials", {"spec": str(spec), "configs": [{**CONFIG, "quantization": mode}],
                                    "out": str(ctx.work / f"mem-{mode}")},
                         env={**threads_env(1), "SWEEPS_STORE": str(ctx.work / "store-mem")})
            result = next(r for r in done.results if r.get("phase") == "trial")
            peaks.append(result["peak_memory_mb"])
        rows.append({"quantization": mode, "base_weight_bytes": result["base_weight_bytes"], "peaks_mb": peaks,
                     "peak_memory_mb": median(peaks), "macro_f1": result["macro_f1"],
                     "tokens_per_second": result["tokens_per_second"]})
        log(f"memory: {mode}: weights {result['base_weight_bytes'] / 2**20:.1f} MiB, peak {median(peaks):.0f} MB")


NO_LEVERS = {"SWEEPS_REUSE_BASE": "0", "SWEEPS_FROZEN_PREFIX": "0"}  # and bf16 off: each lever alone below


def _ours(ctx, spec: Path, threads: int, warm: bool, config: dict | None = None, env: dict | None = None) -> dict:
    config = {**CONFIG, **(config or {})}
    configs = [config, config] if warm else [config]
    done = child("trials", {"spec": str(spec), "configs": configs, "out": str(ctx.work / "tp")},
                 env={**threads_env(threads), "SWEEPS_STORE": str(ctx.work / "store-tp"), **(env or {})})
    row = [r for r in done.results if r.get("phase") == "trial"][-1]
    return {"wall": row["tokens_per_second"], "cpu": row.get("cpu_tokens_per_second") if threads == 1 else None,
            "macro_f1": row["macro_f1"]}


def _plain(ctx, spec: Path, threads: int, bucket: bool = False) -> dict:
    done = child("plain", {"spec": str(spec), "config": CONFIG, "bucket": bucket},
                 env={**threads_env(threads), "SWEEPS_STORE": str(ctx.work / "store-tp")})
    return {"wall": done.result["tokens_per_second"],
            "cpu": done.result["cpu_tokens_per_second"] if threads == 1 else None}


def _concurrent(ctx, spec: Path) -> dict:
    """Aggregate tokens/s of two 1-thread trial processes running at once (the sweep's layout on 2 cores)."""
    out: list[dict] = []
    jobs = [threading.Thread(target=lambda: out.append(_ours(ctx, spec, 1, True))) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    return {"wall": sum(r["wall"] for r in out), "cpu": None}


def throughput(ctx, record: dict) -> None:
    """Each variant in a fresh process; repeats go round-robin over the variants so drifting load hits all.

    "second in its process" is a trial after another one in the same worker (what a sweep's reused Ray workers
    run): the base comes from the worker's slot and its frozen-prefix cache is warm; "first in its process" is a
    worker's first trial: the base is loaded and the cache filled during the trial (cold). Rows come in pairs that
    differ by one lever (bucketing, bf16, reuse + cache, cold vs warm), so each lever's share is visible; a row
    that forces bf16 on is skipped where the machine has no bf16 hardware (emulated bf16 is ~100x slower)."""
    spec = bench_spec(ctx.work, "bench_throughput", {"rank": [8]}, data=ctx.data, params={"epochs": ctx.tp_epochs})
    fp32 = {"bf16": "off"}
    variants = {  # label: (key, measurement)
        "plain PEFT loop, pad to max_length, fixed order (1 thread)": ("plain", lambda: _plain(ctx, spec, 1)),
        "plain loop + length bucketing (1 thread)": ("plain_bucketed", lambda: _plain(ctx, spec, 1, bucket=True)),
        "our trial, fp32, no reuse, no prefix cache: length bucketing only (1 thread)": (
            "bucketing", lambda: _ours(ctx, spec, 1, True, fp32, NO_LEVERS)),
        "+ bf16 autocast only (`bf16: on`; 1 thread)": (
            "bf16", lambda: _ours(ctx, spec, 1, True, {"bf16": "on"}, NO_LEVERS)),
        "+ reuse + frozen-prefix cache only (fp32), first in its process: cold cache (1 thread)": (
            "cache_cold", lambda: _ours(ctx, spec, 1, False, fp32)),
        "+ reuse + frozen-prefix cache only (fp32), second in its process: warm cache (1 thread)": (
            "cache_warm", lambda: _ours(ctx, spec, 1, True, fp32)),
        "our trial as shipped (`bf16: auto`, reuse, prefix cache), first in its process (1 thread)": (
            "shipped_cold", lambda: _ours(ctx, spec, 1, False)),
        "our trial as shipped, second in its process (1 thread)": ("shipped_warm", lambda: _ours(ctx, spec, 1, True)),
        "plain PEFT loop (2 threads)": ("plain_2", lambda: _plain(ctx, spec, 2)),
        "our trial as shipped, second in its process (2 threads)": (
            "shipped_warm_2", lambda: _ours(ctx, spec, 2, True)),
        "our trials as shipped, 2 processes x 1 thread at once (sum)": (
            "shipped_2x1", lambda: _concurrent(ctx, spec)),
    }
    machine = record.get("machine") or {}
    bf16_hw = bool(machine.get("gpu")) or bool({"amx_bf16", "avx512_bf16"} & set(machine.get("cpu_flags") or []))
    rows = {r["label"]: r for r in record.get("rows", []) if r["label"] in variants}
    record["rows"] = list(rows.values())
    for rep in range(ctx.repeats_for("throughput")):
        for label, (key, measure) in variants.items():
            row = rows.setdefault(label, {"label": label, "key": key, "wall": [], "cpu": [], "macro_f1": []})
            if label not in [r["label"] for r in record["rows"]]:
                record["rows"].append(row)
            if key == "bf16" and not bf16_hw:
                row["skipped"] = "no bf16 hardware (AMX, AVX512-BF16 or a GPU): emulated bf16 is ~100x slower"
                continue
            if len(row["wall"]) > rep:
                continue
            value = measure()
            row["wall"].append(value["wall"])
            if value.get("cpu"):
                row["cpu"].append(value["cpu"])
            row.update(median=median(row["wall"]), cpu_median=median(row["cpu"]) if row["cpu"] else None)
            log(f"throughput: {label}: {value['wall']:.0f} tokens/s"
                + (f", {value['cpu']:.0f} tokens per CPU-s" if value.get("cpu") else ""))
            ctx.save()
    record["rows"].sort(key=lambda r: list(variants).index(r["label"]))


def profile(ctx, record: dict) -> None:
    spec = bench_spec(ctx.work, "bench_profile", {"rank": [8]}, data=ctx.data, params={"epochs": ctx.tp_epochs})
    done = child("profile", {"spec": str(spec), "config": CONFIG, "out": str(ctx.work / "prof"),
                             "launched": time.time()},
                 env={**threads_env(1), "SWEEPS_STORE": str(ctx.work / "store-prof")})
    imports = next((r["since_launch"] for r in done.results if r.get("phase") == "imported"), None)
    trials = [r for r in done.results if r.get("phase") == "profile"]
    record["runs"] = [{"imports": imports, "trials": trials}]
    log(f"profile: imports {imports:.1f} s, trials {[round(t['wall'], 1) for t in trials]} s")
    record["ray"] = _ray_start(ctx)


RAY_CHILD = """
import json, time
t0 = time.time()
import ray
t1 = time.time()
ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
t2 = time.time()
@ray.remote
def warm():
    t = time.time()
    from sweeps.trial.worker import run_one  # what a Tune worker imports before its first trial
    import sweeps.trial.loop  # noqa: F401
    return time.time() - t
t3 = time.time()
inside = ray.get(warm.remote())
t4 = time.time()
ray.shutdown()
print("RESULT " + json.dumps({"import_ray": t1 - t0, "ray_init": t2 - t1, "first_task_total": t4 - t3,
                              "worker_imports": inside, "shutdown": time.time() - t4}))
"""


def _ray_start(ctx) -> dict:
    from benchkit.common import PY

    return run([PY, "-c", RAY_CHILD], env={"SWEEPS_STORE": str(ctx.work / "store-ray")}).result


def grid(ctx, record: dict) -> None:
    """Every grid point once through run_trial, 2 worker processes x 1 thread, appended as it goes (resumable)."""
    build_grid(ctx, record, "grid_reviews", GRID_FILE, ctx.data)


def build_grid(ctx, record: dict, name: str, target: Path, data: dict | None) -> None:
    """The grid of `name` (the default spec with `data` merged into its data block) written to `target`."""
    space = QUICK_GRID if ctx.quick else GRID
    target = ctx.work / f"{target.stem}_quick.csv" if ctx.quick else target
    points = grid_points(space)
    spec = bench_spec(ROOT / "benchmarks" if not ctx.quick else ctx.work, name, space,
                      data=data, params={"epochs": 1}, budget={"trials": len(points)})
    parts = [target.with_name(f"{target.stem}.part{i}.csv") for i in range(2)]
    log(f"{name}: {len(points)} points, 1 epoch each, 2 processes x 1 thread -> {target}")
    jobs = [threading.Thread(target=child, args=("trials", {
        "spec": str(spec), "configs": points[i::2], "out": str(ctx.work / f"{name}{i}"), "csv": str(parts[i]),
        "axes": GRID_AXES, "columns": GRID_COLUMNS}),
        kwargs={"env": {**threads_env(1), "SWEEPS_STORE": str(ctx.work / f"store-{name}")}, "timeout": 6 * 3600})
        for i in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    rows = [r for part in parts if part.is_file() for r in csv.DictReader(part.open())]
    rows.sort(key=lambda r: replay.key({a: replay._value(r[a]) for a in GRID_AXES}, GRID_AXES))
    with target.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=GRID_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if len(rows) == len(points):
        for part in parts:
            part.unlink()
    record.update(points=len(points), rows=len(rows), file=str(target.relative_to(ROOT) if not ctx.quick else target),
                  space=space, spec=str(spec.relative_to(ROOT)) if not ctx.quick else str(spec))


SEARCH_SAMPLERS = ["gp", "tpe", "nsga2", "random", "auto"]
SEARCH_BUDGETS = [8, 16, 32]


def search(ctx, record: dict) -> None:
    """Each sampler run as a sweep of each budget would run it (make_sampler's settings for that budget), for
    ctx.seeds seeds; the HV after the budget's last trial is compared across samplers per budget (replay.compare:
    mean ± SE, paired by seed, a gap counts only beyond 2 SE of the per-seed differences)."""
    table = Path(ctx.grid_file)
    if not table.is_file():
        raise FileNotFoundError(f"{table}: run `python scripts/bench.py --only grid` first")
    budgets = [b for b in SEARCH_BUDGETS if not ctx.quick or b <= 8]
    runs = {f"{kind}@{b}": (kind, b, b) for b in budgets for kind in SEARCH_SAMPLERS}
    started = time.time()
    result = replay.run_all(table, GRID_AXES, ctx.seeds, runs, progress=log)
    curves = result["curves"]
    record.update({k: v for k, v in result.items() if k != "curves"}, curves=curves, seeds=ctx.seeds,
                  table=str(table.relative_to(ROOT)) if table.is_relative_to(ROOT) else str(table))
    space, _ = replay.load_table(table, GRID_AXES)
    by_budget = {}
    for b in budgets:
        finals = {kind: [c[b - 1] for c in curves[f"{kind}@{b}"]] for kind in SEARCH_SAMPLERS}
        by_budget[str(b)] = {**replay.compare(finals), "finals": finals,
                             "auto_is": replay.resolve("auto", b, space)}
        log(f"search @{b}: best {by_budget[str(b)]['best']}; within 2 SE of it: "
            f"{', '.join(by_budget[str(b)]['tied'])}")
    others = sorted(p.name for p in table.parent.glob("*.csv") if p.resolve() != table.resolve())
    record["summary"] = {"budgets": budgets, "samplers": SEARCH_SAMPLERS, "by_budget": by_budget,
                         "replay_seconds": round(time.time() - started, 1), "other_tables": others}
    plot = ctx.plot_path
    top = budgets[-1]
    drawn = [k for k in SEARCH_SAMPLERS if f"{k}@{top}" not in result["aliases"]]
    replay.plot(result, plot, f"Hypervolume vs trials on the {result['grid_points']}-point grid, {top}-trial "
                              f"sweeps (dots: {', '.join(map(str, budgets[:-1]))}-trial sweeps)",
                labels=[f"{k}@{top}" for k in drawn],
                marks={f"{k}@{top}": [(b, by_budget[str(b)]["finals"][k]) for b in budgets[:-1]] for k in drawn})
    record["plot"] = str(plot.relative_to(ROOT)) if plot.is_relative_to(ROOT) else str(plot)


ARMS = {"shipped": ({}, {}),  # bf16 auto, reuse, frozen-prefix cache
        "fp32": ({"bf16": "off"}, {}),
        "fp32, no prefix cache": ({"bf16": "off"}, {"SWEEPS_FROZEN_PREFIX": "0"})}


def levers(ctx, record: dict) -> None:
    """The speed levers must not cost accuracy: bf16 autocast rounds activations, and the frozen-prefix cache
    turns dropout off inside the frozen blocks. The 8 configurations of the sweep sections, trained at the default
    spec's 3 epochs in each arm (one process per arm, two arms at a time on 2 cores)."""
    from benchkit.sweeps_vs import SPACE8

    spec = bench_spec(ctx.work, "bench_levers", SPACE8, data=ctx.data, params={"epochs": ctx.quality_epochs})
    out: dict[str, list] = {}

    def arm(name: str) -> None:
        params, env = ARMS[name]
        configs = [{**c, **params} for c in grid_points(SPACE8)]
        out_dir = str(ctx.work / f"lever-{names.index(name)}")
        done = child("trials", {"spec": str(spec), "configs": configs, "out": out_dir},
                     env={**threads_env(1), "SWEEPS_STORE": str(ctx.work / "store-levers"), **env}, timeout=6 * 3600)
        out[name] = [r for r in done.results if r.get("phase") == "trial"]

    log(f"levers: 8 configurations x {len(ARMS)} arms, {ctx.quality_epochs} epochs, 2 processes x 1 thread")
    names = list(ARMS)
    for batch in (names[:2], names[2:]):
        jobs = [threading.Thread(target=arm, args=(n,)) for n in batch]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
    rows = [{"config": {k: trials[0][k] for k in SPACE8},
             **{f"macro_f1[{n}]": out[n][i]["macro_f1"] for n in names},
             **{f"train_seconds[{n}]": out[n][i]["train_seconds"] for n in names}}
            for i, trials in enumerate(zip(*(out[n] for n in names), strict=True))]
    summary = {}
    for n in names:
        deltas = [r[f"macro_f1[{n}]"] - r[f"macro_f1[{names[-1]}]"] for r in rows]
        summary[n] = {"best": max(r[f"macro_f1[{n}]"] for r in rows), "mean": sum(r[f"macro_f1[{n}]"] for r in
                                                                                 rows) / len(rows),
                      "mean_delta": sum(deltas) / len(deltas), "max_abs_delta": max(map(abs, deltas)),
                      "train_seconds": sum(r[f"train_seconds[{n}]"] for r in rows)}
    record.update(arms=names, rows=rows, summary=summary, epochs=ctx.quality_epochs)
    log("levers: " + "; ".join(f"{n}: best {s['best']:.3f}, mean {s['mean']:.3f}, train {s['train_seconds']:.0f} s"
                               for n, s in summary.items()))
