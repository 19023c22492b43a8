"""One trial: load the base (quantized per params), apply PEFT, train, evaluate, measure.

Knows nothing of Ray, Optuna or MLflow: the caller hands in `report(metrics)` (called once per epoch with every
objective-able metric, so an early-stopping rule can compare trials at a rung) and gets a TrialResult back.

    python -c "from sweeps.spec import load_spec; from sweeps.trial.loop import run_trial; ..."

The training loop itself is train.py; the task (batches, loss, metrics) comes from sweeps/trial/tasks.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sweeps.spec import SweepSpec
from sweeps.spec.params import TrialParams
from sweeps.trial import probe
from sweeps.trial.adapters import disk, lora
from sweeps.trial.memory import meter, reuse
from sweeps.trial.memory.meter import PeakMemory
from sweeps.trial.models import precision, pretrained
from sweeps.trial.tasks.classify import ClassificationTask
from sweeps.trial.train import TrialFailed, check_memory, train


@dataclass
class TrialResult:
    metrics: dict[str, float]
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    # name -> {"columns": [...], "data": [[...], ...]}: logged to the trial's run as MLflow tables
    tables: dict[str, dict] = field(default_factory=dict)


# ---------------------------------------------------------------- setup helpers


def pick_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _set_threads() -> int:
    # Ray sets OMP_NUM_THREADS to the trial's CPUs; torch reads it only at start-up, so apply it explicitly.
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        torch.set_num_threads(int(value))
    return torch.get_num_threads()


def _bound_kernel_cache() -> None:
    # oneDNN (the bf16 matmuls of AVX512-BF16/AMX CPUs) keeps a primitive per GEMM shape, up to 1024; length-
    # bucketed batches bring many shapes, and on SmolLM2 that cache grew by ~600 MB inside a worker's first trial,
    # in its measured peak and not in its later trials'. oneDNN reads this when it builds its first primitive.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")


def use_bf16(params: TrialParams, device: str) -> bool:
    if params.bf16 == "auto":
        return precision.detect_bf16(device)
    return params.bf16 == "on"


# ---------------------------------------------------------------- entry points


def make_task(spec: SweepSpec, params: TrialParams, tokenizer, splits: tuple[str, ...] = ("validation",),
          fold: int | None = None):
    if spec.task == "instruction":
        # imported late to keep this module's import light
        from sweeps.trial.tasks.instruct import InstructionTask

        return InstructionTask(spec, params, tokenizer, splits)
    task = ClassificationTask(spec, params, tokenizer, fold)
    for split in splits:
        if split not in task.splits:
            raise ValueError(f"split {split!r} not available; have {', '.join(sorted(task.splits))}")
    return task


def load_model(spec: SweepSpec, params: TrialParams, base, tokenizer, task, device: str,
               peak: PeakMemory | None = None):
    if peak is None:  # evaluation, export: a model of its own
        model = pretrained.load_base(base, spec.task, task.num_labels, params, device, spec.model.revision)
    else:  # a trial: this worker's base from its last trial, made as if freshly loaded, and charged to `peak`
        model = reuse.base_for_trial(base, spec.task, task.num_labels, params, device, spec.model.revision, peak)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _probe_for(spec: SweepSpec, params: TrialParams, model, task, device: str, base):
    """(head name, linear probe) when the trial warm-starts its head (head_init: probe), else None."""
    if params.head_init != "probe" or spec.task != "classification":
        return None
    head = probe.head_module(model)
    if head is None:
        raise TrialFailed(f"head_init=probe: {type(model).__name__} has no linear classifier/score head")
    name = "classifier" if getattr(model, "classifier", None) is head else "score"
    return name, probe.compute(model, task, device, task.probe_parts(params, pretrained.content_hash(base)),
                               bf16=use_bf16(params, device))


def run_trial(spec: SweepSpec, params: TrialParams, out_dir: Path,
              report: Callable[[dict], None] | None = None, device: str | None = None,
              fold: int | str | None = None) -> TrialResult:
    """Train and evaluate one configuration. With `data.folds` (classification) this is K fits and a refit
    (crossval.py); `fold` is then the fit to run: 0..K-1, or "all" for the refit on every training row."""
    if spec.data.folds and spec.task == "classification" and fold is None:
        from sweeps.trial import crossval

        return crossval.run(spec, params, Path(out_dir), report, device)
    device = pick_device(device)
    threads = _set_threads()
    _bound_kernel_cache()
    seed_everything(spec.seed)
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, spec.model.revision)
    task = make_task(spec, params, tokenizer, fold=None if fold == "all" else fold)
    bf16 = use_bf16(params, device)
    pretrained.warm_imports(base, spec.task, params)
    stats = {"tokens": 0, "train_seconds": 0.0}
    extra: dict[str, float] = {}
    with PeakMemory(device) as pm:
        model = load_model(spec, params, base, tokenizer, task, device, peak=pm)
        stats["base_weight_bytes"] = precision.weight_bytes(model)
        check_memory(params, pm, "after loading the base")
        classify = spec.task == "classification"
        shared = task.prefix_file(pretrained.content_hash(base), bf16, device) if classify else None
        if classify and task.prefill(model, bf16, shared):
            # A worker's first trial computed the frozen-prefix rows (platform work, kept for its later trials):
            # measure from here, the base charged as in a reused worker, so first and later trials compare.
            meter.trim()
            pm.restart()
            reuse.charge_again(pm)
        probe_head = _probe_for(spec, params, model, task, device, base)
        model = lora.apply_peft(model, params, spec.task, task.num_labels)
        if probe_head is not None:  # LP-FT: the trained head copy starts from the probe, the base keeps its own
            probe.init_head(lora.trained_head(model, probe_head[0]), probe_head[1])
        n_trainable, stats["total_params"] = lora.trainable_params(model)
        if spec.task == "instruction":  # the untuned base, computed once per base and quantization (baseline)
            zero, before = task.zero_shot(model, device, bf16, base,
                                          generations=bool(spec.data.generation_examples))
            extra = {f"zero_shot_{k}": v for k, v in zero.items()}
        history = train(model, task, params, spec, device, bf16, pm, report, stats)
    check_memory(params, pm, "at the end of training")
    adapter_dir = disk.save_adapter(model, Path(out_dir) / "adapter")
    task.save_extras(adapter_dir)
    tables = {}
    if spec.task == "instruction" and spec.data.generation_examples:
        tables["generations.json"] = task.table(before, task.generations(model, device))
    target_modules = lora.target_names(model)
    if fold not in (None, "all"):  # a cross-validation fit: its out-of-fold predictions, in row order
        tables["predictions"] = dict(zip(("y_true", "y_pred"), task.predict(model, device, bf16), strict=True))
    reuse.release(model)  # the base waits for this worker's next trial; a failed trial's is cleaned up then
    final = history[stats["best_epoch"] - 1]
    metrics = {k: float(final[k]) for k in task.metric_keys if k in final}
    metrics["best_epoch"] = float(stats["best_epoch"])
    metrics.update(extra, peak_memory_bytes=float(pm.peak_bytes), peak_memory_mb=pm.peak_mb,
                   base_weight_bytes=float(stats["base_weight_bytes"]), trainable_params=float(n_trainable),
                   total_params=float(stats["total_params"]), train_seconds=stats["train_seconds"],
                   tokens_per_second=stats["tokens"] / max(stats["train_seconds"], 1e-9),
                   epochs_run=float(len(history)))
    info = {"memory_method": pm.method, "device": device, "bf16": bf16, "torch_threads": threads,
            "train_tokens": stats["tokens"], "heap_trims": stats["heap_trims"], "base": str(base),
            "base_sha256": pretrained.content_hash(base), "target_modules": target_modules, **task.info()}
    return TrialResult(metrics=metrics, adapter_dir=adapter_dir, history=history, info=info, tables=tables)


def evaluate_adapter(spec: SweepSpec, params: TrialParams, adapter_dir: Path, split: str = "test",
                     device: str | None = None) -> dict[str, float]:
    """Base (same quantization) + saved adapter, evaluated once on `split` (the held-out test by default).

    For the instruction task the base model's zero-shot figures on the same split come with it (zero_shot_*),
    so a promotion reports whether tuning beat the untuned model.
    """
    device = pick_device(device)
    _set_threads()
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, spec.model.revision)
    task = make_task(spec, params, tokenizer, (split,))
    labels_file = Path(adapter_dir) / "labels.json"
    if spec.task == "classification" and labels_file.is_file() and json.loads(labels_file.read_text()) != \
            task.data.labels:
        raise ValueError(f"{adapter_dir} was trained on labels {labels_file.read_text()}, data has "
                         f"{task.data.labels}")
    model = disk.load_adapter(load_model(spec, params, base, tokenizer, task, device), adapter_dir)
    bf16 = use_bf16(params, device)
    metrics = task.evaluate(model, device, bf16, split)
    if spec.task == "instruction":
        zero, _ = task.zero_shot(model, device, bf16, base, split)
        metrics.update({f"zero_shot_{k}": v for k, v in zero.items()})
    return metrics
