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

from benchkit import replay, report  # noqa: E402

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
        "hf": {**head, "summary": {"hf_wall": 300.0, "sweep_wall": 90.0, "ratio": 0.3, "hf_best_macro_f1": 0.26,
                                   "sweep_best_macro_f1": 0.5, "repeats": 1}},
        "throughput": {**head, "rows": [{"label": "plain", "median": 500.0, "cpu_median": 600.0},
                                        {"label": "ours", "median": 1100.0, "cpu_median": 1500.0}]},
        "memory": {**head, "rows": [{"quantization": "nf4", "base_weight_bytes": 5.3e7, "peak_memory_mb": 800.0,
                                     "macro_f1": 0.3, "tokens_per_second": 900.0}]},
        "search": {**head, "table": "benchmarks/grid_reviews.csv", "grid_points": 135, "seeds": 10,
                   "plot": "docs/bench_search_hv.png",
                   "summary": {"auto_hv16": 0.8, "tpe_hv16": 0.78, "nsga2_hv16": 0.7, "auto48_hv48": 0.9,
                               "gp48_hv48": 0.88, "random_hv16": 0.6, "random_hv48": 0.75}},
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
    assert text.count("**met**") == 6 and "**not met**" not in text


def test_markdown_states_unmet_goals():
    data = _data()
    data["sections"]["overhead"]["summary"].update(ratio_concurrent=1.2)
    data["sections"]["search"]["summary"].update(auto_hv16=0.5)
    text = report.render(data)
    assert text.count("**not met**") == 2
