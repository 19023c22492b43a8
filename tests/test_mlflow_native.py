"""What an MLflow user finds after `sweep run` and `sweep promote` (issue 16), read with a plain MlflowClient and
`mlflow.pyfunc` in fresh processes: the model-training view, named trial runs with their data sets and epoch
curves, the parent's spec, plot and front table, and a registry version that loads as a pyfunc model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _tiny import tiny_bert, tiny_sweep_yaml, toy_reviews

SWEEP = Path(sys.executable).parent / "sweep"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

_READ = textwrap.dedent("""
    import json, os, mlflow, pandas as pd
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("tiny_native")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    parent = next(r for r in runs if r.data.tags.get("sweeps.role") == "parent")
    mv = client.get_model_version_by_alias("tiny-native", "champion")
    model = mlflow.pyfunc.load_model("models:/tiny-native@champion")
    out = model.predict(pd.DataFrame({"text": ["great relief and i love it", "awful pain and nausea"]}))
    print(json.dumps({
        "kind": exp.tags.get("mlflow.experimentKind"),
        "names": sorted(r.info.run_name for r in trials),
        "inputs": [sorted((d.dataset.name, [t.value for t in d.tags][0]) for d in r.inputs.dataset_inputs)
                   for r in trials],
        "steps": [m.step for m in client.get_metric_history(trials[0].info.run_id, "macro_f1")],
        "parent_files": sorted(f.path for f in client.list_artifacts(parent.info.run_id)),
        "description": mv.description, "labels": out["label"].tolist(), "scores": out["scores"].tolist(),
    }))
""")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A tiny sweep run and promoted with the CLI, as a user would: (store folder, env pointing at it)."""
    tmp_path = tmp_path_factory.mktemp("native")
    model = tiny_bert(tmp_path / "tiny-bert")
    train, test = toy_reviews(tmp_path / "train.csv", n=90, seed=1), toy_reviews(tmp_path / "test.csv", n=45, seed=2)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_sweep_yaml("tiny_native", model, train, test, trials=2, concurrency=1))
    env = {**os.environ, "SWEEPS_STORE": str(tmp_path / "store"), "SWEEPS_CACHE": str(tmp_path / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    for args in (["run", str(spec), "--no-live"], ["promote", "tiny_native", "--policy", "max:macro_f1",
                                                   "--name", "tiny-native"]):
        proc = subprocess.run([str(SWEEP), *args], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"sweep {args[0]}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    return tmp_path, env


def test_sweep_as_an_mlflow_user_sees_it(native):
    tmp_path, env = native
    proc = subprocess.run([sys.executable, "-c", _READ], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["kind"] == "custom_model_development"
    assert len(got["names"]) == 2 and all(n.startswith(("t00 r", "t01 r")) for n in got["names"]), got["names"]
    for inputs in got["inputs"]:
        assert [c for _, c in inputs] == ["test", "train", "validation"], inputs
    assert got["steps"][:2] == [1, 2]  # one point per epoch (2 epochs), then the final figure
    assert {"spec.yaml", "pareto_front.json", "tiny_native-pareto.png"} <= set(got["parent_files"])
    assert "held out" in got["description"] and "models:/tiny-native/" in got["description"]
    assert set(got["labels"]) <= {"negative", "neutral", "positive"}
    assert all(abs(sum(s.values()) - 1) < 1e-4 for s in got["scores"])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_mlflow_ui_renders_trials_compare_view_and_champion(native, tmp_path):
    """scripts/mlflow_ui_check.py: `mlflow ui` on 127.0.0.1 in headless Chromium, pages checked as rendered."""
    store, env = native
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "mlflow_ui_check.py"), "--store",
                           str(store / "store"), "--sweep", "tiny_native", "--model", "tiny-native", "--screenshots",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("ok: ") == 3, proc.stdout
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["mlflow_compare.png", "mlflow_registry.png", "mlflow_registry_version.png", "mlflow_runs.png"]
    assert all((tmp_path / s).stat().st_size > 20_000 for s in shots)  # real renders, not blank pages
