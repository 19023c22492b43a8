"""The warm-up before a trial's measured training (sweeps/trial/train.py): which batch shapes it runs, and that it
never changes what the trial learns."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sweeps.trial import loop, train
from sweeps.trial.adapters import lora
from sweeps.trial.models import pretrained
from tests.test_trial import make_spec, store, tiny_csv, tiny_model_dir  # noqa: F401 - fixtures


def _task_and_model(spec, adapter: bool = False):
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, spec.model.revision)
    task = loop.make_task(spec, spec.params, tokenizer)
    model = loop.load_model(spec, spec.params, base, tokenizer, task, "cpu")
    if adapter:  # as run_trial does before the warm-up
        model = lora.apply_peft(model, spec.params, spec.task, task.num_labels)
    return task, model


def test_every_new_shape_is_warmed_once_per_process_and_the_longest_always(store, tiny_model_dir, tiny_csv,
                                                                           monkeypatch):
    spec = make_spec(tiny_model_dir, tiny_csv)
    task, model = _task_and_model(spec)
    monkeypatch.setattr(train, "_LOCAL", threading.local())
    monkeypatch.setenv("SWEEPS_WARM_SHAPES", "all")
    batches = list(task.train_batches(np.random.default_rng(0), "cpu", train.length_batches))
    shapes = {tuple(b["input_ids"].shape) for b in batches}
    assert len(shapes) > 2  # the tiny data has several lengths: the test means something
    first = train._warm_batches(model, task, "cpu", bf16=False)
    assert {tuple(b["input_ids"].shape) for b in first} == shapes and len(first) == len(shapes)
    longest = max(b["input_ids"].numel() for b in batches)
    assert first[0]["input_ids"].numel() == longest
    train._warmed().update(train._shape_key(model, b, train._adapter_shapes(model)) for b in first)
    again = train._warm_batches(model, task, "cpu", bf16=False)  # the worker's next trial: shapes known
    assert len(again) == 1 and again[0]["input_ids"].numel() == longest
    monkeypatch.setattr(train, "_LOCAL", threading.local())
    monkeypatch.setattr(train, "_MAX_NEW_SHAPES", 2)  # bounded per trial: the longest and the 2 largest new ones
    capped = train._warm_batches(model, task, "cpu", bf16=False)
    largest = sorted({tuple(b["input_ids"].shape): b["input_ids"].numel() for b in batches}.values())[-3:]
    assert len(capped) == 3 and capped[0]["input_ids"].numel() == longest
    assert sorted(b["input_ids"].numel() for b in capped) == largest
    monkeypatch.setattr(train, "_MAX_NEW_SHAPES", 32)
    monkeypatch.setenv("SWEEPS_WARM_SHAPES", "longest")
    monkeypatch.setattr(train, "_LOCAL", threading.local())
    assert len(train._warm_batches(model, task, "cpu", bf16=False)) == 1
    monkeypatch.setenv("SWEEPS_WARM_SHAPES", "auto")  # auto: every shape only where AMX runs bf16
    monkeypatch.setattr(train.precision, "has_amx", lambda: True)
    assert len(train._warm_batches(model, task, "cpu", bf16=False)) == 1
    assert len(train._warm_batches(model, task, "cpu", bf16=True)) == len(shapes)
    monkeypatch.setattr(train.precision, "has_amx", lambda: False)
    assert len(train._warm_batches(model, task, "cpu", bf16=True)) == 1


def test_a_new_rank_warms_every_shape_again(store, tiny_model_dir, tiny_csv, monkeypatch):
    """A reused worker's trial at another rank runs products of new shapes (LoRA's A and B): measured on the movie
    reviews (MiniLM, AMX), a rank-2 trial after a rank-32 one peaked at 316 MB against 268-279 without it."""
    monkeypatch.setattr(train, "_LOCAL", threading.local())
    monkeypatch.setenv("SWEEPS_WARM_SHAPES", "all")
    spec = make_spec(tiny_model_dir, tiny_csv)
    task, model = _task_and_model(spec, adapter=True)
    first = train._warm_batches(model, task, "cpu", bf16=False)
    rank4 = train._adapter_shapes(model)
    train._warmed().update(train._shape_key(model, b, rank4) for b in first)
    assert len(train._warm_batches(model, task, "cpu", bf16=False)) == 1  # same rank: the shapes are known
    _, model = _task_and_model(make_spec(tiny_model_dir, tiny_csv, rank=2), adapter=True)  # another rank
    assert train._adapter_shapes(model) != rank4
    assert len(train._warm_batches(model, task, "cpu", bf16=False)) == len(first)  # every shape, not the longest


def test_another_thread_warms_every_shape_again(store, tiny_model_dir, tiny_csv, monkeypatch):
    """A reused Ray worker runs each trial in a new thread, and AMX's per-shape state is the thread's."""
    monkeypatch.setattr(train, "_LOCAL", threading.local())
    monkeypatch.setenv("SWEEPS_WARM_SHAPES", "all")
    task, model = _task_and_model(make_spec(tiny_model_dir, tiny_csv), adapter=True)
    first = train._warm_batches(model, task, "cpu", bf16=False)
    train._warmed().update(train._shape_key(model, b, train._adapter_shapes(model)) for b in first)
    assert len(train._warm_batches(model, task, "cpu", bf16=False)) == 1  # this thread: known
    seen = []
    worker = threading.Thread(target=lambda: seen.append(len(train._warm_batches(model, task, "cpu", bf16=False))))
    worker.start()
    worker.join()
    assert seen == [len(first)]


def test_warming_every_shape_leaves_the_trial_unchanged(store, tiny_model_dir, tiny_csv, tmp_path, monkeypatch):
    spec = make_spec(tiny_model_dir, tiny_csv)
    results = {}
    for mode in ("longest", "all"):
        monkeypatch.setenv("SWEEPS_WARM_SHAPES", mode)
        monkeypatch.setattr(train, "_LOCAL", threading.local())
        results[mode] = loop.run_trial(spec, spec.params, tmp_path / mode, device="cpu").metrics
    for key in ("macro_f1", "accuracy", "loss"):
        assert results["all"][key] == pytest.approx(results["longest"][key], abs=1e-9)
