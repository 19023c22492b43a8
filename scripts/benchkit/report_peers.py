"""BENCHMARKS.md sections that set `sweep run` against something else: the bare loop (overhead), HF Trainer, plain
Ray Tune, SetFit, and the table of tools that sums them up."""

from __future__ import annotations

from benchkit.report_fmt import GOALS, compare, derived, f1, met, pm, speed, spread


def overhead(lines: list, rec: dict) -> None:
    s = rec.get("summary")
    if not s:
        return
    n = s["repeats"]
    cores = f"all cores ({s['threads']} threads)" if s.get("threads") else "all cores"

    def row(label: str, key: str) -> str:
        lo, hi = s.get(f"{key}_min"), s.get(f"{key}_max")
        return f"| {label} | {s[key]:.1f} | " + (f"{lo:.1f} | {hi:.1f} |" if lo is not None else "— | — |")

    lines += [f"| run (8 configurations, same trial code; {n} repeat{'s' if n != 1 else ''}) | wall s (median) | "
              "min | max |", "|---|---|---|---|",
              row(f"bare loop: run_trial one after another in one process, {cores}", "bare_wall"),
              row(f"`sweep run`, 1 trial at a time x {cores} (the same parallelism as the loop)", "serial_wall"),
              row("`sweep run`, 2 concurrent trials x 1 thread (the default layout)", "concurrent_wall"), "",
              f"- **headline, parallelism held equal**: sweep (1 trial x all cores) / bare loop: "
              f"**{spread(s, 'ratio_serial')}** (goal <= 1.05: {met(s['ratio_serial'] <= GOALS['overhead'])}): "
              "the platform's own cost (Ray, Optuna, MLflow, start-up, the Pareto report).",
              f"- the default layout, sweep (2 trials x 1 thread) / bare loop: {spread(s, 'ratio_concurrent')}: "
              "not the platform's cost but a layout choice. Both use every core, the sweep by running two trials at "
              "once, the loop by giving one trial all threads; " + (
                  "here two 1-thread trials at once finish sooner." if s["ratio_concurrent"] < s["ratio_serial"] else
                  "here two 1-thread trials at once are no faster."),
              f"- repeats: {n} (each: bare loop, sweep 2 x 1, sweep 1 x all, one after another)", ""]
    run, bare = rec["runs"][-1]["concurrent"], rec["runs"][-1]["bare"]
    if run.get("first_trial_start") is not None:
        lines += [f"Timeline of the last concurrent sweep (s from launch): sweep opened in MLflow at "
                  f"{run['parent_start']:.1f}, first trial started {run['first_trial_start']:.1f}, last trial ended "
                  f"{run['last_trial_end']:.1f}, process exited {run['exit']:.1f}.", ""]
        fixed = derived(rec, "fixed_seconds", run["first_trial_start"] + run["exit"] - run["last_trial_end"])
        ray = derived(rec, "ray_start_seconds", run["first_trial_start"] - run["parent_start"])
        after = derived(rec, "after_last_trial_seconds", run["exit"] - run["last_trial_end"])
        trials = derived(rec, "trials_span_seconds", run["last_trial_end"] - run["first_trial_start"])
        lines += [f"Where the difference goes: the sweep's fixed costs are {fixed:.1f} s (driver imports, input "
                  f"checks and stores until the sweep opened {run['parent_start']:.1f} s; Ray start and the first "
                  f"proposals {ray:.1f} s; after the last trial: front, plot and Ray shutdown {after:.1f} s) against "
                  f"the bare loop's {bare.get('imports') or 0:.1f} s of imports; the trials themselves took "
                  f"{trials:.1f} s in the sweep (two at a time) and {bare.get('trial_wall', 0):.1f} s in the loop. A "
                  "fixed cost weighs less the longer the sweep.", ""]


