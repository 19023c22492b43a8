"""BENCHMARKS.md sections on quality and search: speed levers' accuracy cost, the sampler replay, the recipes for
scarce labels and where a trial's memory goes."""

from __future__ import annotations

import json

from benchkit.common import DEFAULT_SPEC, ROOT, cpu_label
from benchkit.report_fmt import derived, median, met, pm


def levers(lines: list, rec: dict) -> None:
    s, arms = rec.get("summary"), rec.get("arms") or []
    if not s:
        return
    lines += [f"Validation macro-F1 after {rec['epochs']} epochs, each configuration trained once per arm.", "",
              "| configuration | " + " | ".join(f"macro-F1, {a}" for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    lines += [f"| {json.dumps(r['config'])} | " + " | ".join(f"{r[f'macro_f1[{a}]']:.4f}" for a in arms) + " |"
              for r in rec["rows"]]
    lines += ["", "| arm | best | mean | mean difference to the last arm | largest difference | training s (sum) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {s[a]['best']:.4f} | {s[a]['mean']:.4f} | {s[a]['mean_delta']:+.4f} | "
              f"{s[a]['max_abs_delta']:.4f} | {s[a]['train_seconds']:.0f} |" for a in arms]
    lines.append("")


def search(lines: list, rec: dict) -> None:
    s = rec.get("summary")
    if not s or "by_budget" not in s:
        return
    budgets, samplers, by = s["budgets"], s["samplers"], s["by_budget"]
    z = by[str(budgets[0])]["z"]
    n = by[str(budgets[0])]["n"]
    autos = ", ".join(f"{by[str(b)]['auto_is']} at {b}" for b in budgets)
    lines += [f"Table: `{rec['table']}` ({rec['grid_points']} configurations, each trained once). Each sampler is "
              "replayed as a sweep of each budget would run it (`sweeps.driver.study.space.make_sampler`'s settings "
              "for that budget), proposals asked two at a time as a sweep with 2 concurrent trials asks them. Figure: "
              "hypervolume after the budget's last trial as a fraction of the full grid's (normalised HV), "
              f"mean ± SE over {n} seeds (SE = sd / sqrt(n)). Seeds are **paired**: seed i drives every sampler's "
              "RNG, and the random start-up trials of gp, tpe and nsga2 draw the same first points as random does "
              "for the same seed, so each gap is judged by the SE of the per-seed differences. A sampler is "
              f"called better than another only where the mean gap exceeds {z:g} SE of the difference; otherwise "
              f"they are statistically indistinguishable (no correction for the number of pairs). `auto`, our "
              f"default, picks {autos} trials: the same sampler with the same settings, hence the same figures.",
              "", "| sampler | " + " | ".join(f"HV at {b} trials" for b in budgets) + " |",
              "|---" * (len(budgets) + 1) + "|"]
    for k in samplers:
        cells = []
        for b in budgets:
            row, best = by[str(b)]["rows"][k], by[str(b)]["best"]
            text = pm(row["mean"], row["se"])
            cells.append(f"**{text}**" if k == best else text if row["tied"] else text + " (behind)")
        name = f"auto, our default ({autos})" if k == "auto" else k
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| within {z:g} SE of the highest mean | "
                 + " | ".join(", ".join(by[str(b)]["tied"]) for b in budgets) + " |")
    lines += ["", f"Bold: the highest mean, which is no call by itself; (behind): the highest mean's lead exceeds "
              f"{z:g} SE of the paired difference. Samplers without (behind) are statistically indistinguishable "
              "from the bold one.", ""]
    for b in budgets:
        d = by[str(b)]
        behind = [k for k in samplers if not d["rows"][k]["tied"]]
        lead = "; ".join(f"{k} {d['rows'][k]['gap']:+.3f} ± {d['rows'][k]['gap_se']:.3f}" for k in samplers
                         if k != d["best"])
        lines.append(f"- **{b} trials**: highest mean {d['best']}; statistically indistinguishable from it: "
                     f"{', '.join(d['tied'])}; behind it beyond {z:g} SE: {', '.join(behind) or 'none'} (its lead: "
                     f"{lead})")
    gp_pairs = []
    for b in budgets:
        for p in by[str(b)]["pairs"]:
            if "gp" in (p["a"], p["b"]) and {p["a"], p["b"]} & {"tpe", "random"}:
                flip = {"better": "worse", "worse": "better", "tie": "tie"}  # the pair read from the other side
                gp_first = p["a"] == "gp"
                gp_pairs.append((b, p["b"] if gp_first else p["a"], p["diff"] if gp_first else -p["diff"], p["se"],
                                 p["verdict"] if gp_first else flip[p["verdict"]]))
    lines.append("- gp against tpe and random (gp minus the other, paired): " + "; ".join(
        f"{b} trials vs {o}: {d:+.3f} ± {e:.3f} ({v})" for b, o, d, e, v in gp_pairs))
    not_better = [f"{o} at {b}" for b, o, _, _, v in gp_pairs if v != "better"]
    if not_better:
        lines.append(f"- gp is **not** better beyond {z:g} SE than: {', '.join(not_better)}. The default (`auto` "
                     f"picks {autos} trials) should follow this evidence.")
    ok = all("auto" in by[str(b)]["tied"] for b in budgets)
    lines.append(f"- default sampler (`auto`) within {z:g} SE of the best at every budget: {met(ok)}")
    lines += ["", "**Out of sample.** gp's start-up trial count (`n_startup_trials = max(4, min(10, budget // 2))`) "
              "and `auto`'s switch from gp to tpe above 32 trials (`GP_MAX_TRIALS`) in `sweeps/driver/study/space.py` "
              "were first chosen by replaying on this grid; the section *Sampler settings, chosen on the second grid* "
              "checks them on a table this section never reads (`benchmarks/grid_polarity.csv`), so the figures "
              "here are out-of-sample evidence only where that section says the settings hold there.",
              "", f"Replay time: {s.get('replay_seconds', 0):.0f} s. Plot: mean ± SE bands of the "
              f"{budgets[-1]}-trial sweeps; dots with SE bars: the shorter budgets' sweeps.",
              "", f"![HV vs trials]({rec['plot']})", ""]



def _epochs(rec: dict, epochs) -> str:
    """The run's epochs: an arm's `epochs` scales with them (bench.py --quality-epochs; the spec trains 3)."""
    if not isinstance(epochs, int):
        return "epochs as the spec says"
    six = derived(rec, "six_epoch_arms_train", max(1, round(6 * epochs / 3)))
    return (f"{epochs} epoch{'s' if epochs != 1 else ''} (arms that set `epochs: 6` train {six}: an arm's epochs "
            "scale with `--quality-epochs`, the spec's 3)")


def recipes(lines: list, rec: dict) -> None:
    s, arms = rec.get("summary"), rec.get("arms") or []
    if not s:
        return
    seeds = rec.get("seeds") or []
    base = ", ".join(f"{k} {v:g}" for k, v in (rec.get("base") or {}).items())
    lines += [f"Each arm is one trial per seed (spec seeds {', '.join(map(str, seeds))}: each seed carves another "
              "validation split out of the training data and trains in another order, so the spread over seeds is "
              f"the honest noise) of `{rec.get('spec', DEFAULT_SPEC.relative_to(ROOT))}`'s fixed params "
              f"with {base} and the arm's "
              f"overrides; {_epochs(rec, rec.get('epochs'))}. Each trial runs in a fresh 1-thread process, two at a "
              "time; its saved adapter is evaluated once on the test split, which no choice inside the trial sees "
              "(best-epoch restore picks on validation). Mean ± SE over seeds (SE = sd / sqrt(n)); the differences "
              "are paired per seed. A lever is called **better** (or **worse**) only where its paired test gain "
              "over \"default recipe\" exceeds 2 SE; otherwise **tie**.", "",
              "| recipe | overrides | seeds | val macro-F1 | test macro-F1 | test − linear probe | test − default "
              "(paired) | vs default | train s (mean) | peak MB (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
    overrides = rec.get("overrides") or {}
    for name in [*arms, "linear probe", "majority class"]:
        r = s.get(name)
        if not r:
            continue
        over = "baseline (sweeps.driver.prepare.baselines)" if r.get("reference_row") else (", ".join(
            f"{k}: {json.dumps(v)}" for k, v in overrides.get(name, {}).items()) or "—")
        cost = ("— | —" if r.get("reference_row") else f"{r['train_seconds']:.0f} | {r['peak_memory_mb']:.0f}")
        lines.append(f"| {name} | {over} | {r['n']} | {pm(r['val_mean'], r['val_se'])} | "
                     f"{pm(r['test_mean'], r['test_se'])} | {pm(r['vs_probe_mean'], r['vs_probe_se'], True)} | "
                     f"{pm(r['vs_default_mean'], r['vs_default_se'], True)} | {r['verdict']} | {cost} |")
    data_arms = [a for a in arms if any(k.startswith("data.") for k in overrides.get(a, {})) and s.get(a)]
    fair = [a for a in data_arms if s[a].get("probe_inputs") == "same"]
    if fair:  # the probe fitted per seed on the arm's own inputs (record["data_baselines"])
        lines += ["", "**" + ", ".join(fair) + "**: \"test − linear probe\" is against a probe fitted on the same "
                  "inputs (" + "; ".join(f"{a}: probe test {pm(s[a]['probe_test_mean'], s[a].get('probe_test_se'))}"
                                         for a in fair) + "), not the spec-input probe of the rows above."]
    if len(fair) < len(data_arms):  # an older record: the probe was fitted on the spec's own data settings only
        lines += ["", f"**{', '.join(a for a in data_arms if a not in fair)}**: \"test − linear probe\" is against "
                  "the probe on the spec's own inputs; a probe on the same longer inputs also gains, so that column "
                  "flatters these arms."]
    cpus: dict[str, list[str]] = {}
    for name in arms:
        for cpu in (s.get(name) or {}).get("cpus", []):
            cpus.setdefault(cpu, []).append(name)
    known = set(cpus) - {"?"}  # rows of records older than the label say nothing
    here = cpu_label(rec["machine"]) if isinstance(rec.get("machine"), dict) else None
    if len(cpus) > 1 or (here and known and known != {here}):
        # --resume added arms (or only probes) on another machine: the header's machine did not time every row
        lines += ["", "**Train s and peak MB compare only within one CPU**; these rows were timed on "
                  + ("different machines" if len(cpus) > 1 else "another machine than the header's")
                  + " (a resumed run): " + "; ".join(f"{cpu}: {', '.join(names)}" for cpu, names in cpus.items())
                  + "."]
    runs = sorted(rec.get("runs") or [], key=lambda r: (arms.index(r["arm"]) if r["arm"] in arms else 99, r["seed"]))
    if runs:
        lines += ["", "<details><summary>Every trial</summary>", "",
                  "| recipe | seed | val macro-F1 | test macro-F1 | best epoch / epochs | train s | peak MB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['arm']} | {r['seed']} | {r['val_macro_f1']:.3f} | {r['test_macro_f1']:.3f} | "
                  f"{r['best_epoch']:.0f} / {r['epochs_run']:.0f} | {r['train_seconds']:.0f} | "
                  f"{r['peak_memory_mb']:.0f} |" for r in runs]
        lines += ["", "</details>"]
    lines.append("")


def memory_account(lines: list, rec: dict) -> None:
    peaks, parts = rec.get("peaks_mb"), rec.get("parts")
    if not peaks or not parts:
        return

    def mb(key: str, nbytes: float) -> float:
        return derived(rec, f"mb[{key}]", nbytes / 2**20)

    ratio = rec["ratio_reused_vs_fresh"]
    acc = rec.get("account") or {}
    reps = rec.get("repeats", 1)
    lines += [f"The default recipe's trial (rank 8, attention, upper half, 64 tokens), 1 epoch, 1 thread: {1 + reps} "
              "times in process A (the later ones reuse the base and its frozen-prefix cache, as a reused Ray worker "
              "does) and, beside A, " + ("once in a fresh process B" if reps == 1 else
                                          f"once in each of {reps} fresh processes B, one after another") + ". Peak = "
              "sampled anonymous resident memory above the trial's start (sweeps/trial/memory/meter.py; a reused "
              "base's bytes and load peak are charged to the trial).", "",
              "| run | measured peaks MB | median |", "|---|---|---|"]
    peaks = {k: v if isinstance(v, list) else [v] for k, v in peaks.items()}
    lines += [f"| {k} | {', '.join(f'{x:.1f}' for x in v)} | {derived(rec, f'median_mb[{k}]', median(v)):.1f} |"
              for k, v in peaks.items()]
    lines += ["", f"- reused / fresh (medians): **{ratio:.3f}** (goal within 5 %: {met(abs(ratio - 1) <= 0.05)})"]
    if rec.get("ratio_first_vs_fresh") is not None:
        lines.append(f"- first trial in A / fresh B (median): {rec['ratio_first_vs_fresh']:.3f} (both fresh "
                     "processes: the measurement's own run-to-run spread)")
    if rec.get("spread_fresh") is not None:
        lines.append(f"- spread of the fresh processes' peaks (max − min) / median: {rec['spread_fresh']:.3f}")
    lines += ["", f"Where the fresh processes' (median) peak of {mb('peak', rec['peak_bytes']):.1f} MB goes:", "",
              "| part | MB | how |", "|---|---|---|"]
    lines += [f"| {p['part']} | {mb(p['part'], p['bytes']):.1f} | {p['how']} |" for p in parts]
    lines.append("")
    notes = []
    if acc.get("base_resident_bytes") is not None:
        notes.append(f"the base's load, measured: {mb('base_resident', acc['base_resident_bytes']):.1f} MB resident "
                     f"after loading, {mb('base_load_peak', acc['base_load_peak_bytes']):.1f} MB peak while loading "
                     "(what a reused worker charges each trial)")
    if acc.get("forward_rss_growth") is not None:
        notes.append("resident growth over that one forward, measured: "
                     f"{mb('forward_growth', acc['forward_rss_growth']):.1f} MB")
    if acc.get("platform_bytes") is not None:
        notes.append(f"frozen-prefix cache held by process A after its trials (meter.platform_bytes(), "
                     f"measured): {mb('platform', acc['platform_bytes']):.1f} MB: platform memory, subtracted from "
                     "every sample and so not in any trial's peak")
    lines += [f"- {n}" for n in notes]
    lines += ["- the tokenizer and the tokenized data are loaded before the trial's measurement starts: not in the "
              "peak.", ""]
