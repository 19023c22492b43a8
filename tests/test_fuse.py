"""`sweep fuse`: PEFT weighted combinations of two instruction adapters, searched and tracked, then promoted."""

from __future__ import annotations

import json

import pytest
from _tiny import CORPUS, random_lora, tiny_llama
from typer.testing import CliRunner

from sweeps.cli import app
from sweeps.production import fusion as fusing
from sweeps.production.serving.engine import Engine
from sweeps.spec.params import TrialParams
from sweeps.tracking import refs
from sweeps.trial.adapters import disk
from sweeps.trial.models import pretrained


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SWEEPS_STUDY_STORAGE", raising=False)
    base = tiny_llama(tmp_path / "llama")
    paths = []
    for seed, name in enumerate(["helpdesk", "legal"], 1):
        model = pretrained.load_base(base, "instruction", None, TrialParams(), "cpu")
        paths.append(disk.save_adapter(random_lora(model, "instruction", seed=seed, scale=0.5), tmp_path / name))
    rows = [{"prompt": p, "response": r, "domain": d} for p, r, d in (
        (CORPUS[0], CORPUS[5], "helpdesk"), (CORPUS[1], CORPUS[2], "helpdesk"), (CORPUS[3], CORPUS[4], "legal"))]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return base, paths, data


def test_one_hot_weights_reproduce_the_source_adapter(setup):
    base, paths, data = setup
    fusion = fusing.Fusion([str(p) for p in paths], fusing.read_rows(data))
    alone = fusion.loss("src0")
    assert set(alone) == {"loss", "perplexity", "loss.helpdesk", "loss.legal"}
    assert alone["loss"] != pytest.approx(fusion.loss("src1")["loss"], abs=1e-3)
    for method in ("linear", "cat"):  # weight 1 on the first adapter, 0 on the second: exactly the first
        fusion.candidate("onehot", method, [1.0, 0.0], None, 0)
        assert fusion.loss("onehot")["loss"] == pytest.approx(alone["loss"], abs=1e-5), method
        fusion.drop("onehot")
    fusion.candidate("ties", "ties", [0.7, 0.7], 0.5, 0)
    assert fusion.loss("ties")["loss"] != pytest.approx(alone["loss"], abs=1e-4)
    with pytest.raises(fusing.FusionError, match="unknown methods"):
        fusion.methods(["average"])
    fusion.close()


def test_fuse_command_tracks_every_candidate_and_promotes_a_servable_adapter(setup, tmp_path):
    base, paths, data = setup
    result = CliRunner().invoke(app, ["fuse", "--adapter", str(paths[0]), "--adapter", str(paths[1]),
                                      "--data", str(data), "--name", "hd-legal", "--trials", "4",
                                      "--promote", "hd-legal", "--test", str(data)])
    assert result.exit_code == 0, result.output
    assert "registered models:/hd-legal/1" in result.output
    from sweeps.tracking.tracker import Tracker

    tracker = Tracker()
    records = tracker.trial_records("hd-legal")
    assert [r.state for r in records] == ["COMPLETE"] * 4
    assert all("loss" in r.metrics and r.params["method"] in fusing.DEFAULT_METHODS for r in records)
    info = refs.resolve(tracker, "hd-legal@champion")
    best = min(records, key=lambda r: r.metrics["loss"])
    assert info["run_id"] == best.run_id and info["tags"]["base_model_sha256"] == pretrained.content_hash(base)
    assert float(info["tags"]["test.loss"]) > 0
    # The promoted candidate, downloaded from the registry, scores what its trial logged, and serves.
    engine = Engine([(None, "hd-legal@champion")], tracker=tracker)
    fusion = fusing.Fusion([str(p) for p in paths], fusing.read_rows(data))
    disk.add_adapter(fusion.model, engine.slots["hd-legal"].found.path, "promoted")
    assert fusion.loss("promoted")["loss"] == pytest.approx(best.metrics["loss"], abs=1e-5)
    assert engine.submit_generate("hd-legal", "reset my password", 4).result(timeout=60)["tokens"]
    engine.close()
    fusion.close()


def test_classification_adapters_and_foreign_bases_are_refused(setup, tmp_path):
    from _tiny import tiny_bert

    base, paths, data = setup
    bert = tiny_bert(tmp_path / "bert")
    heads = [disk.save_adapter(random_lora(pretrained.load_base(bert, "classification", 3, TrialParams(), "cpu"),
                                               "classification", target=("query",), heads=("classifier",), seed=s),
                                   tmp_path / f"cls{s}") for s in (1, 2)]
    with pytest.raises(fusing.FusionError, match="trained head"):
        fusing.Fusion([str(p) for p in heads], fusing.read_rows(data))
    other = tiny_llama(tmp_path / "other", seed=9)
    stranger = disk.save_adapter(random_lora(pretrained.load_base(other, "instruction", None, TrialParams(), "cpu"),
                                                 "instruction"), tmp_path / "stranger")
    with pytest.raises(fusing.FusionError, match="different"):
        fusing.Fusion([str(paths[0]), str(stranger)], fusing.read_rows(data))
