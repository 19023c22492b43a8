"""The `sweep` CLI as a user runs it: exit codes, messages, and that validate creates nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tiny import tiny_bert, toy_reviews

ROOT = Path(__file__).resolve().parents[1]
SWEEP = Path(sys.executable).parent / "sweep"


def _run(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([str(SWEEP), *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_every_command():
    out = _run("--help").stdout
    for cmd in ("validate", "schema", "trial", "run", "ls", "show", "pareto", "promote"):
        assert cmd in out


def test_validate_ok(tmp_path):
    proc = _run("validate", str(ROOT / "search_spaces" / "rank_study.yaml"), env={"SWEEPS_STORE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "rank_study" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # creates nothing


def test_validate_reports_three_mistakes_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "search_spaces" / "rank_study.yaml").read_text()
    text = text.replace("  epochs: 3", "  epochs: 3\n  rank: 0").replace("budget:\n", "budget:\n  trails: 3\n")
    text = text.replace("metric: trainable_params", "metric: trainable")
    bad.write_text(text)
    store = tmp_path / "store"
    proc = _run("validate", str(bad), env={"SWEEPS_STORE": str(store)})
    assert proc.returncode == 2
    for path in ("params.rank", "budget.trails", "objectives[2].metric"):
        assert path in proc.stderr, proc.stderr
    assert not store.exists()


def test_yaml_syntax_error_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [unclosed\n")
    proc = _run("validate", str(bad))
    assert proc.returncode == 2 and "line" in proc.stderr


def test_schema_is_json():
    proc = _run("schema")
    assert proc.returncode == 0
    assert "TrialParams" in json.loads(proc.stdout)["$defs"]


def test_ls_on_an_empty_store(tmp_path):
    proc = _run("ls", env={"SWEEPS_STORE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr


def test_pareto_of_unknown_sweep_says_so(tmp_path):
    proc = _run("pareto", "nope", env={"SWEEPS_STORE": str(tmp_path)})
    assert proc.returncode == 2 and "no sweep named 'nope'" in proc.stderr


@pytest.mark.slow
def test_trial_command_runs_one_trial_and_prints_metrics(tmp_path):
    model = tiny_bert(tmp_path / "m")
    train = toy_reviews(tmp_path / "train.csv")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"""# Run: sweep trial s.yaml
name: one
model: {{base: {model}}}
data: {{source: {train}, validation_fraction: 0.3, max_length: 16}}
params: {{epochs: 1, batch_size: 8, bf16: "off"}}
search: {{space: {{rank: [2, 4]}}}}
objectives: [{{metric: macro_f1, direction: maximize}}]
""")
    proc = _run("trial", str(spec), "--set", "rank=4", "--set", "learning_rate=5e-3",
                env={"SWEEPS_STORE": str(tmp_path / "store"), "SWEEPS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "macro_f1" in proc.stdout and "peak_memory_mb" in proc.stdout and "rank=4" in proc.stdout
    bad = _run("trial", str(spec), "--set", "rank=0")
    assert bad.returncode == 2 and "params.rank" in bad.stderr


@pytest.mark.slow
def test_run_refuses_bad_data_and_missing_targets_before_creating_anything(tmp_path):
    model = tiny_bert(tmp_path / "m")
    train = toy_reviews(tmp_path / "train.csv")
    store = tmp_path / "store"
    env = {"SWEEPS_STORE": str(store), "SWEEPS_CACHE": str(tmp_path / "cache")}
    base = f"""# Run: sweep run s.yaml
name: refused
model: {{base: {model}}}
data: {{source: {train}, label_column: LABEL}}
params: {{layers: "LAYERS"}}
search: {{space: {{rank: [2, 4]}}}}
objectives: [{{metric: macro_f1, direction: maximize}}]
"""
    spec = tmp_path / "s.yaml"
    spec.write_text(base.replace("LABEL", "stars").replace("LAYERS", "all"))
    proc = _run("run", str(spec), "--no-live", env=env)
    assert proc.returncode == 2 and "stars" in proc.stderr, proc.stderr
    spec.write_text(base.replace("LABEL", "label").replace("LAYERS", "4-5"))
    proc = _run("run", str(spec), "--no-live", env=env)
    assert proc.returncode == 2 and "2 blocks" in proc.stderr, proc.stderr
    assert not (store / "mlflow.db").exists() and not (store / "optuna.db").exists()


def test_global_server_options_point_every_command_elsewhere(tmp_path):
    store, db = tmp_path / "store", tmp_path / "elsewhere.db"
    proc = _run("--store", str(store), "--tracking-uri", f"sqlite:///{db}", "ls")
    assert proc.returncode == 0, proc.stderr
    assert db.is_file() and not (store / "mlflow.db").exists()


def test_promote_refused_by_an_auth_server_says_why_without_a_traceback(monkeypatch):
    """A 403 from an MLflow server with auth (the real server case: tests/test_mlflow_auth.py) ends as one clear
    message and exit 2; any other error still raises."""
    from typer.testing import CliRunner

    from sweeps import cli
    from sweeps.driver.promotion import promote

    class Refused(Exception):
        error_code = "PERMISSION_DENIED"

    def refuse(*a, **k):
        raise Refused("Permission denied for create_model_version on reviews")

    monkeypatch.setattr(promote, "promote_sweep", refuse)
    out = CliRunner().invoke(cli.app, ["promote", "rank_study", "--name", "reviews"])
    assert out.exit_code == 2, out.output
    assert "cannot promote into 'reviews'" in out.output and "PERMISSION_DENIED" in out.output
    assert "EDIT" in out.output and "Traceback" not in out.output
    monkeypatch.setattr(promote, "promote_sweep", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    assert isinstance(CliRunner().invoke(cli.app, ["promote", "rank_study"]).exception, RuntimeError)