def hf(lines: list, rec: dict) -> None:
    s = rec.get("summary")
    if not s:
        return
    if s.get("hf_test_macro_f1") is None or s.get("sweep_test_macro_f1") is None:
        lines += ["| tool (8 configurations) | wall s | best validation macro-F1 |", "|---|---|---|",
                  f"| HF `Trainer.hyperparameter_search` | {s['hf_wall']:.1f} | {s['hf_best_macro_f1']:.4f} |",
                  f"| `sweep run` | {s['sweep_wall']:.1f} | {s['sweep_best_macro_f1']:.4f} |", "",
                  "- **void**: an older record, from before the same-recipe HF child (issue 18): HF did not train our "
                  "recipe (its trials never left the majority class) and has no test figure; rerun `--only hf`", ""]
        return
    ratio = s["ratio"]
    lines += ["Both tools train the same 8 configurations with the same trial recipe (same tokenized rows with "
              "head+tail truncation, mean-pooled MiniLM with LoRA on the same modules and a linear head, "
              "class-weighted loss, head learning rate x head_lr_ratio, linear warmup/decay, epochs, batch, seed); "
              "each tool's pick is its best validation macro-F1 trial, scored once on the test split "
              "(± bootstrap SE). HF's wall leaves out its per-trial test scoring.", "",
              "| tool (8 configurations) | wall s | best validation macro-F1 | test macro-F1 of the pick |",
              "|---|---|---|---|",
              f"| HF `Trainer.hyperparameter_search` (optuna grid, model_init per trial, 1 process x all cores) | "
              f"{s['hf_wall']:.1f} | {f1(s['hf_best_macro_f1'], s.get('hf_best_macro_f1_se'))} | "
              f"{f1(s['hf_test_macro_f1'], s.get('hf_test_macro_f1_se'))} |",
              f"| `sweep run` (2 concurrent trials x 1 thread) | {s['sweep_wall']:.1f} | "
              f"{f1(s['sweep_best_macro_f1'], s.get('sweep_best_macro_f1_se'))} | "
              f"{f1(s['sweep_test_macro_f1'], s.get('sweep_test_macro_f1_se'))} |", "",
              f"- wall ratio sweep / HF: **{ratio:.3f}**: `sweep run` is {speed(ratio)} (goal <= 0.4: "
              f"{met(ratio <= GOALS['hf_wall'])})",
              "- best validation macro-F1, sweep vs HF: " + compare(
                  rec, "best", s["sweep_best_macro_f1"], s["hf_best_macro_f1"], s.get("sweep_best_macro_f1_se"),
                  s.get("hf_best_macro_f1_se")),
              "- test macro-F1 of the pick, sweep vs HF: " + compare(
                  rec, "test", s["sweep_test_macro_f1"], s["hf_test_macro_f1"], s.get("sweep_test_macro_f1_se"),
                  s.get("hf_test_macro_f1_se"))]
    if s.get("majority_macro_f1") is not None:
        lines.append(f"- majority class on validation: {s['majority_macro_f1']:.4f} (the section fails if HF's best "
                     "is below .45 or not clearly above it)")
    runs = rec.get("runs") or []
    epochs = (runs[-1].get("hf") or {}).get("epochs") if runs else None
    if epochs:
        by_trial: dict = {}
        for e in epochs:
            by_trial.setdefault(e.get("trial"), []).append(e["macro_f1"])
        lines.append("- HF validation macro-F1 per epoch, by trial: " + "; ".join(
            f"{t}: {' '.join(f'{v:.3f}' for v in vals)}" for t, vals in by_trial.items()))
    lines += [f"- repeats: {s['repeats']}", ""]


