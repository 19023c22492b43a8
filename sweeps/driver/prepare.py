"""The driver's jobs before the first trial: check and cache the inputs, and compute the sweep's reference points.

Both run in the driver process, once per sweep, so that N concurrent trials only ever read caches (no two workers
race to convert the same base or tokenize the same data) and a bad data file or a target group the model lacks
fails the sweep before a single trial is proposed. The work itself is the trial side's (sweeps/trial); this module
only decides what to run, and imports it late (torch and transformers are heavy).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sweeps.spec import SweepSpec


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


def prepare(spec: SweepSpec) -> dict[str, Any]:
    """Convert/cache the base model and tokenize the data once, in the driver, before any trial starts.

    Trials then only read caches: N concurrent workers never race to build the same cache, and a bad data
    file fails the sweep before a single trial is proposed.
    """
    from sweeps.trial.adapters import targeting
    from sweeps.trial.data import labelled, tokenized
    from sweeps.trial.models import pretrained

    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base)
    if spec.task == "instruction":
        return _prepare_instruction(spec, base, tokenizer)
    task = labelled.load_classification(spec.data, spec.seed)
    check_targets(spec, pretrained.skeleton(base, spec.task, len(task.labels)), targeting.target_modules)
    tokenized.tokenize_splits(task, tokenizer, spec.data.max_length, truncation=spec.data.truncation)
    stats = tokenized.truncation_stats(task, tokenizer, spec.data.max_length,
                                             truncation=spec.data.truncation)
    return {"base": str(base), "labels": task.labels, "truncation": stats,
            "sizes": {k: len(v) for k, v in (("train", task.train), ("validation", task.validation),
                                              ("test", task.test)) if v is not None}}


def _prepare_instruction(spec: SweepSpec, base: Any, tokenizer: Any) -> dict[str, Any]:
    from sweeps.trial.adapters import targeting
    from sweeps.trial.data import chat
    from sweeps.trial.models import pretrained

    if not getattr(tokenizer, "chat_template", None):
        raise chat.DataError(f"{spec.model.base}: the tokenizer has no chat template; the instruction task renders "
                             "chats with it (use a chat/instruct model)")
    chats = chat.load_chats(spec.data, spec.seed)
    if "routing_accuracy" in spec.metric_names() and not chats.categories:
        raise chat.DataError(f"{spec.data.source}: no values in column {spec.data.category_column!r} "
                             "(data.category_column), which objective routing_accuracy scores")
    check_targets(spec, pretrained.skeleton(base, spec.task, None), targeting.target_modules)
    stats = {split: chat.encode_split(getattr(chats, split), tokenizer, spec.data, split)[2]
             for split in ("train", "validation", "test") if getattr(chats, split)}
    return {"base": str(base), "labels": chats.categories, "truncation": stats,
            "sizes": {k: len(getattr(chats, k)) for k in ("train", "validation", "test") if getattr(chats, k)}}


def baselines(spec: SweepSpec) -> dict[str, dict[str, float]]:
    """The sweep's reference points, computed once per base and data (cached, sweeps/trial/probe.py): name -> figures.

    `majority` (always the most frequent training class) and `linear-probe` (the frozen, unquantized base with
    the spec's pooling and a class-weighted logistic-regression head chosen on validation). Each gets
    `validation.*` and `test.*` figures; the test split is only ever reported beside them, never selected on.
    Empty for the instruction task, whose reference is the untuned base (zero_shot_* on every trial).
    """
    if spec.task != "classification":
        return {}
    from sweeps.trial import loop, probe
    from sweeps.trial.models import pretrained

    params = spec.trial_params().model_copy(update={"quantization": "none"})
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, spec.model.revision)
    task = loop.make_task(spec, params, tokenizer)
    device = loop.pick_device(None)
    base_hash = pretrained.content_hash(base)
    parts = task.probe_parts(params, base_hash)
    fit = probe.cached(parts)
    if fit is None:
        from sweeps.trial.memory import prefix, reuse

        bf16 = loop.use_bf16(params, device)
        model = loop.load_model(spec, params, base, tokenizer, task, device).requires_grad_(False)
        # The trials' frozen-prefix rows, computed here once with every core while the probe's forward needs them
        # anyway, instead of once per worker on one core (the spec's fixed layers, unquantized like the probe).
        # Only when the probe is computed: a sweep whose probe is cached finds the file, or its workers write it.
        shared = task.prefix_file(base_hash, bf16, device) if spec.trial_params().quantization == "none" else None
        if shared is not None and prefix.attach(model, reuse.prefix_blocks(model, spec.task, params)):
            task.prefill(model, bf16, shared)  # the probe's forward below then reads these rows
        fit = probe.compute(model, task, device, parts, bf16=bf16)
        cache = prefix.cache_of(model)
        if cache is not None:
            cache.clear()  # the rows are on disk now; the driver keeps nothing of the model
        del model
    out = {}
    for name, figures in (("majority", fit["majority"]), ("linear-probe", fit)):
        out[name] = {f"{split}.{k}": float(v) for split in ("validation", "test") if split in figures
                     for k, v in figures[split].items()}
    out["linear-probe"]["weight_decay"] = float(fit["weight_decay"])
    out["linear-probe"]["trainable_params"] = float(len(fit["bias"]) * (len(fit["weight"][0]) + 1))
    return out


def reference_points(spec: SweepSpec) -> dict[str, dict[str, float]]:
    """The sweep's baselines (`baselines`); SWEEPS_BASELINES=0 skips them (tests of other parts)."""
    return baselines(spec) if os.environ.get("SWEEPS_BASELINES", "1") != "0" else {}
