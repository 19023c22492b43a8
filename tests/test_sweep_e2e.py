"""End to end: `sweep run` on a tiny model (local Ray, SQLite), then promote, then resume adds nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _tiny import tiny_bert, tiny_sweep_yaml, toy_reviews

SWEEP = Path(sys.executable).parent / "sweep"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    model = tiny_bert(root / "tiny-bert")
    train = toy_reviews(root / "train.csv", n=90, seed=1)
    test = toy_reviews(root / "test.csv", n=45, seed=2)
    spec = root / "tiny.yaml"
    spec.write_text(tiny_sweep_yaml("tiny_e2e", model, train, test))
    env = {**os.environ, "SWEEPS_STORE": str(root / "store"), "SWEEPS_CACHE": str(root / "cache")}
    return root, spec, env


def _sweep(env, *args, check=True):
    proc = subprocess.run([str(SWEEP), *args], env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _state(env):
    """Optuna's and MLflow's view of the sweep, read in a fresh process with the test's store."""
    code = textwrap.dedent("""
        import json
        from sweeps import store
        from sweeps.driver.promotion.front import sweep_spec
        from sweeps.driver.study.study import Study
        from sweeps.tracking.tracker import Tracker
        tracker = Tracker()
        spec = sweep_spec(tracker, "tiny_e2e")
        study = Study(spec, store.study_storage())
        out = {
          "optuna": [{"number": t.number, "state": t.state, "values": t.values, "run": t.attrs.get("mlflow_run_id")}
                     for t in study.trials()],
          "mlflow": [{"number": r.trial_number, "state": r.state, "status": r.status, "run": r.run_id,
                      "metrics": r.metrics, "adapter_sha": r.tags.get("sweeps.adapter_sha256")}
                     for r in tracker.trial_records("tiny_e2e")],
          "baselines": tracker.baselines("tiny_e2e"),
        }
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sweep_run_records_every_trial_in_optuna_and_mlflow(sweep_env):
    root, spec, env = sweep_env
    proc = _sweep(env, "run", str(spec), "--no-live")
    assert "Pareto front" in proc.stdout, proc.stdout
    state = _state(env)
    optuna_trials, runs = state["optuna"], {r["number"]: r for r in state["mlflow"]}
    assert len(optuna_trials) == 4 and len(runs) == 4
    for t in optuna_trials:
        run = runs[t["number"]]
        assert t["state"] == "COMPLETE" and run["state"] == "COMPLETE" and run["status"] == "FINISHED"
        assert t["run"] == run["run"]
        # the same final objective values on both sides
        assert t["values"] == pytest.approx([run["metrics"][m] for m in ("macro_f1", "peak_memory_mb",
                                                                         "trainable_params")])
        assert run["adapter_sha"]
    assert (Path(env["SWEEPS_STORE"]) / "plots" / "tiny_e2e-pareto.png").stat().st_size > 1000
    # the majority class and the linear probe are runs of the sweep beside the trials (and not counted as trials)
    baselines = state["baselines"]
    assert set(baselines) == {"majority", "linear-probe"}
    for figures in baselines.values():
        assert 0 <= figures["validation.macro_f1"] <= 1 and 0 <= figures["test.macro_f1"] <= 1
    assert baselines["majority"]["validation.macro_f1"] < 0.4  # one class of three predicted: F1 <= 1/3
    assert "baselines (validation macro_f1): majority" in proc.stdout, proc.stdout
    for t in state["mlflow"]:
        assert "macro_f1_se" in t["metrics"] and 0 <= t["metrics"]["macro_f1_se"] < 0.5


def test_promote_registers_once_with_aliases_and_verified_manifest(sweep_env):
    root, spec, env = sweep_env
    first = _sweep(env, "promote", "tiny_e2e", "--policy", "max:macro_f1", "--name", "tiny-reviews")
    assert "registered models:/tiny-reviews/" in first.stdout, first.stdout
    second = _sweep(env, "promote", "tiny_e2e", "--policy", "max:macro_f1", "--name", "tiny-reviews")
    assert "already registered" in second.stdout and "registered models:/" not in second.stdout.replace(
        "already registered", "")
    code = textwrap.dedent("""
        import json, tempfile
        from pathlib import Path
        from sweeps.tracking.refs import resolve
        from sweeps.tracking.tracker import Tracker
        t = Tracker()
        info = resolve(t, "models:/tiny-reviews@champion")
        adapter = t.download_adapter(info["run_id"], Path(tempfile.mkdtemp()))  # verifies sha256 manifest
        print(json.dumps({"info": info, "files": sorted(p.name for p in adapter.iterdir())}, default=str))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    info = out["info"]
    assert "champion" in info["aliases"]
    assert info["tags"]["sweep"] == "tiny_e2e" and "test.macro_f1" in info["tags"]
    assert "baseline.linear-probe.test.macro_f1" in info["tags"] and "linear probe" in info["tags"]["versus_baselines"]
    assert "linear probe" in first.stdout, first.stdout
    assert "adapter_model.safetensors" in out["files"] and "manifest.json" in out["files"]
    assert not [f for f in out["files"] if f.endswith((".bin", ".pt", ".pkl"))]


def test_running_again_adds_no_trials(sweep_env):
    root, spec, env = sweep_env
    proc = _sweep(env, "run", str(spec), "--no-live")
    assert "ran 0 trial(s)" in proc.stdout, proc.stdout
    state = _state(env)
    assert len(state["optuna"]) == 4 and len(state["mlflow"]) == 4
