"""The instruction task on a tiny random-init Llama with a ChatML tokenizer built in the test (no downloads)."""

from __future__ import annotations

import json

import _tiny
import pytest
import torch

from sweeps.spec import DataSpec, SpecError, validate_dict
from sweeps.trial import loop
from sweeps.trial.data import chat
from sweeps.trial.data.chat import IGNORE, Chat
from sweeps.trial.data.reading import DataError
from sweeps.trial.tasks import instruct


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPS_STORE", str(tmp_path / "store"))
    return tmp_path / "store"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return _tiny.tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def tok(llama_dir):
    from sweeps.trial.models import pretrained

    return pretrained.load_tokenizer(llama_dir)


def _spec(llama_dir, train, **over):
    raw = {"name": "helpdesk-tiny", "task": "instruction", "seed": 1, "model": {"base": str(llama_dir)},
           "data": {"source": str(train), "max_length": 160, "validation_fraction": 0.25, "generation_examples": 3,
                    "max_new_tokens": 12, "system_prompt": "Route the ticket."},
           "params": {"epochs": 4, "batch_size": 6, "learning_rate": 2e-2, "rank": 8, "target": "all-linear",
                      "bf16": "off", "dropout": 0.0},
           "search": {"space": {"rank": [4, 8]}},
           "objectives": [{"metric": "loss", "direction": "minimize"},
                          {"metric": "routing_accuracy", "direction": "maximize"}]}
    for key, value in over.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return validate_dict(raw)


def test_only_answer_tokens_carry_labels(tok):
    c = Chat(({"role": "user", "content": "reset my password"}, {"role": "assistant", "content": "Category: access"}))
    enc = chat.encode(c, tok, 64, system_prompt="Route it.")
    answer = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.decode(answer) == "Category: access<|im_end|>\n"
    prompt = tok.decode(enc.prompt_ids)
    assert prompt.startswith("<|im_start|>system\nRoute it.<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
    assert enc.input_ids[:len(enc.prompt_ids)] == enc.prompt_ids and not enc.truncated


def test_truncation_is_counted_and_answerless_chats_dropped(tok):
    short = Chat(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "Category: access " * 5}))
    long = Chat(({"role": "user", "content": "printer " * 40}, {"role": "assistant", "content": "ok"}))
    encoded, kept, stats = chat.encode_all([short, long], tok, 24)
    assert stats == {"examples": 2, "truncated": 1, "dropped_too_long": 1}
    assert kept == [short] and len(encoded[0].input_ids) == 24


def test_prompt_response_columns_and_missing_column(tmp_path):
    path = _tiny.toy_tickets(tmp_path / "t.jsonl", n=12, columns=True)
    data = chat.load_chats(DataSpec(source=str(path), prompt_column="request", response_column="answer"), 0)
    assert data.categories == ["access", "laptop", "printer"]
    assert len(data.train) + len(data.validation) == 12 and {c.category for c in data.validation} == set(
        data.categories)  # stratified carve
    with pytest.raises(DataError, match="no column 'messages'"):
        chat.load_chats(DataSpec(source=str(path)), 0)


