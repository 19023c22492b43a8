"""BENCHMARKS.md shows only numbers that BENCHMARKS.json holds (issue 18), and the peer sections (Ray Tune, SetFit,
the tools table, overhead with parallelism held equal, throughput lever by lever) render what was measured.
No model runs: hand-made results, and the committed files."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchkit import provenance, replay, report  # noqa: E402

MACHINE = {"cores": 2, "cpu": "Xeon", "cpu_flags": ["amx_bf16", "avx2"], "gpu": None, "python": "3.11.7",
           "torch": "2.13.0+cpu", "load_average": [0.42, 0.5, 0.5]}


def _head(**settings) -> dict:
    return {"command": "python scripts/bench.py --only x", "machine": MACHINE, "started": "2026-12-05 10:00:00",
            "status": "done", "settings": {"quick": False, **settings}, "load_average_end": [1.37, 1.0, 1.0]}


def _tp_row(key: str, label: str, median: float, cpu: float | None = None) -> dict:
    return {"label": label, "key": key, "wall": [median], "cpu": [cpu] if cpu else [], "median": median,
            "cpu_median": cpu}


def _results() -> dict:
    sweep = {"sweep_wall": 97.3, "sweep_best_macro_f1": 0.5515, "sweep_best_macro_f1_se": 0.047,
             "sweep_test_macro_f1": 0.4931, "sweep_test_macro_f1_se": 0.028}
    trials = [{"config": {"rank": r, "alpha_ratio": a, "learning_rate": lr}, "macro_f1": 0.41 + 0.013 * i,
               "epochs_run": 3 if i % 3 else 1, "stopped_early": not i % 3, "error": None,
               "adapter": None if not i % 3 else f"/tmp/t{i}/adapter", "peak_memory_mb": 400.0 + i,
               "trainable_params": 1000.0 * r}
              for i, (r, a, lr) in enumerate([(4, 1.0, 0.001), (4, 1.0, 0.003), (4, 4.0, 0.001), (16, 4.0, 0.003)])]
    return {"sections": {
        "cli": {**_head(), "rows": [{"command": "sweep --help", "walls": [0.31, 0.29, 0.33], "median": 0.31,
                                     "min": 0.29}]},
        "overhead": {**_head(), "summary": {
            "repeats": 3, "bare_wall": 111.7, "bare_wall_min": 109.2, "bare_wall_max": 118.4, "serial_wall": 115.7,
            "serial_wall_min": 113.0, "serial_wall_max": 121.9, "concurrent_wall": 94.0, "concurrent_wall_min": 92.5,
            "concurrent_wall_max": 99.1, "ratio_serial": 1.036, "ratio_serial_min": 1.01, "ratio_serial_max": 1.062,
            "ratio_concurrent": 0.842, "ratio_concurrent_min": 0.81, "ratio_concurrent_max": 0.86},
            "runs": [{"concurrent": {"parent_start": 6.1, "first_trial_start": 13.4, "last_trial_end": 89.7,
                                     "exit": 94.0}, "bare": {"imports": 6.6, "trial_wall": 104.2}}]},
        "hf": {**_head(), "summary": {"hf_wall": 256.3, "ratio": 0.3796, "repeats": 1, "majority_macro_f1": 0.2606,
                                      "hf_best_macro_f1": 0.5102, "hf_best_macro_f1_se": 0.049,
                                      "hf_test_macro_f1": 0.4644, "hf_test_macro_f1_se": 0.027, **sweep}},
        "raytune": {**_head(), "raytune": {"trials": trials}, "summary": {
            "raytune_wall": 121.8, "ratio": 0.7989, "majority_macro_f1": 0.2606, "trials": 4, "epochs": 3,
            "stopped_early": 2, "failed": 0, "raytune_best_macro_f1": 0.4490, "raytune_best_macro_f1_se": 0.051,
            "raytune_test_macro_f1": 0.4512, "raytune_test_macro_f1_se": 0.029, "raytune_hv": 1.2e6,
            "raytune_hv_fraction": 0.8123, "sweep_hv": 1.4e6, "sweep_hv_fraction": 0.9571,
            "raytune_hv_no_memory_fraction": 0.9012, "sweep_hv_no_memory_fraction": 1.0, **sweep}},
        "setfit": {**_head(), "version": "1.2.0", "wall": 702.4, "fit_seconds": 661.9, "iterations": 5,
                   "max_length": 128, "head": "LogisticRegression(class_weight='balanced')", "train_rows": 480,
                   "pairs": 4800, "bf16": True, "threads": 2,
                   "validation": {"macro_f1": 0.2942, "macro_f1_se": 0.041},
                   "test": {"macro_f1": 0.3391, "macro_f1_se": 0.024}},
        "throughput": {**_head(), "rows": [
            _tp_row("plain", "plain PEFT loop, pad to max_length, fixed order (1 thread)", 1939.6, 1943.7),
            _tp_row("bucketing", "our trial, fp32, length bucketing only (1 thread)", 2041.5, 2043.5),
            _tp_row("bf16", "+ bf16 autocast only (1 thread)", 4434.1, 4440.5),
            _tp_row("cache_cold", "+ reuse + cache (fp32), first in its process: cold cache (1 thread)", 2501.0),
            _tp_row("cache_warm", "+ reuse + cache (fp32), second in its process: warm cache (1 thread)", 3077.6),
            _tp_row("shipped_cold", "our trial as shipped, first in its process (1 thread)", 4531.3, 4542.1),
            _tp_row("shipped_warm", "our trial as shipped, second in its process (1 thread)", 6046.1, 6057.9)]},
        "recipes": {**_head(), "arms": ["default recipe"], "seeds": [13, 14, 15], "overrides": {}, "base": {},
                    "epochs": 3, "runs": [], "summary": {"default recipe": {
                        "n": 3, "val_mean": 0.4604, "val_se": 0.019, "test_mean": 0.4721, "test_se": 0.0175,
                        "vs_probe_mean": 0.0459, "vs_probe_se": 0.0074, "vs_default_mean": None,
                        "vs_default_se": None, "verdict": "reference", "train_seconds": 133.9,
                        "peak_memory_mb": 434.8}}},
        "sampler_tuning": {**_head(), "table": "benchmarks/grid_polarity.csv", "grid_points": 135, "seeds": 3,
                           "budgets": [8], "replay_seconds": 41.2, "by_budget": {"8": {
                               **replay.compare({"startup 2": [0.61, 0.72, 0.66], "startup 4": [0.64, 0.75, 0.69],
                                                 "startup 6": [0.41, 0.52, 0.46]}),
                               "product": "startup 4", "auto_is": "gp"}}},
    }}


def _render(data: dict) -> tuple[str, dict]:
    """The markdown, and the JSON as scripts/bench.py saves it after rendering (derived figures included)."""
    text = report.render(data)
    return text, json.loads(json.dumps(data, default=str))


def test_every_number_of_a_rendered_report_is_in_its_json():
    text, saved = _render(_results())
    assert provenance.unsourced(text, saved) == []
    # figures the report derives are kept: a throughput ratio, the overhead timeline, a comparison's 2 SE
    assert saved["sections"]["throughput"]["derived"]["lever[bf16 autocast]"] == pytest.approx(4434.1 / 2041.5)
    assert saved["sections"]["overhead"]["derived"]["fixed_seconds"] == pytest.approx(13.4 + 94.0 - 89.7)
    assert "test_2se" in saved["sections"]["raytune"]["derived"]


def test_the_check_finds_a_figure_the_json_lacks():
    text, saved = _render(_results())
    assert provenance.unsourced(text + "\n| extra | 123.457 |\n", saved) == [("123.457", "| extra | 123.457 |")]
    for rec in saved["sections"].values():  # a report that formats what it computed without keeping it
        rec.pop("derived", None)
    missing = {token for token, _ in provenance.unsourced(text, saved)}
    assert {"2.17", "17.7"} <= missing  # bf16 autocast's share; the overhead's fixed seconds


def test_render_refreshes_derived_figures_instead_of_keeping_stale_ones():
    data = _results()
    data["sections"]["cli"]["derived"] = {"stale": 99.125}
    text, saved = _render(data)
    assert "stale" not in saved["sections"]["cli"]["derived"]


def test_overhead_headline_is_parallelism_equal_with_min_median_max():
    text, _ = _render(_results())
    section = text.split("## Platform overhead", 1)[1].split("\n## ", 1)[0]
    head = next(line for line in section.splitlines() if "headline" in line)
    assert "1 trial x all cores" in head and "**1.036 (min 1.010, max 1.062)**" in head and "**met**" in head
    assert "| bare loop: run_trial one after another in one process, all cores | 111.7 | 109.2 | 118.4 |" in section
    assert "layout choice" in section and "0.842 (min 0.810, max 0.860)" in section and "repeats: 3" in section


def test_raytune_section_and_tools_table():
    text, _ = _render(_results())
    section = text.split("## Against plain Ray Tune", 1)[1].split("\n## ", 1)[0]
    assert "`Tuner` + `OptunaSearch`" in section and "`ASHAScheduler`" in section
    assert "| Ray Tune: Tuner + OptunaSearch + ASHAScheduler | 121.8 | 0.4490 ± 0.051 | 0.4512 ± 0.029 | 0.812 | " \
        "0.901 |" in section
    assert "ASHA stopped 2 of 4 trials early" in section and "**faster**" in section
    assert "test macro-F1 of the pick, sweep vs Ray Tune: **tie**" in section
    tools = text.split("## Tools at a glance", 1)[1].split("\n## ", 1)[0]
    for row in ("| `sweep run` | 97.3 | 0.5515 ± 0.047 | 0.4931 ± 0.028 | 0.957 / 1.000 | raytune |",
                "| Ray Tune (Tuner + OptunaSearch + ASHA) | 121.8 | 0.4490 ± 0.051 | 0.4512 ± 0.029 | 0.812 / 0.901 | "
                "raytune |",
                "| HF `Trainer.hyperparameter_search` | 256.3 | 0.5102 ± 0.049 | 0.4644 ± 0.027 | — | hf |",
                "| SetFit (one model, no search) | 702.4 | 0.2942 ± 0.041 | 0.3391 ± 0.024 | — | setfit |"):
        assert row in tools, row


def test_setfit_section_compares_our_adapters_and_says_where_we_lose():
    data = _results()
    text, _ = _render(data)
    section = text.split("## Against a few-shot specialist: SetFit", 1)[1].split("\n## ", 1)[0]
    assert "480 training rows x num_iterations 5 x 2 = 4800 pairs" in section and "max_length 128" in section
    assert "class_weight='balanced'" in section
    assert "the sweep's pick (raytune section): 0.493 ± 0.028: **beats SetFit**" in section
    assert "default recipe over 3 seeds" in section and "our adapters match or beat SetFit here" in section
    data["sections"]["setfit"]["test"] = {"macro_f1": 0.58, "macro_f1_se": 0.02}
    text, _ = _render(data)
    assert "**behind SetFit**" in text and "where we lose:" in text
    quick = _results()
    quick["sections"]["setfit"]["settings"]["quick"] = True  # a smoke run is compared with nothing measured
    assert "no comparison" in _render(quick)[0]


def test_throughput_shows_each_levers_share_and_a_skipped_bf16_row():
    data = _results()
    text, _ = _render(data)
    assert "| bf16 autocast | **2.17x** |" in text and "| warm over cold, as shipped | **1.33x** |" in text
    assert "| without bf16 hardware (fp32), cold, over the plain loop | **1.29x** |" in text
    data["sections"]["throughput"]["rows"][2] = {"label": "+ bf16 autocast only (1 thread)", "key": "bf16",
                                                 "wall": [], "cpu": [], "skipped": "no bf16 hardware"}
    text, saved = _render(data)
    assert "| + bf16 autocast only (1 thread) | skipped: no bf16 hardware |" in text
    assert "| bf16 autocast |" not in text and provenance.unsourced(text, saved) == []


def test_every_section_prints_command_machine_and_load():
    text, _ = _render(_results())
    sections = text.split("\n## ")[1:]
    measured = [s for s in sections if not s.startswith(("Tools at a glance", "GPU"))]
    assert len(measured) == 8
    for s in measured:
        assert "Command: `python scripts/bench.py --only x`" in s, s[:60]
        assert "load average (1 min) at start 0.4, at end 1.4" in s, s[:60]


def test_ray_tune_that_did_not_learn_fails_loudly():
    from benchkit import sweeps_vs

    row = {"best_macro_f1": 0.31, "majority_macro_f1": 0.26}
    with pytest.raises(RuntimeError, match="Ray Tune's best validation macro-F1 0.31 .* did not learn"):
        sweeps_vs._check_learned(row, [0.26, 0.31], tool="Ray Tune")
    with pytest.raises(RuntimeError, match="Ray Tune's best validation macro-F1 None"):
        sweeps_vs._check_learned({**row, "best_macro_f1": None}, [], tool="Ray Tune")


def test_hypervolumes_share_one_reference_point():
    from benchkit import peers

    a = [{"macro_f1": 0.5, "peak_memory_mb": 400.0, "trainable_params": 1000.0}]
    b = [{"macro_f1": 0.4, "peak_memory_mb": 420.0, "trainable_params": 2000.0},
         {"macro_f1": None, "peak_memory_mb": 1.0, "trainable_params": 1.0}]  # a trial without figures: left out
    hv = peers.hypervolumes({"a": a, "b": b})
    assert hv["a"]["fraction"] == pytest.approx(1.0) and 0 < hv["b"]["fraction"] < 1  # a dominates b
    assert hv["b"]["trials"] == 1 and hv["union"] == pytest.approx(hv["a"]["hv"])


def test_committed_benchmarks_md_numbers_are_all_in_the_json():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    data = json.loads((ROOT / "BENCHMARKS.json").read_text(encoding="utf-8"))
    assert provenance.unsourced(text, data) == []


def test_committed_benchmarks_md_is_the_render_of_the_committed_json():
    data = json.loads((ROOT / "BENCHMARKS.json").read_text(encoding="utf-8"))
    assert report.render(copy.deepcopy(data)) == (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"), (
        "BENCHMARKS.md is not what the report writes from BENCHMARKS.json: `python scripts/bench.py --render`")


def test_sampler_tuning_marks_our_setting_and_calls_a_setting_behind_only_beyond_2_se():
    text, _ = _render(_results())
    section = text.split("## Sampler settings, chosen on the second grid")[1].split("\n## ")[0]
    assert "| 8 | gp startup 4 (ours) | 0.693 ± 0.032 | **best** |" in section
    assert "| 8 | gp startup 2 | 0.663 ± 0.032 | tie |" not in section  # lead .03, paired SE 0: behind
    assert "| 8 | gp startup 6 | 0.463 ± 0.032 | behind |" in section
    assert "at every budget on this second grid: **met**" in section
    data = _results()
    data["sections"]["sampler_tuning"]["by_budget"]["8"]["product"] = "startup 6"
    text, _ = _render(data)
    assert "at every budget on this second grid: **not met**" in text


def test_setfit_below_the_linear_probe_is_called_weak_evidence():
    data = _results()
    probe = {**data["sections"]["recipes"]["summary"]["default recipe"], "test_mean": 0.4262, "test_se": 0.018,
             "reference_row": True, "verdict": "worse"}
    data["sections"]["recipes"]["summary"]["linear probe"] = probe
    text, saved = _render(data)
    assert "caveat: SetFit ends below the linear probe on the frozen body (0.426 ± 0.018" in text
    assert provenance.unsourced(text, saved) == []
    probe["test_mean"] = 0.30  # SetFit (.339) above the probe: no caveat
    assert "caveat: SetFit" not in _render(data)[0]
