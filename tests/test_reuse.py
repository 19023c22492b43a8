"""A base reused across trials (sweeps/trial/memory/reuse.py) gives the same results as a fresh load; the
frozen-prefix cache (sweeps/trial/memory/prefix.py) gives the same results whether it was filled by this trial or an
earlier one."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import _tiny
import pytest
import torch

from sweeps.spec.params import TrialParams
from sweeps.trial.adapters import lora, targeting
from sweeps.trial.memory import meter, prefix, reuse
from sweeps.trial.models import precision, pretrained

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def headless_bert(tmp_path_factory) -> Path:
    """A 3-block BERT saved *without* a classification head, like MiniLM: from_pretrained draws a new head."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("headless-bert")
    tok = _tiny.write_tokenizer(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(autouse=True)
def _empty_slot():
    reuse.drop()
    yield
    reuse.drop()


@functools.cache
def _batches(path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    texts = ["great relief love", "awful pain worse nausea the drug", "okay", "mixed average for weeks and",
             "excellent better", "terrible"] * 2
    enc = [tok(t)["input_ids"] for t in texts]
    out = []
    for start in range(0, len(enc), 4):
        rows = enc[start:start + 4]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        out.append((ids, mask, torch.tensor([(start + i) % 3 for i in range(len(rows))])))
    return out


def _trial(path: Path, params: TrialParams, fresh: bool) -> dict:
    """What run_trial does with the base, in small: seed, base, LoRA, a few steps with dropout, evaluate."""
    torch.manual_seed(13)
    with meter.PeakMemory("cpu") as pm:
        if fresh:
            model = pretrained.load_base(path, "classification", 3, params, "cpu")
            prefix.attach(model, targeting.lowest_block(model, params))
        else:
            model = reuse.base_for_trial(path, "classification", 3, params, "cpu", peak=pm)
        weight_bytes = precision.weight_bytes(model)
        peft_model = lora.apply_peft(model, params, "classification", 3)
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
        peft_model.train()
        for _ in range(2):
            for ids, mask, labels in _batches(path):
                loss = torch.nn.functional.cross_entropy(peft_model(input_ids=ids, attention_mask=mask).logits, labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
        peft_model.eval()
        with torch.inference_mode():
            logits = torch.cat([peft_model(input_ids=ids, attention_mask=mask).logits for ids, mask, _ in
                                _batches(path)])
    trainable, total = lora.trainable_params(peft_model)
    if not fresh:
        reuse.release(peft_model)
    return {"loss": loss.item(), "logits": logits, "trainable": trainable, "total": total,
            "weight_bytes": weight_bytes, "rng": torch.get_rng_state(), "peak": pm.peak_bytes}


PARAMS = [TrialParams(rank=4, layers="upper-half", dropout=0.1),
          TrialParams(rank=2, layers="all", target="all-linear", pooling="cls"),
          TrialParams(rank=8, layers="2", alpha_ratio=4.0),
          TrialParams(rank=4, layers="upper-half", dropout=0.1),
          TrialParams(rank=4, layers="upper-half", quantization="int8"),  # int8 moves its scales on first forward
          TrialParams(rank=4, layers="upper-half", quantization="int8"),
          TrialParams(rank=2, layers="all", quantization="nf4")]


def test_reused_base_equals_a_fresh_load(headless_bert):
    for params in PARAMS:
        fresh = _trial(headless_bert, params, fresh=True)
        reused = _trial(headless_bert, params, fresh=False)
        assert torch.equal(fresh["logits"], reused["logits"]), params
        assert fresh["loss"] == reused["loss"]
        assert torch.equal(fresh["rng"], reused["rng"])  # the new head drew exactly what from_pretrained drew
        for key in ("trainable", "total", "weight_bytes"):
            assert fresh[key] == reused[key], key
    # the slot served every trial of the same load settings; pooling=cls is another base
    assert reuse._SLOT["entry"] is not None


def test_release_restores_the_loaded_base(headless_bert):
    params = PARAMS[1]  # cls pooling: the pretrained pooler is a modules_to_save head
    model = reuse.base_for_trial(headless_bert, "classification", 3, params, "cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_modules()]
    peft_model = lora.apply_peft(model, params, "classification", 3)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(1.0)  # "training"
    reuse.release(peft_model)
    assert [n for n, _ in model.named_modules()] == names
    assert "peft_config" not in model.__dict__
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prefix_cache_is_filled_once_and_reused(headless_bert):
    params = PARAMS[0]
    _trial(headless_bert, params, fresh=False)
    cache = prefix.cache_of(reuse._SLOT["entry"].model)
    distinct = cache.misses
    assert 0 < distinct == len(cache.rows) <= 6 and cache.hits > 0 and cache.blocks == 1
    _trial(headless_bert, params, fresh=False)
    assert cache.misses == distinct  # the second trial computed nothing below block 1
    assert meter.platform_bytes() >= cache.nbytes > 0  # held as platform memory, not charged to trials


def test_prefix_falls_back_on_left_padding(headless_bert):
    model = pretrained.load_base(headless_bert, "classification", 3, PARAMS[0], "cpu").eval()
    ids, mask, _ = _batches(headless_bert)[0]
    plain = model(input_ids=ids.flip(1), attention_mask=mask.flip(1)).logits
    assert prefix.attach(model, 1)
    cached = model(input_ids=ids.flip(1), attention_mask=mask.flip(1)).logits
    assert torch.equal(plain, cached) and prefix.cache_of(model).misses == 0


CHILD = """
import json, sys
from sweeps.spec import validate_dict
from sweeps.trial import loop
from sweeps.trial.memory import reuse
raw = json.loads(sys.argv[1])
out = []
for i, params in enumerate(raw.pop("runs")):
    spec = validate_dict({**raw, "params": params}, "reuse-test")
    result = loop.run_trial(spec, spec.params, sys.argv[2] + f"/t{i}")
    keys = ("accuracy", "macro_f1", "loss", "perplexity", "routing_accuracy", "zero_shot_loss", "trainable_params",
            "base_weight_bytes", "total_params")
    out.append({k: result.metrics[k] for k in keys if k in result.metrics})
print("RESULT " + json.dumps({"metrics": out, "slot": reuse._SLOT["entry"] is not None}))
"""


def _run(raw: dict, runs: list[dict], tmp: Path, reuse_on: bool) -> dict:
    env = {**os.environ, "SWEEPS_REUSE_BASE": "1" if reuse_on else "0", "SWEEPS_STORE": str(tmp / "store"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**raw, "runs": runs}), str(tmp)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stderr[-3000:]
    return json.loads(line[7:])


@pytest.mark.slow
def test_run_trial_twice_in_one_process_equals_fresh_processes(headless_bert, tmp_path):
    csv = _tiny.toy_reviews(tmp_path / "reviews.csv", n=60)
    raw = {"name": "reuse", "seed": 3, "model": {"base": str(headless_bert)},
           "data": {"source": str(csv), "validation_fraction": 0.3, "max_length": 16},
           "params": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "bf16": "off"},
           "search": {"space": {"rank": [2, 4]}}, "objectives": [{"metric": "macro_f1", "direction": "maximize"}],
           "budget": {"trials": 2, "concurrency": 1}}
    runs = [{"rank": 4, "layers": "upper-half", "epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "bf16": "off"},
            {"rank": 2, "target": "ffn", "epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "bf16": "off"}]
    together = _run(raw, runs + runs[:1], tmp_path / "a", reuse_on=True)
    apart = [_run(raw, [r], tmp_path / f"f{i}", reuse_on=False)["metrics"][0] for i, r in enumerate(runs)]
    assert together["metrics"] == apart + apart[:1]
    source = (ROOT / "sweeps" / "trial" / "loop.py").read_text()
    if "reuse." in source:  # the trial loop hands trials the worker's base: the slot must have served them
        assert together["slot"]


@pytest.mark.slow
def test_instruction_trials_on_a_reused_base_equal_fresh_processes(tmp_path):
    """The causal LM case: tied embeddings, no new head; a 4-bit base between two fp32 trials swaps the slot."""
    base = _tiny.tiny_llama(tmp_path / "llama")
    chats = _tiny.toy_tickets(tmp_path / "tickets.jsonl", n=24)
    raw = {"name": "reuse-chat", "task": "instruction", "seed": 3, "model": {"base": str(base)},
           "data": {"source": str(chats), "validation_fraction": 0.25, "max_length": 48, "category_column": "category",
                    "generation_examples": 0},
           "search": {"space": {"rank": [2, 4]}}, "objectives": [{"metric": "loss", "direction": "minimize"}],
           "budget": {"trials": 2, "concurrency": 1}}
    common = {"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "bf16": "off", "target": "all-linear"}
    runs = [{**common, "rank": 4}, {**common, "rank": 2, "quantization": "nf4", "compute_dtype": "float32"},
            {**common, "rank": 2, "layers": "upper-half"}]
    together = _run(raw, runs, tmp_path / "a", reuse_on=True)
    apart = [_run(raw, [r], tmp_path / f"f{i}", reuse_on=False)["metrics"][0] for i, r in enumerate(runs)]
    assert together["metrics"] == apart
    assert together["slot"]


def _llama_steps(model, path: Path, params: TrialParams, cached: bool):
    """Two training steps and an eval pass of a LoRA'd tiny Llama classifier, with or without the prefix cache."""
    if cached:
        assert prefix.attach(model, targeting.lowest_block(model, params))
    torch.manual_seed(5)
    peft_model = lora.apply_peft(model, params, "classification", 3)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for ids, mask, labels in _batches(path)[:2]:
        loss = torch.nn.functional.cross_entropy(peft_model(input_ids=ids, attention_mask=mask).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    peft_model.eval()
    with torch.inference_mode():
        logits = torch.cat([peft_model(input_ids=ids, attention_mask=mask).logits for ids, mask, _ in _batches(path)])
    return losses, logits


def test_prefix_cache_on_a_llama_classifier_equals_the_plain_forward(tmp_path):
    """SmolLM2-style decoders: blocks below the adapted ones come from the cache, the upper blocks get them as
    inputs_embeds; loss and logits match the plain forward and the second pass over the rows computes nothing."""
    path = _tiny.tiny_llama(tmp_path / "llama")
    params = TrialParams(rank=4, layers="upper-half")
    runs = []
    for cached in (False, True):
        torch.manual_seed(0)
        model = pretrained.load_base(path, "classification", 3, params, "cpu")
        runs.append(_llama_steps(model, path, params, cached))
        if cached:
            cache = prefix.cache_of(model)
            assert cache.blocks == 1 and cache.misses == len(cache.rows) > 0 and cache.hits > 0
    (plain_losses, plain_logits), (cached_losses, cached_logits) = runs
    assert cached_losses == pytest.approx(plain_losses, abs=1e-5)
    assert torch.allclose(plain_logits, cached_logits, atol=1e-5)