def raytune(lines: list, rec: dict) -> None:
    s = rec.get("summary")
    if not s:
        return
    epochs = s["epochs"]
    lines += ["Plain Ray Tune, the script a Ray user writes around our trial function: `Tuner` + `OptunaSearch` "
              "(Optuna's GridSampler over the same 8 points as `sweep run` and HF) + `ASHAScheduler` on validation "
              f"macro-F1, reported per epoch through `tune.report` (max_t {epochs} epochs, grace period 1, reduction "
              "factor 2); `sweeps.trial.loop.run_trial` is the trial function; 2 concurrent trials x 1 CPU, as "
              "`sweep run`. Each tool's pick is its best validation macro-F1 trial among those that ran every epoch, "
              "scored once on the test split (± bootstrap SE). HV: hypervolume on our three objectives (macro-F1 "
              "max, measured peak MB min, trainable parameters min) of the trials with an adapter, against one "
              "reference point for both tools (sweeps.driver.selection.pareto); fraction: a tool's HV / the HV of "
              "both tools' trials together. Ray Tune's default (`reuse_actors=False`) starts every trial in a fresh "
              "worker, whose first trial measures a higher peak than a reused worker's later ones (`sweep run` "
              "reuses them; memory_account section): the last column leaves the measured peak out.", "",
              "| tool (8 configurations, 2 concurrent x 1 thread) | wall s | best validation macro-F1 | test "
              "macro-F1 of the pick | HV fraction (HV in BENCHMARKS.json) | HV fraction, macro-F1 x params |",
              "|---|---|---|---|---|---|"]
    for tool, label in (("raytune", "Ray Tune: Tuner + OptunaSearch + ASHAScheduler"), ("sweep", "`sweep run`")):
        best = f1(s[f"{tool}_best_macro_f1"], s.get(f"{tool}_best_macro_f1_se"))
        test = f1(s.get(f"{tool}_test_macro_f1"), s.get(f"{tool}_test_macro_f1_se"))
        no_memory = s.get(f"{tool}_hv_no_memory_fraction")
        lines.append(f"| {label} | {s[f'{tool}_wall']:.1f} | {best} | {test} | {s[f'{tool}_hv_fraction']:.3f} | "
                     + (f"{no_memory:.3f} |" if no_memory is not None else "— |"))
    ratio = s["ratio"]
    lines += ["", f"- wall ratio sweep / Ray Tune: **{ratio:.3f}**: `sweep run` is {speed(ratio)}",
              "- best validation macro-F1, sweep vs Ray Tune: " + compare(
                  rec, "best", s["sweep_best_macro_f1"], s["raytune_best_macro_f1"], s.get("sweep_best_macro_f1_se"),
                  s.get("raytune_best_macro_f1_se")),
              "- test macro-F1 of the pick, sweep vs Ray Tune: " + compare(
                  rec, "test", s["sweep_test_macro_f1"], s.get("raytune_test_macro_f1"),
                  s.get("sweep_test_macro_f1_se"), s.get("raytune_test_macro_f1_se")),
              f"- ASHA stopped {s['stopped_early']} of {s['trials']} trials early" + (
                  " (it decides between epochs: with 1 epoch per trial it cannot stop any)" if epochs == 1 else "")
              + f"; failed trials: {s['failed']}. A stopped trial saved no adapter and is not in Ray Tune's HV.",
              f"- majority class on validation: {s['majority_macro_f1']:.4f} (the section fails if Ray Tune's best is "
              "below .45 or not clearly above it)"]
    trials = (rec.get("raytune") or {}).get("trials") or []
    if trials:
        lines.append("- Ray Tune's trials (rank, alpha_ratio, learning_rate: last validation macro-F1, epochs run): "
                     + "; ".join(f"{t['config']['rank']}, {t['config']['alpha_ratio']}, {t['config']['learning_rate']}"
                                 f": {pm(t['macro_f1'], None)}, {t['epochs_run']}" for t in trials))
    lines.append("")


def _ours_on_test(data: dict, quick: bool) -> list[tuple[str, float, float | None]]:
    """Our promoted adapters' test macro-F1 recorded by other sections run in the same mode (quick or not)."""
    sections = data.get("sections", {})
    out = []
    for name, label in (("raytune", "the sweep's pick (raytune section)"), ("hf", "the sweep's pick (hf section)")):
        rec = sections.get(name) or {}
        s = rec.get("summary") or {}
        if bool((rec.get("settings") or {}).get("quick")) == quick and s.get("sweep_test_macro_f1") is not None:
            out.append((label, s["sweep_test_macro_f1"], s.get("sweep_test_macro_f1_se")))
            break  # the two sections share one sweep when run together
    recipes = sections.get("recipes") or {}
    default = (recipes.get("summary") or {}).get("default recipe")
    if default and bool((recipes.get("settings") or {}).get("quick")) == quick:
        out.append((f"the default recipe over {default['n']} seeds (recipes section; SE over seeds)",
                    default["test_mean"], default["test_se"]))
    return out


def setfit(lines: list, rec: dict, data: dict) -> None:
    test, val = rec.get("test"), rec.get("validation")
    if not test:
        return
    lines += [f"SetFit {rec.get('version', '')} as its quick-start runs it: contrastive fine-tuning of the "
              "sentence-transformer body on pairs of training rows, then a logistic-regression head on its "
              "embeddings. Same body (the bundled all-MiniLM-L6-v2, resolved locally: no hub), the same train / "
              f"validation / test rows as our trials (validation not trained on), {rec['train_rows']} training rows "
              f"x num_iterations {rec['iterations']} x 2 = {rec['pairs']} pairs, 1 epoch, batch 16, max_length "
              f"{rec['max_length']}, head `{rec['head']}` (unweighted, the head predicts the majority class on this "
              f"data), {rec['threads']} threads, bf16 autocast {'on' if rec['bf16'] else 'off'} (as our trials on "
              "this machine).", "",
              "| tool | wall s | fit s | validation macro-F1 | test macro-F1 |", "|---|---|---|---|---|",
              f"| SetFit | {rec['wall']:.1f} | {rec['fit_seconds']:.1f} | {f1(val['macro_f1'], val['macro_f1_se'])} | "
              f"{f1(test['macro_f1'], test['macro_f1_se'])} |", ""]
    ours = _ours_on_test(data, bool((rec.get("settings") or {}).get("quick")))
    if not ours:
        lines += ["- none of our test figures recorded in the same mode (hf, raytune or recipes sections): no "
                  "comparison", ""]
        return
    lines.append("Our adapters against it on the test split (a tie within 2 SE of the difference):")
    behind = []
    for i, (label, value, se) in enumerate(ours):
        verdict = compare(rec, f"ours{i}", value, test["macro_f1"], se, test["macro_f1_se"], "beats SetFit",
                          "behind SetFit").replace("**tie**", "**matches SetFit** (tie)")
        behind += [label] if "behind" in verdict else []
        lines.append(f"- {label}: {pm(value, se)}: {verdict}")
    lines += [f"- where we lose: {', '.join(behind)} ends below SetFit beyond 2 SE" if behind else
              "- our adapters match or beat SetFit here"]
    probe = ((data.get("sections", {}).get("recipes") or {}).get("summary") or {}).get("linear probe")
    if probe and probe.get("test_mean") is not None and test["macro_f1"] < probe["test_mean"]:
        # A peer below the frozen body's own linear probe is run badly or suits the data badly: say so, since
        # a win over it is weak evidence.
        shown = pm(probe["test_mean"], probe["test_se"])
        lines.append(f"- caveat: SetFit ends below the linear probe on the frozen body ({shown}, recipes "
                     "section): its contrastive stage, as run here, loses what the "
                     "frozen embeddings had; a SetFit tuned for this data (more pair iterations, its differentiable "
                     "head) may do better, so this win is weak evidence")
    lines.append("")


