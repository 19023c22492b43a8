"""scripts/bench.py's pure parts on synthetic data: the sampler replay + hypervolume, and the markdown writer.
No training and no timed assertions: the benchmark itself is run by hand (`python scripts/bench.py --quick`)."""

from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchkit import replay, report, report_peers  # noqa: E402

AXES = ["rank", "alpha_ratio", "target", "learning_rate"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A 36-point grid whose objectives follow simple rules (F1 peaks at rank 8, lr 2e-3; memory and size grow
    with rank), written like benchmarks/grid_reviews.csv."""
    path = tmp_path_factory.mktemp("grid") / "grid.csv"
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*AXES, "macro_f1", "peak_memory_mb", "trainable_params"])
        for rank, alpha, target, lr in itertools.product([2, 8, 32], [0.5, 2.0], ["attention", "ffn"],
                                                         [0.0005, 0.002, 0.008]):
            f1 = 0.5 - 0.05 * abs(np.log2(rank / 8)) - 0.08 * abs(np.log10(lr / 0.002)) + rng.normal(0, 0.01)
            size = rank * (9216 if target == "attention" else 11520) + 1155
            writer.writerow([rank, alpha, target, lr, f"{f1:.4f}", f"{300 + rank * 2 + rng.normal(0, 3):.1f}",
                             size])
        writer.writerow([4, 2.0, "attention", 0.002, "nan", "nan", "nan"])  # a failed point
    return path


def test_table_loads_with_typed_axes(table):
    space, rows = replay.load_table(table, AXES)
    assert space["rank"] == [2, 4, 8, 32] and space["target"] == ["attention", "ffn"]
    assert space["learning_rate"] == [0.0005, 0.002, 0.008]
    assert len(rows) == 37 and any(np.isnan(v).any() for v in rows.values())


def test_replay_proposes_grid_points_and_hv_grows_to_at_most_one(table):
    space, rows = replay.load_table(table, AXES)
    ref, full = replay.reference(rows)
    assert full > 0
    for kind in ("random", "tpe", "nsga2"):
        points = replay.replay(kind, seed=1, n_trials=12, space=space, table=rows)
        assert len(points) == 12
        curve = replay.hv_curve(points, ref, full)
        assert all(b >= a for a, b in itertools.pairwise(curve))  # hypervolume never shrinks
        assert 0 <= curve[-1] <= 1 + 1e-9
    # the same seed proposes the same sequence
    assert replay.replay("tpe", 3, 8, space, rows) == replay.replay("tpe", 3, 8, space, rows)


def test_every_point_of_the_grid_gives_the_full_hypervolume(table):
    space, rows = replay.load_table(table, AXES)
    ref, full = replay.reference(rows)
    assert replay.hv_curve(list(rows.values()), ref, full)[-1] == pytest.approx(1.0)


def test_run_all_and_plot(table, tmp_path):
    runs = {"tpe": ("tpe", 8, 8), "random": ("random", 8, 8)}
    result = replay.run_all(table, AXES, seeds=2, runs=runs, progress=lambda _: None)
    assert set(result["curves"]) == {"tpe", "random"} and np.asarray(result["curves"]["tpe"]).shape == (2, 8)
    assert 0 <= replay.at(result["curves"]["random"], 8) <= 1
    replay.plot(result, tmp_path / "hv.png", "test")
    assert (tmp_path / "hv.png").stat().st_size > 1000


def _hf_summary(**changes) -> dict:
    return {"hf_wall": 300.0, "sweep_wall": 90.0, "ratio": 0.3, "repeats": 1, "majority_macro_f1": 0.26,
            "hf_best_macro_f1": 0.52, "hf_best_macro_f1_se": 0.04, "hf_test_macro_f1": 0.47,
            "hf_test_macro_f1_se": 0.02, "sweep_best_macro_f1": 0.55, "sweep_best_macro_f1_se": 0.04,
            "sweep_test_macro_f1": 0.48, "sweep_test_macro_f1_se": 0.02, **changes}


def _data() -> dict:
    machine = {"cores": 2, "cpu": "AMD EPYC", "cpu_flags": ["avx2"], "gpu": None, "python": "3.11", "torch": "2",
               "load_average": [0.5, 0.5, 0.5]}
    head = {"command": "python scripts/bench.py", "machine": machine, "started": "now", "status": "done"}
    return {"sections": {
        "cli": {**head, "rows": [{"command": "sweep --help", "walls": [0.3, 0.4], "median": 0.35, "min": 0.3}]},
        "overhead": {**head, "summary": {"bare_wall": 100.0, "concurrent_wall": 90.0, "serial_wall": 104.0,
                                         "ratio_concurrent": 0.9, "ratio_serial": 1.04, "repeats": 1},
                     "runs": [{"concurrent": {"first_trial_start": 9.0, "parent_start": 3.0, "last_trial_end": 88.0,
                                              "exit": 90.0}, "bare": {"imports": 4.0, "trial_wall": 95.0}}]},
        "hf": {**head, "summary": _hf_summary()},
        "throughput": {**head, "rows": [{"label": "plain", "median": 500.0, "cpu_median": 600.0},
                                        {"label": "ours", "median": 1100.0, "cpu_median": 1500.0}]},
        "memory": {**head, "rows": [{"quantization": "nf4", "base_weight_bytes": 5.3e7, "peak_memory_mb": 800.0,
                                     "macro_f1": 0.3, "tokens_per_second": 900.0}]},
        "search": {**head, "table": "benchmarks/grid_reviews.csv", "grid_points": 135, "seeds": 10,
                   "plot": "docs/bench_search_hv.png",
                   "summary": {"budgets": [8], "samplers": ["gp", "tpe", "auto"], "replay_seconds": 9.0,
                               "other_tables": [],
                               "by_budget": {"8": {**replay.compare(finals := {"gp": [0.8, 0.82], "tpe": [0.7, 0.71],
                                                                               "auto": [0.8, 0.82]}),
                                                   "finals": finals, "auto_is": "gp"}}}},
        "profile": {**head, "status": "failed", "error": "RuntimeError: boom"},
    }}


def test_markdown_has_every_figure_with_command_machine_and_goal():
    text = report.render(_data())
    for needle in ("## CLI start", "## Platform overhead", "## Against the usual tool", "## Training throughput",
                   "## Memory by quantization", "## Search efficiency", "Command: `python scripts/bench.py`",
                   "2 cores, AMD EPYC (flags: avx2), no GPU", "0.900", "1.040", "0.300", "2.20x", "2.50x", "53,000,000",
                   "![HV vs trials](docs/bench_search_hv.png)", "Failed: `RuntimeError: boom`",
                   "fixed costs are 11.0 s"):
        assert needle in text, needle
    assert text.count("**met**") == 5 and "**not met**" not in text  # hf: the wall goal only, F1 is no goal


def test_markdown_states_unmet_goals():
    data = _data()
    data["sections"]["overhead"]["summary"].update(ratio_serial=1.2)  # the headline: parallelism held equal
    data["sections"]["search"]["summary"]["by_budget"]["8"]["tied"] = ["gp"]  # auto behind the best
    text = report.render(data)
    assert text.count("**not met**") == 2


# ---------------------------------------------------------------- recipes and memory_account (issue 14)


def _recipe_runs() -> tuple[list[dict], dict]:
    """3 seeds x 3 arms: LP-FT gains +.05 on every seed (beyond 2 SE), 128 tokens +.01 with a spread (a tie)."""
    runs, baselines = [], {}
    for i, seed in enumerate((13, 14, 15)):
        default = 0.50 + 0.01 * i
        for arm, test in (("default recipe", default), ("LP-FT", default + 0.05),
                          ("128 tokens", default + (0.04, -0.03, 0.02)[i])):
            runs.append({"arm": arm, "seed": seed, "val_macro_f1": test - 0.02, "test_macro_f1": test,
                         "best_epoch": 3.0, "epochs_run": 3.0, "train_seconds": 70.0 + i, "peak_memory_mb": 300.0})
        baselines[str(seed)] = {"linear-probe": {"validation.macro_f1": 0.45, "test.macro_f1": 0.47 + 0.001 * i},
                                "majority": {"validation.macro_f1": 0.25, "test.macro_f1": 0.26}}
    return runs, baselines


def test_recipe_summary_pairs_per_seed_and_calls_ties():
    from benchkit import recipes

    arms = ["default recipe", "LP-FT", "128 tokens"]
    runs, baselines = _recipe_runs()
    s = recipes.summarize(arms, runs, baselines)
    assert s["default recipe"]["verdict"] == "reference"
    assert s["LP-FT"]["vs_default_mean"] == pytest.approx(0.05) and s["LP-FT"]["vs_default_se"] == pytest.approx(0)
    assert s["LP-FT"]["verdict"] == "better"
    assert s["128 tokens"]["verdict"] == "tie"  # +.01 mean, SE .021
    assert s["majority class"]["verdict"] == "worse"
    assert s["default recipe"]["vs_probe_mean"] == pytest.approx(0.51 - 0.471)
    assert s["linear probe"]["vs_probe_mean"] == pytest.approx(0) and s["linear probe"]["test_mean"] == \
        pytest.approx(0.471)
    one = recipes.summarize(arms, [r for r in runs if r["seed"] == 13], {"13": baselines["13"]})
    assert one["LP-FT"]["verdict"] == "— (1 seed)" and one["LP-FT"]["test_se"] is None


def test_a_data_arm_is_compared_with_the_probe_on_its_own_inputs():
    """128 tokens beats the spec-input probe by far, but a probe fitted on 128 tokens gains too: the fair column
    uses that probe, and the report says which one it used (older records without it keep the warning)."""
    from benchkit import recipes

    arms = ["default recipe", "128 tokens"]
    runs, baselines = _recipe_runs()
    runs = [r for r in runs if r["arm"] in arms]
    overrides = {"default recipe": {}, "128 tokens": {"data.max_length": 128}}
    assert recipes.data_key(recipes._split(overrides["128 tokens"], 3)[1]) == "max_length=128"
    longer = {str(s): {"linear-probe": {"validation.macro_f1": 0.5, "test.macro_f1": 0.52},
                       "majority": {"validation.macro_f1": 0.25, "test.macro_f1": 0.26}} for s in (13, 14, 15)}
    unfair = recipes.summarize(arms, runs, baselines, overrides)
    fair = recipes.summarize(arms, runs, baselines, overrides, {"max_length=128": longer})
    tokens = [r["test_macro_f1"] for r in runs if r["arm"] == "128 tokens"]
    assert unfair["128 tokens"]["probe_inputs"] == "spec"
    assert unfair["128 tokens"]["vs_probe_mean"] == pytest.approx(sum(tokens) / 3 - 0.471)
    assert fair["128 tokens"]["probe_inputs"] == "same" and fair["128 tokens"]["probe_test_mean"] == 0.52
    assert fair["128 tokens"]["vs_probe_mean"] == pytest.approx(sum(tokens) / 3 - 0.52)
    assert "probe_inputs" not in fair["default recipe"]  # no data override: the spec-input probe, as before
    assert fair["default recipe"]["vs_probe_mean"] == unfair["default recipe"]["vs_probe_mean"]
    # a probe missing for one seed: the arm falls back to the spec-input probe, and says so
    partial = recipes.summarize(arms, runs, baselines, overrides, {"max_length=128": {"13": longer["13"]}})
    assert partial["128 tokens"]["probe_inputs"] == "spec"

    data = _data()
    head = {k: data["sections"]["cli"][k] for k in ("command", "machine", "started", "status")}
    rec = {**head, "spec": "search_spaces/rank_study_minilm.yaml", "arms": arms, "seeds": [13, 14, 15],
           "base": recipes.RECIPE_BASE, "epochs": 3, "overrides": overrides, "runs": runs, "baselines": baselines,
           "data_baselines": {"max_length=128": longer}, "summary": fair}
    data["sections"].update(recipes=rec)
    section = _section_text(report.render(data), "Recipes for scarce labels")
    assert "against a probe fitted on the same inputs (128 tokens: probe test 0.520" in section
    assert "flatters" not in section
    rec["summary"] = unfair
    section = _section_text(report.render(data), "Recipes for scarce labels")
    assert "flatters these arms" in section


def test_recipe_arms_parse_names_with_commas_and_numbers():
    from benchkit import recipes

    assert recipes.parse_arms("head-only (probe head, fine-tuned),1") == ["default recipe",
                                                                          "head-only (probe head, fine-tuned)"]
    with pytest.raises(ValueError, match="unknown recipe arm"):
        recipes.parse_arms("nope")


def _section_text(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _numbers(x)]
    if isinstance(obj, (list, tuple)):
        return [v for x in obj for v in _numbers(x)]
    return []


def _table_figures_come_from(section: str, record: dict, scale: dict[str, float] | None = None) -> None:
    """Every number in a table cell (but the first) of `section` is a figure of `record` as rendered."""
    import re

    values = _numbers(record)
    values += [v / f for v in values for f in (scale or {}).values()]
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        for cell in line.strip("|").split("|")[1:]:
            for token in re.findall(r"\d+(?:\.\d+)?", cell.replace(",", "")):
                decimals = len(token.split(".")[1]) if "." in token else 0
                assert any(f"{abs(v):.{decimals}f}" == token for v in values), (token, line)


def test_markdown_recipes_and_memory_account_figures_are_in_the_record():
    from benchkit import recipes

    data = _data()
    head = {k: data["sections"]["cli"][k] for k in ("command", "machine", "started", "status")}
    arms = ["default recipe", "LP-FT", "128 tokens"]
    runs, baselines = _recipe_runs()
    rec = {**head, "arms": arms, "seeds": [13, 14, 15], "base": recipes.RECIPE_BASE, "epochs": 3,
           "overrides": {a: recipes.RECIPE_ARMS[a] for a in arms}, "runs": runs, "baselines": baselines,
           "summary": recipes.summarize(arms, runs, baselines)}
    mem = {**head, "repeats": 3, "peaks_mb": {"first": [310.2], "reused": [305.0, 306.0, 304.0],
                                              "fresh": [300.0, 296.5, 310.0]}, "ratio_reused_vs_fresh": 305 / 300,
           "ratio_first_vs_fresh": 310.2 / 300, "spread_fresh": 13.5 / 300,
           "peak_bytes": 300.0 * 2**20, "account": {"platform_bytes": 5 * 2**20, "base_resident_bytes": 90 * 2**20,
                                                   "base_load_peak_bytes": 120 * 2**20, "forward_rss_growth": 2**20},
           "parts": [{"part": "base weights", "bytes": 91.0 * 2**20, "how": "computed"},
                     {"part": "other", "bytes": 209.0 * 2**20, "how": "the rest"}]}
    data["sections"].update(recipes=rec, memory_account=mem)
    text = report.render(data)
    section = _section_text(text, "Recipes for scarce labels, lever by lever")
    assert "| LP-FT |" in section and "better" in section and "tie" in section and "exceeds 2 SE" in section
    assert "+0.050 ± 0.000" in section and "0.510 ± 0.006" in section
    _table_figures_come_from(section, rec)
    section = _section_text(text, "Where a MiniLM trial's peak memory goes")
    assert "**1.017**" in section and "**met**" in section and "| base weights | 91.0 | computed |" in section
    assert "| fresh | 300.0, 296.5, 310.0 | 300.0 |" in section and "0.045" in section
    _table_figures_come_from(section, mem, {"MB": 2**20})


def test_recipes_smollm2_trains_the_shipped_default_and_says_which_spec(tmp_path):
    from types import SimpleNamespace

    from benchkit import recipes

    from sweeps.spec import load_spec

    ctx = SimpleNamespace(work=tmp_path, data=None)
    shipped = load_spec(recipes._spec(ctx, 14, 3, {}, recipes.SHIPPED))
    assert (shipped.model.base, shipped.seed, shipped.params.layers) == ("bundled:smollm2-135m-instruct", 14, "22-29")
    assert shipped.data.max_length == 128
    minilm = load_spec(recipes._spec(ctx, 14, 3, {}))
    assert minilm.model.base == "bundled:all-minilm-l6-v2" and minilm.seed == 14
    assert recipes.SHIPPED.arms["upper half (blocks 15-29)"] == {"layers": "upper-half"}
    assert shipped.trial_params({**recipes.SHIPPED_BASE, "layers": "upper-half"}).layers == "upper-half"

    data = _data()
    head = {k: data["sections"]["cli"][k] for k in ("command", "machine", "started", "status")}
    arms = ["default recipe", "LP-FT"]
    runs, baselines = _recipe_runs()
    runs = [r for r in runs if r["arm"] in arms]
    rec = {**head, "spec": "search_spaces/rank_study.yaml", "arms": arms, "seeds": [13, 14, 15],
           "base": recipes.SHIPPED_BASE, "epochs": 3, "overrides": {a: recipes.SHIPPED_ARMS[a] for a in arms},
           "runs": runs, "baselines": baselines, "summary": recipes.summarize(arms, runs, baselines)}
    data["sections"].update(recipes_smollm2=rec)
    section = _section_text(report.render(data), "Recipes on the shipped base (SmolLM2-135M, rank_study.yaml)")
    assert "of `search_spaces/rank_study.yaml`'s fixed params with rank 8, alpha_ratio 2, learning_rate 0.001" in \
        section
    assert "| LP-FT |" in section and "better" in section
    assert "compare only within one CPU" not in section  # rows of one machine: no note
    _table_figures_come_from(section, rec)
    for r in runs:  # a resumed run: LP-FT timed on another machine
        r["cpu"] = "AMD EPYC" if r["arm"] == "LP-FT" else "Intel Xeon, AMX"
    rec["summary"] = recipes.summarize(arms, runs, baselines)
    section = _section_text(report.render(data), "Recipes on the shipped base (SmolLM2-135M, rank_study.yaml)")
    assert "compare only within one CPU" in section and "Intel Xeon, AMX: default recipe; AMD EPYC: LP-FT" in section
    for r in runs:  # every trial kept from another machine; this run (the header's) only added probes
        r["cpu"] = "AMD EPYC"
    rec["machine"] = {**rec["machine"], "cpu": "Intel(R) Xeon(R) Processor", "cpu_flags": ["amx_bf16"]}
    rec["summary"] = recipes.summarize(arms, runs, baselines)
    section = _section_text(report.render(data), "Recipes on the shipped base (SmolLM2-135M, rank_study.yaml)")
    assert "timed on another machine than the header's (a resumed run): AMD EPYC: default recipe, LP-FT" in section
    rec["machine"]["cpu"], rec["machine"]["cpu_flags"] = "AMD EPYC", []
    section = _section_text(report.render(data), "Recipes on the shipped base (SmolLM2-135M, rank_study.yaml)")
    assert "compare only within one CPU" not in section


def test_every_arm_of_every_lever_study_is_a_valid_trial_of_its_spec(tmp_path):
    """An arm that names a field or value its spec rejects fails here, not 40 minutes into a bench run."""
    from types import SimpleNamespace

    from benchkit import recipes

    from sweeps.spec import load_spec

    ctx = SimpleNamespace(work=tmp_path, data=None)
    for setup in (recipes.MINILM, recipes.SHIPPED, recipes.CONDITION, recipes.MOVIES):
        for arm, overrides in setup.arms.items():
            params, data = recipes._split(overrides, 3)
            spec = load_spec(recipes._spec(ctx, 15, 3, data, setup))
            trial = spec.trial_params({**setup.base, **params})
            assert spec.seed == 15, arm
            for key, value in data.items():
                assert getattr(spec.data, key) == value, (setup.key, arm, key)
            for key, value in params.items():
                assert getattr(trial, key) == value, (setup.key, arm, key)
    condition = load_spec(recipes._spec(ctx, 13, 3, {}, recipes.CONDITION))
    assert (condition.data.label_column, condition.model.base) == ("condition", "bundled:all-minilm-l6-v2")
    assert load_spec(recipes._spec(ctx, 13, 3, {}, recipes.MOVIES)).data.source == "bundled:movie-reviews"


# ---------------------------------------------------------------- hf: same recipe, test figures (issue 18)


def _hf_text(summary: dict, runs: list | None = None) -> str:
    lines: list = []
    report_peers.hf(lines, {"summary": summary, "runs": runs or []})
    return "\n".join(lines)


def test_hf_report_has_test_figures_and_calls_ties_not_wins():
    epochs = [{"trial": t, "macro_f1": 0.4 + 0.01 * e} for t in (0, 1) for e in range(3)]
    text = _hf_text(_hf_summary(), [{"hf": {"epochs": epochs}}])
    assert "test macro-F1 of the pick" in text and "0.4700 ± 0.020" in text and "0.4800 ± 0.020" in text
    assert text.count("**tie**") == 2 and "**higher**" not in text  # +.03 val, +.01 test: within 2 SE
    assert "**faster**" in text and "goal <= 0.4: **met**" in text
    assert "0: 0.400 0.410 0.420; 1: 0.400 0.410 0.420" in text
    assert "at least equal" not in text


def test_hf_report_says_plainly_when_we_are_slower_or_lower():
    text = _hf_text(_hf_summary(ratio=1.5, sweep_wall=450.0, sweep_test_macro_f1=0.37))
    assert "**slower**" in text and "**not met**" in text
    assert "test macro-F1 of the pick, sweep vs HF: **lower** (-0.100" in text


def test_hf_report_of_an_older_record_has_no_claims():
    text = _hf_text({"hf_wall": 300.0, "sweep_wall": 90.0, "ratio": 0.3, "hf_best_macro_f1": 0.26,
                     "sweep_best_macro_f1": 0.5, "repeats": 1})
    assert "**met**" not in text and "older record" in text


def test_hf_section_fails_loudly_when_hf_did_not_learn():
    from benchkit import sweeps_vs

    row = {"best_macro_f1": 0.27, "majority_macro_f1": 0.26, "epochs": [{"macro_f1": 0.26}, {"macro_f1": 0.27}]}
    with pytest.raises(RuntimeError, match="did not learn"):
        sweeps_vs._check_learned(row)
    with pytest.raises(RuntimeError):
        sweeps_vs._check_learned({**row, "best_macro_f1": 0.40})  # above majority + .1 but under .45
    sweeps_vs._check_learned({**row, "best_macro_f1": 0.52})
    sweeps_vs._check_learned({**row, "best_macro_f1": 0.40}, strict=False)  # quick runs only warn


def test_quick_sampler_tuning_replays_the_recorded_second_grid(tmp_path):
    """--quick trains nothing new for the replay: with benchmarks/grid_polarity.csv checked in, it replays that
    table (budget 8 only) instead of asking for a quick grid that no quick run records (make bench --quick failed)."""
    from types import SimpleNamespace

    from benchkit import tuning

    assert tuning.GRID2_FILE.is_file()
    record: dict = {}
    tuning.sampler_tuning(SimpleNamespace(quick=True, work=tmp_path, seeds=2), record)
    assert record["table"] == "benchmarks/grid_polarity.csv" and record["budgets"] == [8]
    assert record["grid_points"] == 135 and set(record["by_budget"]["8"]["finals"]) == {
        "startup 2", "startup 4", "startup 6"}
