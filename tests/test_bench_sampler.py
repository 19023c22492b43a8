"""The sampler study of scripts/bench.py's `search` section (issue 18): mean ± SE, the paired 2-SE verdicts and
their markdown, on hand-made numbers (no replay of a real grid, no GP fits)."""

from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchkit import replay, report_quality  # noqa: E402

SPACE = {"rank": [2, 8, 32], "alpha_ratio": [0.5, 2.0], "target": ["attention", "ffn"],
         "learning_rate": [0.0005, 0.002]}


def test_se_is_sample_sd_over_root_n():
    assert replay.se([1, 2, 3, 4]) == pytest.approx(np.sqrt(5 / 3) / 2)  # sd (n - 1) = 1.291, / 2
    assert replay.se([0.7]) == 0.0


def test_pairing_separates_a_constant_gap_that_overlapping_error_bars_hide():
    base = [0.70, 0.90, 0.80, 0.95, 0.75]
    finals = {"a": base, "b": [v - 0.02 for v in base], "c": [0.74, 0.86, 0.80, 0.93, 0.76]}
    out = replay.compare(finals)
    rows = out["rows"]
    assert out["best"] == "a" and out["n"] == 5 and out["paired"]
    assert rows["a"]["mean"] == pytest.approx(0.82) and rows["b"]["mean"] == pytest.approx(0.80)
    # unpaired, b's error bar overlaps a's by far (SE about .045 each)...
    assert rows["a"]["se"] > 0.04 and rows["b"]["se"] > 0.04
    # ...but b is .02 behind on every seed: the SE of the difference is 0, so b is behind beyond 2 SE
    assert rows["b"]["gap"] == pytest.approx(0.02) and rows["b"]["gap_se"] == pytest.approx(0.0, abs=1e-12)
    assert not rows["b"]["tied"]
    # c's differences to a (-.04 .. +.04) scatter around a small mean: indistinguishable
    assert rows["c"]["tied"]
    assert out["tied"] == ["a", "c"]


def test_the_2_se_boundary():
    finals = {"best": [1.0, 1.0], "x": [0.9, 0.7]}  # gap .2, differences .1 and .3: SE of the difference .1
    assert replay.compare(finals)["rows"]["x"]["gap_se"] == pytest.approx(0.1)
    assert not replay.compare(finals, z=1.9)["rows"]["x"]["tied"]
    assert replay.compare(finals, z=2.1)["rows"]["x"]["tied"]


def test_pairs_are_oriented_and_called_better_worse_or_tie():
    finals = {"gp": [0.80, 0.82, 0.81], "tpe": [0.90, 0.91, 0.93], "random": [0.79, 0.84, 0.80]}
    pairs = {(p["a"], p["b"]): p for p in replay.compare(finals)["pairs"]}
    assert set(pairs) == {("gp", "tpe"), ("gp", "random"), ("tpe", "random")}
    assert pairs["gp", "tpe"]["verdict"] == "worse" and pairs["gp", "tpe"]["diff"] == pytest.approx(-0.31 / 3)
    assert pairs["tpe", "random"]["verdict"] == "better"
    assert pairs["gp", "random"]["verdict"] == "tie"


def test_equal_means_keep_the_first_listed_as_best_and_unequal_seeds_are_refused():
    assert replay.compare({"gp": [0.5, 0.6], "auto": [0.5, 0.6]})["best"] == "gp"
    with pytest.raises(ValueError, match="same number of seeds"):
        replay.compare({"gp": [0.5, 0.6], "tpe": [0.5]})


def test_auto_resolves_to_the_sampler_make_sampler_builds():
    from sweeps.driver.study.space import GP_MAX_TRIALS

    assert replay.resolve("auto", GP_MAX_TRIALS, SPACE) == "gp"
    assert replay.resolve("auto", GP_MAX_TRIALS + 1, SPACE) == "tpe"
    assert replay.resolve("random", 8, SPACE) == "random"


def test_run_all_reuses_the_curves_of_the_sampler_auto_picks(tmp_path):
    path = tmp_path / "grid.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*SPACE, "macro_f1", "peak_memory_mb", "trainable_params"])
        for i, point in enumerate(itertools.product(*SPACE.values())):
            writer.writerow([*point, 0.3 + 0.01 * (i % 7), 300 + point[0], point[0] * 1000])
    # 4 trials of a 4-trial sweep: all the GP's random start-up trials, so no GP fit (fast)
    runs = {"gp@4": ("gp", 4, 4), "auto@4": ("auto", 4, 4), "random@4": ("random", 4, 4)}
    out = replay.run_all(path, list(SPACE), seeds=2, runs=runs, progress=lambda _: None)
    assert out["aliases"] == {"auto@4": "gp@4"}
    assert out["curves"]["auto@4"] == out["curves"]["gp@4"]
    assert np.asarray(out["curves"]["random@4"]).shape == (2, 4)


def _record(finals_by_budget: dict[int, dict[str, list[float]]]) -> dict:
    by = {str(b): {**replay.compare(f), "finals": f, "auto_is": "gp"} for b, f in finals_by_budget.items()}
    return {"table": "benchmarks/grid_reviews.csv", "grid_points": 135, "seeds": 3, "plot": "docs/hv.png",
            "summary": {"budgets": list(finals_by_budget), "samplers": list(finals_by_budget[8]),
                        "by_budget": by, "replay_seconds": 12.0, "other_tables": []}}


def _render(rec: dict) -> str:
    lines: list = []
    report_quality.search(lines, rec)
    return "\n".join(lines)


def test_markdown_calls_a_gp_that_ties_tpe_not_better_and_states_the_caveat():
    tie = {"gp": [0.80, 0.85, 0.90], "tpe": [0.82, 0.83, 0.89], "nsga2": [0.6, 0.62, 0.61],
           "random": [0.70, 0.72, 0.71], "auto": [0.80, 0.85, 0.90]}
    text = _render(_record({8: tie, 16: tie}))
    assert "| gp | **0.850 ± 0.029** | **0.850 ± 0.029** |" in text
    assert "| nsga2 | 0.610 ± 0.006 (behind) |" in text
    assert "| within 2 SE of the highest mean | gp, tpe, auto | gp, tpe, auto |" in text
    assert "gp is **not** better beyond 2 SE than: tpe at 8, tpe at 16." in text
    assert "8 trials vs tpe: +0.003 ± 0.012 (tie)" in text and "8 trials vs random: +0.140 ±" in text
    assert "within 2 SE of the best at every budget: **met**" in text
    assert "first chosen by replaying on this grid" in text and "`benchmarks/grid_polarity.csv`" in text
    assert "![HV vs trials](docs/hv.png)" in text


def test_markdown_when_gp_wins_everywhere_and_auto_is_behind():
    win = {"gp": [0.90, 0.92, 0.91], "tpe": [0.80, 0.83, 0.81], "nsga2": [0.6, 0.62, 0.61],
           "random": [0.70, 0.72, 0.71], "auto": [0.70, 0.72, 0.71]}
    text = _render(_record({8: win}))
    assert "**not** better" not in text
    assert "8 trials vs tpe: +0.097 ± 0.003 (better)" in text
    assert "within 2 SE of the best at every budget: **not met**" in text