def tools(lines: list, data: dict) -> None:
    """One table of every tool's figures from the hf, raytune and setfit sections (each row's section says how)."""
    sections = data.get("sections", {})
    hf_s = (sections.get("hf") or {}).get("summary") or {}
    rt_s = (sections.get("raytune") or {}).get("summary") or {}
    sf = sections.get("setfit") or {}
    rows = []
    sweep = rt_s if rt_s.get("sweep_test_macro_f1") is not None else hf_s
    def hv(tool: str) -> str:
        three, two = rt_s.get(f"{tool}_hv_fraction"), rt_s.get(f"{tool}_hv_no_memory_fraction")
        return "—" if three is None else f"{three:.3f}" + (f" / {two:.3f}" if two is not None else "")

    if sweep.get("sweep_test_macro_f1") is not None:
        rows.append(("`sweep run`", sweep["sweep_wall"], sweep.get("sweep_best_macro_f1"),
                     sweep.get("sweep_best_macro_f1_se"), sweep.get("sweep_test_macro_f1"),
                     sweep.get("sweep_test_macro_f1_se"), hv("sweep") if sweep is rt_s else "—",
                     "raytune" if sweep is rt_s else "hf"))
    if rt_s.get("raytune_wall") is not None:
        rows.append(("Ray Tune (Tuner + OptunaSearch + ASHA)", rt_s["raytune_wall"], rt_s["raytune_best_macro_f1"],
                     rt_s.get("raytune_best_macro_f1_se"), rt_s.get("raytune_test_macro_f1"),
                     rt_s.get("raytune_test_macro_f1_se"), hv("raytune"), "raytune"))
    if hf_s.get("hf_test_macro_f1") is not None:
        rows.append(("HF `Trainer.hyperparameter_search`", hf_s["hf_wall"], hf_s["hf_best_macro_f1"],
                     hf_s.get("hf_best_macro_f1_se"), hf_s["hf_test_macro_f1"], hf_s.get("hf_test_macro_f1_se"),
                     "—", "hf"))
    if sf.get("test"):
        rows.append(("SetFit (one model, no search)", sf["wall"], sf["validation"]["macro_f1"],
                     sf["validation"]["macro_f1_se"], sf["test"]["macro_f1"], sf["test"]["macro_f1_se"], "—",
                     "setfit"))
    if not rows:
        return
    lines += ["## Tools at a glance", "", "From the sections below (each row's section has its command, machine, "
              "load and how the tool was run). Macro-F1 ± bootstrap SE; test: the tool's pick, scored once. HV "
              "fraction: hypervolume on our three objectives against one reference point for `sweep run` and Ray "
              "Tune, then without the measured peak (raytune section).", "", "| tool | wall s | best validation "
              "macro-F1 | test macro-F1 of the pick | HV fraction (3 objectives / macro-F1 x params) | section "
              "(quick?) |", "|---|---|---|---|---|---|"]
    for label, wall, val, val_se, test, test_se, hv, name in rows:
        quick = " (quick)" if ((sections.get(name) or {}).get("settings") or {}).get("quick") else ""
        lines.append(f"| {label} | {wall:.1f} | {f1(val, val_se)} | {f1(test, test_se)} | {hv} | {name}{quick} |")
    lines.append("")