def test_answer_loss_matches_transformers_and_packing_keeps_chats_apart(llama_dir, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    chats = chat.load_chats(DataSpec(source=str(_tiny.toy_tickets(tmp_path / "t.jsonl", n=6))), 0).train[:3]
    encoded, _, _ = chat.encode_all(chats, tok, 48)
    with torch.no_grad():
        separate, n_sep = 0.0, 0
        for e in encoded:
            batch = {"input_ids": torch.tensor([e.input_ids]), "labels": torch.tensor([e.labels])}
            ref = model(**batch).loss * sum(x != IGNORE for x in e.labels[1:])  # HF's mean over shifted labels
            total, n = instruct.answer_loss(model, batch)
            assert torch.allclose(total, ref, atol=1e-4)
            separate, n_sep = separate + float(total), n_sep + n
        row = chat.pack(encoded, 200)
        assert len(row) == 1 and row[0]["position_ids"].count(0) == 3
        packed = instruct._pad_rows(row, tok.pad_token_id, "cpu", packed=True)
        total, n = instruct.answer_loss(model, packed)
    assert n == n_sep and abs(float(total) - separate) < 1e-3  # a leak across chats would change the loss


def test_chunked_answer_loss_gives_the_same_loss_and_gradients(llama_dir, tok, tmp_path, monkeypatch):
    """CE_CHUNK answer tokens at a time, each chunk recomputed in backward: the same loss and gradients as one
    projection of every answer token."""
    from transformers import AutoModelForCausalLM

    chats = chat.load_chats(DataSpec(source=str(_tiny.toy_tickets(tmp_path / "t.jsonl", n=6))), 0).train[:4]
    encoded, _, _ = chat.encode_all(chats, tok, 48)
    batch = instruct._pad_rows([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded],
                               tok.pad_token_id, "cpu", packed=False)

    def loss_and_grads(chunk: int):
        monkeypatch.setattr(instruct, "CE_CHUNK", chunk)
        model = AutoModelForCausalLM.from_pretrained(llama_dir)
        model.model.embed_tokens.weight.requires_grad_(False)  # as in a trial: only the blocks train here
        total, n = instruct.answer_loss(model, batch)
        total.backward()
        return total.item(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    whole, n_whole, g_whole = loss_and_grads(10_000)
    chunked, n_chunked, g_chunked = loss_and_grads(3)
    assert n_whole == n_chunked > 9  # several chunks
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert g_whole.keys() == g_chunked.keys() and len(g_whole) > 0
    for name, grad in g_whole.items():
        assert ((grad - g_chunked[name]).norm() / grad.norm()).item() < 1e-5, name  # float summation order only


def test_instruction_trial_learns_the_house_style(store, llama_dir, tmp_path, monkeypatch):
    spec = _spec(llama_dir, _tiny.toy_tickets(tmp_path / "t.jsonl", n=48))
    res = loop.run_trial(spec, spec.params, tmp_path / "t0", device="cpu")
    m = res.metrics
    assert m["loss"] < 0.5 * m["zero_shot_loss"] and m["perplexity"] == pytest.approx(2.718281828 ** m["loss"])
    assert m["routing_accuracy"] > m["zero_shot_routing_accuracy"]
    assert 0 < m["trainable_params"] < m["total_params"] and m["peak_memory_mb"] > 0
    assert json.loads((res.adapter_dir / "chat.json").read_text())["system_prompt"] == "Route the ticket."
    table = res.tables["generations.json"]
    assert table["columns"] == ["request", "category", "reference", "before", "after"] and len(table["data"]) == 3
    assert res.info["truncation"]["train"]["examples"] == 36 and res.info["categories"] == ["access", "laptop",
                                                                                              "printer"]
    # evaluated again from the saved adapter: same validation figures, and the zero-shot base beside them,
    # computed again rather than taken from the cache the trial filled
    monkeypatch.setenv("SWEEPS_ZERO_SHOT_CACHE", "0")
    again = loop.evaluate_adapter(spec, spec.params, res.adapter_dir, split="validation", device="cpu")
    assert again["loss"] == pytest.approx(m["loss"], rel=1e-4)
    assert again["zero_shot_loss"] == pytest.approx(m["zero_shot_loss"], rel=1e-4)


def test_zero_shot_figures_are_computed_once_per_base_and_change_no_trial(store, llama_dir, tmp_path, monkeypatch):
    spec = _spec(llama_dir, _tiny.toy_tickets(tmp_path / "t.jsonl", n=24), params={"epochs": 1, "rank": 4})
    calls = []
    real = instruct.InstructionTask.evaluate
    monkeypatch.setattr(instruct.InstructionTask, "evaluate", lambda self, *a, **k: calls.append(1) or real(
        self, *a, **k))
    first = loop.run_trial(spec, spec.params, tmp_path / "t0", device="cpu")
    per_miss = len(calls)
    other = spec.params.model_copy(update={"rank": 8, "target": "attention", "dropout": 0.1})
    hit = loop.run_trial(spec, other, tmp_path / "t1", device="cpu")  # another adapter, the same base
    assert len(calls) - per_miss == per_miss - 1  # the zero-shot evaluation was not run again
    zero = {k: v for k, v in first.metrics.items() if k.startswith("zero_shot_")}
    assert set(zero) == {"zero_shot_loss", "zero_shot_perplexity", "zero_shot_routing_accuracy"}
    assert {k: hit.metrics[k] for k in zero} == zero
    before = [row[3] for row in first.tables["generations.json"]["data"]]
    assert [row[3] for row in hit.tables["generations.json"]["data"]] == before
    # the same trial without the cache: the same zero-shot figures (so rank, target and dropout rightly are not
    # part of the key) and the same trained figures (skipping the evaluation changed no random draw)
    monkeypatch.setenv("SWEEPS_ZERO_SHOT_CACHE", "0")
    fresh = loop.run_trial(spec, other, tmp_path / "t2", device="cpu")
    for k, v in zero.items():
        assert fresh.metrics[k] == pytest.approx(v, rel=1e-6), k
    for k in ("loss", "routing_accuracy"):
        assert fresh.metrics[k] == pytest.approx(hit.metrics[k], rel=1e-6), k
    assert [row[4] for row in fresh.tables["generations.json"]["data"]] == \
        [row[4] for row in hit.tables["generations.json"]["data"]]
    # another quantization is another base: computed again
    monkeypatch.delenv("SWEEPS_ZERO_SHOT_CACHE")
    n = len(calls)
    loop.run_trial(spec, spec.params.model_copy(update={"quantization": "nf4"}), tmp_path / "t3", device="cpu")
    assert len(calls) - n == per_miss


def test_packed_nf4_instruction_trial_runs(store, llama_dir, tmp_path):
    spec = _spec(llama_dir, _tiny.toy_tickets(tmp_path / "t.jsonl", n=24),
                 params={"quantization": "nf4", "packing": True, "epochs": 1}, data={"generation_examples": 0})
    res = loop.run_trial(spec, spec.params, tmp_path / "t1", device="cpu")
    assert res.info["packing"] and res.metrics["base_weight_bytes"] > 0 and not res.tables
    assert res.metrics["loss"] > 0


def test_spec_needs_a_category_column_for_routing_accuracy(llama_dir, tmp_path):
    with pytest.raises(SpecError, match="data.category_column"):
        _spec(llama_dir, tmp_path / "t.jsonl", data={"category_column": None})
    with pytest.raises(SpecError, match="data.response_column"):
        _spec(llama_dir, tmp_path / "t.jsonl", data={"prompt_column": "request"})


@pytest.mark.slow
def test_instruction_sweep_end_to_end(llama_dir, tmp_path):
    """`sweep run` → Ray trials → MLflow (metrics, generations table, adapter) → `sweep promote` with the test
    split's zero-shot comparison, in subprocesses as a user runs them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    train = _tiny.toy_tickets(tmp_path / "train.jsonl", n=36, seed=1)
    test = _tiny.toy_tickets(tmp_path / "test.jsonl", n=12, seed=2)
    spec = tmp_path / "hd.yaml"
    spec.write_text(f"""name: hd_tiny
task: instruction
seed: 1
model: {{base: {llama_dir}}}
data: {{source: {train}, test: {test}, max_length: 160, generation_examples: 2, max_new_tokens: 8,
        system_prompt: Route the ticket.}}
params: {{epochs: 3, batch_size: 6, learning_rate: 2e-2, target: all-linear, bf16: "off", dropout: 0.0}}
search: {{sampler: grid, space: {{rank: [4, 8]}}}}
objectives:
  - {{metric: loss, direction: minimize}}
  - {{metric: routing_accuracy, direction: maximize}}
  - {{metric: peak_memory_mb, direction: minimize}}
budget: {{trials: 2, concurrency: 2, cpus_per_trial: 1}}
""")
    env = {**os.environ, "SWEEPS_STORE": str(tmp_path / "store"), "SWEEPS_CACHE": str(tmp_path / "cache")}
    sweep = Path(sys.executable).parent / "sweep"

    def run(*args):
        proc = subprocess.run([str(sweep), *args], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout

    run("run", str(spec), "--no-live")
    out = run("promote", "hd_tiny", "--name", "hd-tiny", "--policy", "min:loss")
    assert "routing_accuracy=" in out and "zero_shot_loss=" in out, out
    code = """
import json
from sweeps.tracking.tracker import Tracker
t = Tracker()
recs = t.trial_records("hd_tiny")
names = [[f.path for f in t.client.list_artifacts(r.run_id)] for r in recs]
v = t.version_info("hd-tiny", "champion")
print(json.dumps({"states": [r.state for r in recs], "artifacts": names, "tags": v["tags"],
                  "metrics": [r.metrics for r in recs]}))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["states"] == ["COMPLETE", "COMPLETE"]
    assert all("generations.json" in a and "adapter" in a for a in state["artifacts"])
    assert all(m["loss"] < m["zero_shot_loss"] for m in state["metrics"])
    tags = state["tags"]
    assert float(tags["test.loss"]) < float(tags["test.zero_shot_loss"])
