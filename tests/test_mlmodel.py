"""Registry versions are MLflow models: `mlflow.pyfunc.load_model("models:/NAME@champion")` in a fresh process,
and `mlflow models serve --env-manager local` on 127.0.0.1, both answer what `sweep serve` answers.

Tiny random-init bases (tests/_tiny.py) with random LoRA adapters, promoted through the real registry path
(`registry.promote`) into a SQLite store in tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _tiny import random_lora, tiny_bert, tiny_llama

from sweeps.driver.promotion import register
from sweeps.production import sources
from sweeps.production.serving.engine import Engine
from sweeps.spec.params import TrialParams
from sweeps.tracking import refs
from sweeps.trial.adapters import disk
from sweeps.trial.models import pretrained

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["great relief and i love it", "awful pain and nausea", "okay i guess, mixed feelings"]
PROMPTS = ["reset my password", "the printer is jammed"]


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """One classification and one instruction adapter, each promoted as NAME@champion; the env that finds them."""
    root = tmp_path_factory.mktemp("mlmodel")
    env = {**os.environ, "SWEEPS_STORE": str(root / "store"), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEPS_STORE", env["SWEEPS_STORE"])
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        from sweeps.tracking.tracker import Tracker

        tracker = Tracker()
        bert = tiny_bert(root / "bert")
        cls = disk.save_adapter(random_lora(pretrained.load_base(bert, "classification", 3, TrialParams(), "cpu"),
                                                "classification", target=("query", "value"), seed=1,
                                                heads=("classifier",)), root / "reviews")
        (cls / "labels.json").write_text(json.dumps(LABELS))
        llama = tiny_llama(root / "llama")
        gen = disk.save_adapter(random_lora(pretrained.load_base(llama, "instruction", None, TrialParams(), "cpu"),
                                                "instruction", seed=2, scale=0.5), root / "helpdesk")
        (gen / "chat.json").write_text(json.dumps({"system_prompt": "be brief", "max_new_tokens": 5}))
        for name, base, adapter, task in (("reviews", bert, cls, "classification"),
                                          ("helpdesk", llama, gen, "instruction")):
            parent = tracker.start_sweep(f"{name}-sweep", f"name: {name}-sweep\n")
            run_id = tracker.start_trial(f"{name}-sweep", parent, 0, {"rank": 4, "target": "attention"})
            tracker.finish_trial(run_id, "COMPLETE", {"macro_f1": 0.5}, adapter_dir=adapter)
            lineage = {"sweep": f"{name}-sweep", "trial_number": "0", "task": task, "base_model": str(base),
                       "base_model_sha256": pretrained.content_hash(base), "val.macro_f1": "0.5",
                       "baseline.majority.validation.macro_f1": "0.26"}
            assert register.promote(tracker, name, run_id, ["champion"], lineage, {"macro_f1": 0.4})[1]
        # what `sweep serve` answers for the same adapters: the reference both MLflow paths must match
        with Engine([("reviews", str(cls))]) as engine:
            expected_cls = [f.result() for f in engine.submit_predict("reviews", TEXTS)]
        with Engine([("helpdesk", str(gen))]) as engine:
            expected_gen = [engine.submit_generate("helpdesk", p).result()["text"] for p in PROMPTS]
        yield {"tracker": tracker, "env": env, "root": root, "cls": expected_cls, "gen": expected_gen}


def test_version_is_a_logged_pyfunc_model_with_a_model_card(promoted, tmp_path):
    tracker = promoted["tracker"]
    info = refs.resolve(tracker, "reviews@champion")
    model = tracker.client.get_logged_model(info["model_id"])
    assert info["source"] == model.artifact_location and model.source_run_id == info["run_id"]
    local = Path(tracker.client.download_artifacts(info["run_id"], "", str(tmp_path / "run")))
    assert (local / "adapter" / "manifest.json").is_file()  # the run keeps its adapter: serve/export read it
    from mlflow.artifacts import download_artifacts

    mdir = Path(download_artifacts(info["source"], dst_path=str(tmp_path / "model")))
    mlmodel = (mdir / "MLmodel").read_text()
    assert "python_function" in mlmodel and "signature" in mlmodel and "model_id: " + info["model_id"] in mlmodel
    assert (mdir / "artifacts" / "adapter" / "manifest.json").is_file()
    assert "peft-sweeps" in (mdir / "requirements.txt").read_text()
    assert json.loads((mdir / "artifacts" / "model_info.json").read_text())["labels"] == LABELS
    assert (mdir / "input_example.json").is_file() and (mdir / "serving_input_example.json").is_file()
    card = info["description"]
    for part in ("classification adapter", "sha256", "macro_f1 0.5", "macro_f1 0.4", "baseline majority",
                 "models:/reviews/1", "mlflow models serve"):
        assert part in card, (part, card)
    # sweep serve / sweep export resolve the version as before (the run's verified adapter artifact)
    found = sources.locate("reviews@champion", tmp_path / "located", tracker)
    assert (found.task, found.labels, found.version) == ("classification", LABELS, "1")


_LOAD = """
import json, sys
import mlflow, pandas as pd
cls = mlflow.pyfunc.load_model("models:/reviews@champion")
out = cls.predict(pd.DataFrame({"text": json.loads(sys.argv[1])}))
gen = mlflow.pyfunc.load_model("models:/helpdesk@champion")
texts = gen.predict(pd.DataFrame({"text": json.loads(sys.argv[2])}))
print(json.dumps({"cls": out.to_dict(orient="records"), "gen": texts["generation"].tolist(),
                  "short": gen.predict(pd.DataFrame({"text": ["reset my password"]}),
                                       params={"max_new_tokens": 1})["generation"].tolist()}))
