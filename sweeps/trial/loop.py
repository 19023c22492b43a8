"""One trial: load the base (quantized per params), apply PEFT, train, evaluate, measure.

Knows nothing of Ray, Optuna or MLflow: the caller hands in `report(metrics)` (called once per epoch with every
objective-able metric, so an early-stopping rule can compare trials at a rung) and gets a TrialResult back.

    python -c "from sweeps.spec import load_spec; from sweeps.trial import run_trial; ..."
"""

from __future__ import annotations

import json
import os
import random
import time
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
from sweeps.trial.tasks.classify import ClassificationTask, length_batches


class TrialFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TrialInfeasible(TrialFailed):
    """The measured peak memory exceeded params.max_memory_mb."""


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


def _use_bf16(params: TrialParams, device: str) -> bool:
    if params.bf16 == "auto":
        return precision.detect_bf16(device)
    return params.bf16 == "on"

# ---------------------------------------------------------------- training


def _lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(round(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _check_memory(params: TrialParams, pm: PeakMemory, where: str) -> None:
    if params.max_memory_mb is not None and pm.peak_mb > params.max_memory_mb:
        raise TrialInfeasible(f"measured peak memory {pm.peak_mb:.1f} MB exceeds max_memory_mb "
                              f"{params.max_memory_mb:g} MB ({where}; {pm.method})")

def _optimizer(model, params: TrialParams, total_steps: int):
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = lora.head_parameters(model)  # the fully trained head copies get their own learning rate
    head_ids = {id(p) for p in head}
    groups = [{"params": [p for p in trainable if id(p) not in head_ids], "lr": params.learning_rate}]
    if head:
        groups.append({"params": head, "lr": params.learning_rate * params.head_lr_ratio})
    optimizer = torch.optim.AdamW(groups, lr=params.learning_rate, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, params.warmup_ratio))
    return trainable, optimizer, scheduler


def _train(model, task, params, spec, device, bf16, pm, report, stats) -> list[dict]:
    rng = np.random.default_rng(spec.seed)
    steps_per_epoch = sum(1 for _ in task.train_batches(np.random.default_rng(spec.seed), "cpu", length_batches))
    trainable, optimizer, scheduler = _optimizer(model, params, steps_per_epoch * params.epochs)
    n_trainable, _ = lora.trainable_params(model)
    device_type = torch.device(device).type
    # batches of many lengths fragment glibc's heap: hand grown free pages back (SWEEPS_TRIM_HEAP=0: never)
    heap = meter.HeapGuard() if device_type == "cpu" and os.environ.get("SWEEPS_TRIM_HEAP", "1") != "0" else None
    history: list[dict] = []
    best: tuple[float, int, dict] | None = None  # (score, epoch, trainable weights) when params.restore_best
    t0 = time.perf_counter()
    for epoch in range(1, params.epochs + 1):
        model.train()
        loss_sum, n_batches = 0.0, 0
        for step, batch in enumerate(task.train_batches(rng, device, length_batches), start=1):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                loss, tokens = task.loss(model, batch)
            if not torch.isfinite(loss):
                kind = "nan" if torch.isnan(loss) else "inf"
                raise TrialFailed(f"loss became {kind} at epoch {epoch} step {step} "
                                  f"(lr={scheduler.get_last_lr()[0]:.3g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if heap is not None:
                heap.step()
            loss_sum += loss.item()
            n_batches += 1
            stats["tokens"] += tokens
        stats["train_seconds"] = time.perf_counter() - t0
        stats["heap_trims"] = heap.trims if heap is not None else 0
        metrics = task.evaluate(model, device, bf16) if getattr(task, "has_validation", True) else {}
        t0 = time.perf_counter() - stats["train_seconds"]  # evaluation time is not training time
        row = {"epoch": epoch, **metrics, "train_loss": loss_sum / max(1, n_batches),
               "peak_memory_bytes": pm.peak_bytes, "peak_memory_mb": pm.peak_mb,
               "base_weight_bytes": stats["base_weight_bytes"], "trainable_params": n_trainable,
               "total_params": stats["total_params"], "train_seconds": stats["train_seconds"],
               "tokens_per_second": stats["tokens"] / max(stats["train_seconds"], 1e-9)}
        history.append(row)
        if report is not None:
            report(dict(row))
        _check_memory(params, pm, f"after epoch {epoch}")
        if params.restore_best and metrics:
            score = metrics["macro_f1"] if "macro_f1" in metrics else -metrics["loss"]
            if best is None or score > best[0]:
                # only the trainable tensors (adapter + head): a few MB at most, charged to the trial like the rest
                best = (score, epoch, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    if best is not None and best[1] != params.epochs:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best[2]:
                    p.copy_(best[2][n])
    stats["best_epoch"] = best[1] if best is not None else len(history)
    return history


# ---------------------------------------------------------------- entry points


def make_task(spec: SweepSpec, params: TrialParams, tokenizer, splits: tuple[str, ...] = ("validation",),
          fold: int | None = None):
    if spec.task == "instruction":
        from sweeps.trial.tasks.instruct import (
            InstructionTask,  # torch-only module; imported late to keep this one's import light
        )

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
    return name, probe.compute(model, task, device, task.probe_parts(params, pretrained.content_hash(base)))


def run_trial(spec: SweepSpec, params: TrialParams, out_dir: Path,
              report: Callable[[dict], None] | None = None, device: str | None = None,
              fold: int | str | None = None) -> TrialResult:
    """Train and evaluate one configuration. With `data.folds` (classification) this is K fits and a refit
    (sweeps.crossval); `fold` is then the fit to run: 0..K-1, or "all" for the refit on every training row."""
    if spec.data.folds and spec.task == "classification" and fold is None:
        from sweeps.trial import crossval

        return crossval.run(spec, params, Path(out_dir), report, device)
    device = pick_device(device)
    threads = _set_threads()
    seed_everything(spec.seed)
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, spec.model.revision)
    task = make_task(spec, params, tokenizer, fold=None if fold == "all" else fold)
    bf16 = _use_bf16(params, device)
    pretrained.warm_imports(base, spec.task, params)
    stats = {"tokens": 0, "train_seconds": 0.0}
    extra: dict[str, float] = {}
    with PeakMemory(device) as pm:
        model = load_model(spec, params, base, tokenizer, task, device, peak=pm)
        stats["base_weight_bytes"] = precision.weight_bytes(model)
        _check_memory(params, pm, "after loading the base")
        probe_head = _probe_for(spec, params, model, task, device, base)
        model = lora.apply_peft(model, params, spec.task, task.num_labels)
        if probe_head is not None:  # LP-FT: the trained head copy starts from the probe, the base keeps its own
            probe.init_head(lora.trained_head(model, probe_head[0]), probe_head[1])
        n_trainable, stats["total_params"] = lora.trainable_params(model)
        if spec.task == "instruction":  # the untuned base, computed once per base and quantization (baseline)
            zero, before = task.zero_shot(model, device, bf16, base,
                                          generations=bool(spec.data.generation_examples))
            extra = {f"zero_shot_{k}": v for k, v in zero.items()}
        history = _train(model, task, params, spec, device, bf16, pm, report, stats)
    _check_memory(params, pm, "at the end of training")
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
    bf16 = _use_bf16(params, device)
    metrics = task.evaluate(model, device, bf16, split)
    if spec.task == "instruction":
        zero, _ = task.zero_shot(model, device, bf16, base, split)
        metrics.update({f"zero_shot_{k}": v for k, v in zero.items()})
    return metrics
