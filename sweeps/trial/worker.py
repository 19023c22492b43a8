"""What one Ray worker does for one trial, free of ray and mlflow so it runs the same in `sweep trial`.

Failures the trial understands (NaN loss, over the memory limit) come back as a FAILED result with a reason;
only a crash of the process itself reaches Ray as an error (and may be retried there).
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable
from typing import Any

from sweeps import store
from sweeps.spec import SweepSpec
from sweeps.spec.params import TrialParams


def release_memory() -> None:
    """Give freed heap pages back to the OS so this process's next measured peak starts from a clean base.

    Ray reuses one worker process for many trials; glibc otherwise keeps freed pages mapped and a trial would
    reuse them without its resident memory growing. The base model the worker keeps for its next trial
    (sweeps.reuse) stays; it is charged to each trial that uses it.
    """
    from sweeps.trial.memory.meter import trim

    trim()


def check_targets(spec: SweepSpec, model: Any, resolve: Callable) -> None:
    """Every target group x layer range the sweep can sample must exist in the model (else: TargetError now)."""
    space = spec.search.space
    targets = space["target"].choices if "target" in space and hasattr(space["target"], "choices") else [
        spec.params.target]
    layers = space["layers"].choices if "layers" in space and hasattr(space["layers"], "choices") else [
        spec.params.layers]
    for target in targets:
        for layer in layers:
            resolve(model, target, layer)


def trial_params(spec: SweepSpec, sampled: dict[str, Any]) -> TrialParams:
    """The spec's fixed params overridden by the sampled point, validated again as one object."""
    return TrialParams(**{**spec.params.model_dump(), **sampled})


def run_one(spec_dict: dict, number: int, sampled: dict[str, Any], report: Callable[[dict], None],
            threads: int | None = None) -> dict[str, Any]:
    import torch

    from sweeps.trial.loop import TrialFailed, TrialInfeasible, run_trial

    if threads:
        torch.set_num_threads(threads)
    release_memory()
    spec = SweepSpec.model_validate(spec_dict)
    out_dir = store.trial_dir(spec.name, number)
    started = time.time()
    try:
        result = run_trial(spec, trial_params(spec, sampled), out_dir, report=report)
    except TrialInfeasible as exc:
        return {"state": "FAILED", "reason": f"infeasible: {exc.reason}", "infeasible": True,
                "wall_seconds": time.time() - started}
    except TrialFailed as exc:
        return {"state": "FAILED", "reason": exc.reason, "wall_seconds": time.time() - started}
    except Exception as exc:
        # Deterministic failures of this configuration end the trial here, with the reason. Raised on, they
        # reached Ray as a worker crash: retried budget.max_retries times (the same allocation failing again),
        # then FAILED as "worker failed" and not marked infeasible (tests/faults, OOM and store full).
        if _out_of_memory(exc):
            return {"state": "FAILED", "reason": f"infeasible: out of memory: {str(exc).strip()[:300]}",
                    "infeasible": True, "wall_seconds": time.time() - started}
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return {"state": "FAILED", "reason": f"store full while writing the trial's files: {exc}",
                    "wall_seconds": time.time() - started}
        raise
    tables = None
    if result.tables:
        tables = out_dir / "tables"
        tables.mkdir(parents=True, exist_ok=True)
        for name, table in result.tables.items():
            (tables / name).write_text(json.dumps(table), encoding="utf-8")
    return {**result.metrics, "state": "COMPLETE", "adapter_dir": str(result.adapter_dir),
            "wall_seconds": time.time() - started, "tables_dir": str(tables) if tables else None,
            **{f"info.{k}": v for k, v in result.info.items() if isinstance(v, (str, int, float, bool))}}


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; torch's CPU allocator a RuntimeError; Python a MemoryError."""
    text = str(exc).lower()
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)))


def prepare(spec: SweepSpec) -> dict[str, Any]:
    """Convert/cache the base model and tokenize the data once, in the driver, before any trial starts.

    Trials then only read caches: N concurrent workers never race to build the same cache, and a bad data
    file fails the sweep before a single trial is proposed.
    """
    from sweeps.trial.adapters import lora
    from sweeps.trial.data import labelled
    from sweeps.trial.models import pretrained

    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base)
    if spec.task == "instruction":
        return _prepare_instruction(spec, base, tokenizer)
    task = labelled.load_classification(spec.data, spec.seed)
    check_targets(spec, pretrained.skeleton(base, spec.task, len(task.labels)), lora.target_modules)
    labelled.tokenize_splits(task, tokenizer, spec.data.max_length, truncation=spec.data.truncation)
    stats = labelled.truncation_stats(task, tokenizer, spec.data.max_length,
                                             truncation=spec.data.truncation)
    return {"base": str(base), "labels": task.labels, "truncation": stats,
            "sizes": {k: len(v) for k, v in (("train", task.train), ("validation", task.validation),
                                              ("test", task.test)) if v is not None}}


def _prepare_instruction(spec: SweepSpec, base: Any, tokenizer: Any) -> dict[str, Any]:
    from sweeps.trial.adapters import lora
    from sweeps.trial.data import chat
    from sweeps.trial.models import pretrained

    if not getattr(tokenizer, "chat_template", None):
        raise chat.DataError(f"{spec.model.base}: the tokenizer has no chat template; the instruction task renders "
                             "chats with it (use a chat/instruct model)")
    chats = chat.load_chats(spec.data, spec.seed)
    if "routing_accuracy" in spec.metric_names() and not chats.categories:
        raise chat.DataError(f"{spec.data.source}: no values in column {spec.data.category_column!r} "
                             "(data.category_column), which objective routing_accuracy scores")
    check_targets(spec, pretrained.skeleton(base, spec.task, None), lora.target_modules)
    stats = {split: chat.encode_split(getattr(chats, split), tokenizer, spec.data, split)[2]
             for split in ("train", "validation", "test") if getattr(chats, split)}
    return {"base": str(base), "labels": chats.categories, "truncation": stats,
            "sizes": {k: len(getattr(chats, k)) for k in ("train", "validation", "test") if getattr(chats, k)}}


def baselines(spec: SweepSpec) -> dict[str, dict[str, float]]:
    """The sweep's reference points, computed once per base and data (cached, sweeps.probe): name -> figures.

    `majority` (always the most frequent training class) and `linear-probe` (the frozen, unquantized base with
    the spec's pooling and a class-weighted logistic-regression head chosen on validation). Each gets
    `validation.*` and `test.*` figures; the test split is only ever reported beside them, never selected on.
    Empty for the instruction task, whose reference is the untuned base (zero_shot_* on every trial).
    """
    if spec.task != "classification":
        return {}
    from sweeps.trial import loop, probe
    from sweeps.trial.models import pretrained

    params = trial_params(spec, {}).model_copy(update={"quantization": "none"})
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, spec.model.revision)
    task = loop._task(spec, params, tokenizer)
    device = loop.pick_device(None)
    parts = task.probe_parts(params, pretrained.content_hash(base))
    fit = probe.cached(parts)
    if fit is None:
        model = loop._load(spec, params, base, tokenizer, task, device)
        fit = probe.compute(model, task, device, parts)
        del model
    out = {}
    for name, figures in (("majority", fit["majority"]), ("linear-probe", fit)):
        out[name] = {f"{split}.{k}": float(v) for split in ("validation", "test") if split in figures
                     for k, v in figures[split].items()}
    out["linear-probe"]["weight_decay"] = float(fit["weight_decay"])
    out["linear-probe"]["trainable_params"] = float(len(fit["bias"]) * (len(fit["weight"][0]) + 1))
    return out
