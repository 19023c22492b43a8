"""The training loop of a trial: AdamW with a warmed-up, linearly decaying learning rate (the head at its own
rate), bf16 autocast where the hardware has it, gradient clipping, evaluation and a report after every epoch, the
measured memory limit checked as it goes, and the best epoch's weights kept when asked.

A trial that cannot finish ends with `TrialFailed` (its reason is the run's failure reason), or `TrialInfeasible`
when its measured peak memory is over `max_memory_mb`: the sweep marks it so and carries on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from sweeps.spec.params import TrialParams
from sweeps.trial.adapters import lora
from sweeps.trial.memory import meter
from sweeps.trial.memory.meter import PeakMemory
from sweeps.trial.models import precision
from sweeps.trial.tasks.classify import length_batches


class TrialFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TrialInfeasible(TrialFailed):
    """The measured peak memory exceeded params.max_memory_mb."""


def _lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(round(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def check_memory(params: TrialParams, pm: PeakMemory, where: str) -> None:
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


# (model kind, adapter, batch shape) this *thread* has already trained (_warm_batches): the state AMX keeps per
# shape is the thread's, and a reused Ray worker runs each trial in a new thread.
_LOCAL = threading.local()


def _warmed() -> set[tuple]:
    if not hasattr(_LOCAL, "shapes"):
        _LOCAL.shapes = set()
    return _LOCAL.shapes

_MAX_NEW_SHAPES = 32  # per trial, the largest first; rank_study has 18


def _shape_key(model, batch: dict, adapter: tuple) -> tuple:
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None), getattr(config, "hidden_size", None), adapter,
            tuple(batch["input_ids"].shape))


def _adapter_shapes(model) -> tuple:
    """The shapes of what the trial trains (LoRA's A and B at its rank, on the targeted modules; the head): with the
    batch shape they decide the shapes of the products a step runs, so a new rank or target means new ones."""
    return tuple(sorted({tuple(p.shape) for p in model.parameters() if p.requires_grad}))


def _warm_batches(model, task, device: str, bf16: bool, adapter: tuple | None = None) -> list[dict]:
    """The longest training batch, plus, where AMX runs the bf16 products, every batch shape this thread has
    not trained yet with this adapter (`adapter`: _adapter_shapes(model), computed when not given).

    With AMX the process keeps state per GEMM shape that its later trials reuse (not oneDNN's primitive cache: at
    capacity 8 the same). Measured on rank_study's trial (SmolLM2, 1 epoch, 3 trials in one process, AMX Xeon): the
    first trial's peak grew over its first epoch as new batch shapes came, 5-10 % above the later trials'; with
    all 18 shapes warmed it measured 1625 / 1637 / 1631 MB. A worker pays for each shape once (~1 s a shape on
    SmolLM2); its later trials on the same data find every shape warmed, unless they train another adapter
    shape (another rank or target) or run in another thread. Measured on the movie reviews (MiniLM): a rank-2 trial
    after a rank-32 one measured 316 MB against 268-279 before the key held the adapter, 280 after; the same
    configuration three times, each in a new thread as a reused Ray worker runs its trials, 264 / 335 / 335 MB
    while the warmed shapes were the process's. SWEEPS_WARM_SHAPES=all / longest overrides the choice (auto: all
    where AMX and bf16 are in use)."""
    adapter = _adapter_shapes(model) if adapter is None else adapter
    shapes: dict[tuple, dict] = {}  # one batch per shape (length-bucketed: on up to ~800 rows every epoch has
    for b in task.train_batches(np.random.default_rng(0), device, length_batches):  # the same shapes)
        shapes.setdefault(_shape_key(model, b, adapter), b)
    longest = max(shapes.values(), key=lambda b: b["input_ids"].numel())
    mode = os.environ.get("SWEEPS_WARM_SHAPES", "auto")
    if mode == "longest" or (mode == "auto" and not (bf16 and precision.has_amx())):
        return [longest]
    new = [b for key, b in shapes.items() if key not in _warmed() and b is not longest]
    # bounded: a large data set has a shape per width, and the warm-up must stay a small part of a first trial
    return [longest, *sorted(new, key=lambda b: -b["input_ids"].numel())[:_MAX_NEW_SHAPES]]


def _warm_up(model, task, device: str, bf16: bool, pm: PeakMemory) -> None:
    """Forward and backward of the longest training batch (and of new batch shapes: _warm_batches), undone, then
    the measurement restarts (CPU).

    A worker's first trial otherwise also paid for what its process keeps for every later trial (kernel
    primitives, runtime buffers, heap arenas): on SmolLM2 its peak was 15 % above the same configuration's in
    the worker's second and third trials, which agreed within 2 %. The RNG is forked and the gradients dropped,
    so training is exactly what it would have been; the trial's own bytes (base, adapter) are charged again."""
    from sweeps.trial.memory import reuse

    adapter = _adapter_shapes(model)
    with torch.random.fork_rng(devices=[]):
        for batch in _warm_batches(model, task, device, bf16, adapter):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = task.loss(model, batch)
            loss.backward()
            model.zero_grad(set_to_none=True)
            _warmed().add(_shape_key(model, batch, adapter))
    del loss, batch
    meter.trim()
    pm.restart()
    reuse.charge_again(pm)
    pm.charge(sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad))


def train(model, task, params, spec, device, bf16, pm, report, stats) -> list[dict]:
    if torch.device(device).type == "cpu" and os.environ.get("SWEEPS_WARM_UP", "1") != "0":
        _warm_up(model, task, device, bf16, pm)
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
        check_memory(params, pm, f"after epoch {epoch}")
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