"""


def test_pyfunc_load_model_in_a_fresh_process_predicts_like_sweep_serve(promoted):
    env = {**promoted["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{promoted['root'] / 'store' / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-c", _LOAD, json.dumps(TEXTS), json.dumps(PROMPTS)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=promoted["root"])
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for row, want in zip(got["cls"], promoted["cls"], strict=True):
        assert row["label"] == want["label"] and row["score"] == pytest.approx(want["scores"][want["label"]], 1e-5)
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-5)
    assert got["gen"] == promoted["gen"]
    assert len(got["short"]) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_invocations(promoted, tmp_path):
    port = _free_port()
    env = {**promoted["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{promoted['root'] / 'store' / 'mlflow.db'}"}
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    # mlflow runs `uvicorn` by name: as with an activated venv, its bin folder comes first on PATH
    env["PATH"] = f"{mlflow_bin.parent}{os.pathsep}{env.get('PATH', '')}"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", "models:/reviews@champion", "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "mlflow models serve did not come up in 180 s"
            time.sleep(0.5)
        reply = httpx.post(f"{url}/invocations", json={"dataframe_records": [{"text": t} for t in TEXTS]},
                           timeout=60)
        assert reply.status_code == 200, reply.text
        predictions = reply.json()["predictions"]
        assert [p["label"] for p in predictions] == [w["label"] for w in promoted["cls"]]
        assert predictions[0]["scores"] == pytest.approx(promoted["cls"][0]["scores"], abs=1e-5)
        bad = httpx.post(f"{url}/invocations", json={"dataframe_records": [{"txt": "x"}]}, timeout=60)
        assert 400 <= bad.status_code < 500  # the signature's input schema is enforced
    finally:  # the server and its workers share a process group: stop them all, whatever happened above
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # already gone (it exited, or a failed start)
        pass


def test_versions_pickled_before_the_move_still_unpickle():
    """A version's python_model is pickled by reference; those promoted before issue 15 name sweeps.mlmodel."""
    import pickle

    from sweeps.tracking.pyfunc import AdapterModel

    text = pickle.dumps(AdapterModel(), protocol=0)
    assert b"csweeps.tracking.pyfunc\nAdapterModel\n" in text
    old = text.replace(b"csweeps.tracking.pyfunc\nAdapterModel\n", b"csweeps.mlmodel\nAdapterModel\n")
    assert type(pickle.loads(old)) is AdapterModel
