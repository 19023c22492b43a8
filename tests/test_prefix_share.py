"""Frozen-prefix features shared through the store (prefix.save / prefix.load, ClassificationTask.prefix_file): the
driver computes them once beside the linear probe, each worker reads them instead of computing them on its one
core, and a trial on rows it read trains as on rows it computed."""

from __future__ import annotations

from pathlib import Path

import _tiny
import pytest
import torch

from sweeps.spec import load_spec
from sweeps.trial import loop
from sweeps.trial.memory import prefix, prefix_store, reuse
from sweeps.trial.models import pretrained


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPS_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("SWEEPS_PREFIX_SHARE", raising=False)
    model = _tiny.tiny_bert(tmp_path / "bert")  # 2 blocks: upper-half adapts block 1; block 0 is the frozen prefix
    text = _tiny.tiny_sweep_yaml("share", model, _tiny.toy_reviews(tmp_path / "train.csv", n=60),
                                 _tiny.toy_reviews(tmp_path / "test.csv", n=30, seed=1), epochs=1)
    text = text.replace('bf16: "off"}', 'bf16: "off", layers: upper-half, target: attention}')
    path = tmp_path / "share.yaml"
    path.write_text(text)
    reuse.drop()
    yield load_spec(path)
    reuse.drop()


def _task_and_model(spec):
    params = spec.trial_params()
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, None)
    task = loop.make_task(spec, params, tokenizer)
    model = loop.load_model(spec, params, base, tokenizer, task, "cpu")
    return task, model, base


def _rows(task):
    return [ids for split in ("train", "validation") for ids in task.splits[split]["input_ids"]]


def test_a_trial_fills_before_peft_freezes_the_base(spec):
    """The base's parameters still ask for gradients before PEFT wraps it: without the trial's promise (frozen)
    fill computes nothing, and the rows would be computed inside the first epoch instead."""
    task, model, _ = _task_and_model(spec)
    assert any(p.requires_grad for p in model.parameters())
    assert prefix.attach(model, 1)
    assert prefix.fill(model, _rows(task)) == 0
    distinct = len({torch.as_tensor(r).numpy().tobytes() for r in _rows(task)})
    assert prefix.fill(model, _rows(task), frozen=True) == distinct == len(prefix.cache_of(model).rows) > 10


def test_saved_rows_load_bitwise_and_only_at_their_depth(spec, tmp_path):
    task, model, _ = _task_and_model(spec)
    prefix.attach(model, 1)
    prefix.fill(model, _rows(task), frozen=True)
    path = tmp_path / "rows.safetensors"
    written = prefix_store.save(model, _rows(task), path)
    assert written == len(prefix.cache_of(model).rows)
    _, other, _ = _task_and_model(spec)
    prefix.attach(other, 1)
    assert prefix_store.load(other, path) == written
    mine, theirs = prefix.cache_of(model).rows, prefix.cache_of(other).rows
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    from safetensors.torch import load_file, save_file

    deeper = tmp_path / "deeper.safetensors"  # features after block 1 are not features after block 0
    save_file(load_file(str(path)), str(deeper), metadata={"blocks": "2"})
    _, fresh, _ = _task_and_model(spec)
    prefix.attach(fresh, 1)
    assert prefix_store.load(fresh, deeper) == 0 and not prefix.cache_of(fresh).rows
    path.write_bytes(path.read_bytes()[:100])  # truncated: computed instead, never a crash
    assert prefix_store.load(fresh, path) == 0 and not prefix.cache_of(fresh).rows


def test_the_driver_writes_the_rows_and_a_trial_reads_them_with_the_same_result(spec, tmp_path, monkeypatch):
    from sweeps.driver import prepare

    computed: list[int] = []
    real = prefix._compute
    monkeypatch.setattr(prefix, "_compute", lambda owner, blocks, ids: computed.append(len(ids)) or
                        real(owner, blocks, ids))
    task, _, base = _task_and_model(spec)
    shared = task.prefix_file(pretrained.content_hash(base), False, "cpu")
    assert not shared.exists()
    prepare.baselines(spec)
    assert shared.is_file() and computed  # the driver computed them (and the probe's test rows)
    computed.clear()
    reused = loop.run_trial(spec, spec.trial_params({"rank": 4}), tmp_path / "t0")
    assert computed == []  # every training and validation row came from the file
    reuse.drop()
    monkeypatch.setenv("SWEEPS_PREFIX_SHARE", "0")
    own = loop.run_trial(spec, spec.trial_params({"rank": 4}), tmp_path / "t1")
    distinct = {torch.as_tensor(r).numpy().tobytes() for r in _rows(task)}
    assert sum(computed) == len(distinct)  # without sharing the trial computes each row itself, once
    for key in ("loss", "macro_f1", "accuracy"):
        assert reused.metrics[key] == pytest.approx(own.metrics[key], abs=1e-5), key


def test_the_share_key_follows_what_the_features_depend_on(spec):
    task, _, base = _task_and_model(spec)
    h = pretrained.content_hash(base)
    path = task.prefix_file(h, False, "cpu")
    assert path == task.prefix_file(h, False, "cpu") and Path(path).suffix == ".safetensors"
    assert len({path, task.prefix_file(h, True, "cpu"), task.prefix_file("other", False, "cpu")}) == 3
    other = loop.make_task(spec, spec.trial_params({"layers": "all"}), task.tokenizer)
    assert other.prefix_file(h, False, "cpu") != path


def test_a_reused_workers_later_trial_does_not_read_the_file_again(spec, tmp_path, monkeypatch):
    from sweeps.driver import prepare
    from sweeps.trial.memory import prefix_store

    prepare.baselines(spec)  # writes the shared rows
    reads: list[int] = []
    real = prefix_store.load
    monkeypatch.setattr(prefix_store, "load", lambda model, path: reads.append(1) or real(model, path))
    loop.run_trial(spec, spec.trial_params({"rank": 4}), tmp_path / "t0")
    assert reads == [1]  # the worker's first trial reads the file
    loop.run_trial(spec, spec.trial_params({"rank": 8}), tmp_path / "t1")
    assert reads == [1]  # its second finds every row in the kept base's cache
