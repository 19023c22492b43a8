"""Recipes for scarce labels and their evidence: bootstrap SEs, the linear probe, LP-FT, head-only, best epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeps.spec.params import TrialParams
from sweeps.trial import loop, probe
from sweeps.trial.models import pretrained
from sweeps.trial.tasks import classify
from tests.test_trial import make_spec, store, tiny_csv, tiny_model_dir  # noqa: F401 - fixtures


def test_bootstrap_se_is_seeded_zero_when_certain_and_shrinks_with_rows():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    assert classify.bootstrap_se(y, y) == {"accuracy_se": 0.0, "macro_f1_se": 0.0}
    noisy = np.where(rng.random(400) < 0.4, rng.integers(0, 3, 400), y)
    small, large = classify.bootstrap_se(y[:100], noisy[:100]), classify.bootstrap_se(y, noisy)
    assert small == classify.bootstrap_se(y[:100], noisy[:100])  # same predictions, same SE
    # SE ~ 1/sqrt(n): 4x the rows, about half the SE
    assert 0.35 < large["macro_f1_se"] / small["macro_f1_se"] < 0.7
    assert 0.01 < small["accuracy_se"] < 0.1


def test_linear_probe_recovers_a_linear_rule_and_folds_its_standardisation():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 5.0, (300, 8))  # far from standardised: the folded head must undo the scaling
    y = (x[:, 0] - 3 > 0).astype(int) + (x[:, 1] - 3 > 4).astype(int)
    fit = probe.linear_probe((x[:200], y[:200]), (x[200:], y[200:]), 3)
    assert fit["validation"]["macro_f1"] > 0.8
    pred = (x[200:] @ np.array(fit["weight"]).T + np.array(fit["bias"])).argmax(1)
    assert classify.macro_f1(y[200:], pred) == pytest.approx(fit["validation"]["macro_f1"])
    floor = probe.majority(y[:200], {"validation": y[200:]})
    assert floor["validation"]["macro_f1"] < fit["validation"]["macro_f1"]


def test_probe_head_loaded_into_the_model_scores_what_the_probe_scored(store, tiny_model_dir, tiny_csv):
    spec = make_spec(tiny_model_dir, tiny_csv)
    params = spec.params
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base)
    task = loop.make_task(spec, params, tokenizer)
    model = loop.load_model(spec, params, base, tokenizer, task, "cpu")
    fit = probe.compute(model, task, "cpu", task.probe_parts(params, pretrained.content_hash(base)))
    probe.init_head(probe.head_module(model), fit)
    scored = classify.evaluate(model, task.splits["validation"], task.pad_id, 8, "cpu", bf16=False)
    assert scored["macro_f1"] == pytest.approx(fit["validation"]["macro_f1"], abs=1e-6)
    assert set(fit) >= {"train", "validation", "majority", "weight", "bias"}  # (this CSV has no test split)


def test_head_only_trains_the_head_alone_and_lp_ft_starts_from_the_probe(store, tiny_model_dir, tiny_csv,
                                                                         tmp_path):
    # head-only + LP-FT with a vanishing learning rate: the trial's head is the probe's, so it scores the probe
    spec = make_spec(tiny_model_dir, tiny_csv, method="head-only", head_init="probe", learning_rate=1e-12,
                     head_lr_ratio=1.0, epochs=1)
    result = loop.run_trial(spec, spec.params, tmp_path / "h", device="cpu")
    hidden, labels = 32, 3
    assert result.metrics["trainable_params"] == hidden * labels + labels  # the classifier (mean pooling: no pooler)
    base = pretrained.resolve_base(spec.model)
    task = loop.make_task(spec, spec.params, pretrained.load_tokenizer(base))
    fit = probe.cached(task.probe_parts(spec.params, pretrained.content_hash(base)))
    assert fit is not None  # the trial computed it once and kept it
    assert result.metrics["macro_f1"] == pytest.approx(fit["validation"]["macro_f1"], abs=1e-6)
    from safetensors.torch import load_file

    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(v) == 0 for v in lora_b)  # the frozen LoRA adds nothing
    again = loop.evaluate_adapter(spec, spec.params, result.adapter_dir, split="validation", device="cpu")
    assert again["macro_f1"] == pytest.approx(result.metrics["macro_f1"])


def test_restore_best_keeps_the_best_epoch(store, tiny_model_dir, tiny_csv, tmp_path):
    spec = make_spec(tiny_model_dir, tiny_csv, epochs=4, restore_best=True, learning_rate=2e-2)
    result = loop.run_trial(spec, spec.params, tmp_path / "b", device="cpu")
    scores = [row["macro_f1"] for row in result.history]
    best = int(np.argmax(scores)) + 1
    assert result.metrics["best_epoch"] == best
    assert result.metrics["macro_f1"] == pytest.approx(max(scores))
    again = loop.evaluate_adapter(spec, spec.params, result.adapter_dir, split="validation", device="cpu")
    assert again["macro_f1"] == pytest.approx(max(scores))  # the saved adapter is the best epoch's


def test_head_only_is_a_valid_search_point():
    params = TrialParams(method="head-only")
    assert params.method == "head-only"
    with pytest.raises(ValueError, match="method"):
        TrialParams(method="head")


def test_folds_score_every_training_row_once_and_never_touch_test(store, tiny_model_dir, tiny_csv, tmp_path):
    from sweeps.spec import validate_dict
    from sweeps.trial.data import labelled

    raw = make_spec(tiny_model_dir, tiny_csv).model_dump(mode="json")
    raw["data"]["folds"] = 3
    raw["data"]["test"] = str(tiny_csv)  # a test file: it must stay out of every fold
    spec = validate_dict(raw)
    pool = labelled.load_classification(spec.data, spec.seed, None)
    assert len(pool.validation) == 0 and len(pool.train) == 60  # the refit trains on every training row
    seen = []
    for fold in range(3):
        split = labelled.load_classification(spec.data, spec.seed, fold)
        rows = list(zip(split.validation["text"], split.validation["label"], strict=True))
        seen.append(rows)
        assert len(split.train) + len(split.validation) == 60
        assert len(split.test) == 60  # the same test split in every fold, never carved from
        assert sorted(np.bincount(np.asarray(split.validation["label"]))) == [5, 5, 10]  # stratified
    assert all(a != b for i, a in enumerate(seen) for b in seen[i + 1:])  # different validation rows per fold
    assert sum(len(s) for s in seen) == 60
    result = loop.run_trial(spec, spec.params, tmp_path / "cv", device="cpu")
    assert result.metrics["folds"] == 3 and result.info["cv_rows"] == 60
    assert 0 < result.metrics["macro_f1_se"] < 0.2
    assert {"fold0_macro_f1", "fold1_macro_f1", "fold2_macro_f1"} <= set(result.metrics)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "cv" / "fold-0" / "adapter").exists()  # only the refit's adapter is kept


def test_baselines_of_a_folds_spec_are_cross_validated_like_its_trials(store, tiny_model_dir, tiny_csv):
    """`data.folds: K` carves no validation split: the probe used to crash on the empty split at sweep start.
    Its validation figures are now the pooled out-of-fold predictions over every training row (as the trials'),
    its weight decay is chosen on them, and its head is refitted on all rows for the test figure."""
    from sweeps.driver import prepare
    from sweeps.spec import validate_dict

    raw = make_spec(tiny_model_dir, tiny_csv).model_dump(mode="json")
    raw["data"]["folds"] = 3
    raw["data"]["test"] = str(tiny_csv)
    out = prepare.baselines(validate_dict(raw))
    lp, maj = out["linear-probe"], out["majority"]
    assert 0 <= lp["validation.macro_f1"] <= 1 and 0 < lp["validation.macro_f1_se"] < 0.3  # 60 rows, not 0
    assert 0 <= lp["test.macro_f1"] <= 1 and lp["weight_decay"] in probe._WEIGHT_DECAYS
    assert maj["validation.accuracy"] == pytest.approx(0.5)  # tiny_csv: 30 of 60 rows are the majority class


def test_cross_validated_probe_scores_each_row_by_the_fit_that_did_not_see_it():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (90, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    y[:6] = 1 - y[:6]  # a few rows no fit can get right
    folds = np.arange(90) % 3
    fit = probe.cross_validated((x, y), folds, 2, (x, y))
    assert fit["folds"] == 3 and fit["validation"]["macro_f1"] < fit["train"]["macro_f1"] <= 1.0
    # by hand: the chosen weight decay's out-of-fold predictions
    pred = np.empty(90, dtype=np.int64)
    for f in range(3):
        w, b = probe._fit(x[folds != f], y[folds != f], 2, fit["weight_decay"])
        pred[folds == f] = (x[folds == f] @ w.T + b).argmax(1)
    assert fit["validation"]["macro_f1"] == pytest.approx(classify.macro_f1(y, pred))
    w, b = np.asarray(fit["weight"]), np.asarray(fit["bias"])
    assert fit["test"]["macro_f1"] == pytest.approx(classify.macro_f1(y, (x @ w.T + b).argmax(1)))
