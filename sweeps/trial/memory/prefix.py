"""Frozen-prefix cache: the blocks below the lowest adapted one run once per distinct input, not once per step.

With `layers: upper-half` (the shipped specs) blocks 0..k-1 hold no adapter and nothing in them trains, so their
output for an input is a fixed feature: the same in every epoch, and in every trial of a sweep on the same base
(reuse.py keeps the base, and this cache on it, across the trials of a worker). Each new input runs through the
embeddings and blocks 0..k-1 once (with the other new inputs of its length: no padding), in eval mode under
no_grad; the upper blocks then get a right-padded batch of cached rows.

What it buys on MiniLM (6 blocks, k=3, 64 tokens, 1 thread): a training step skips half the forward and all of the
frozen blocks' dropout, ~1.5x the tokens per CPU-second of the same trial without it once the cache is warm
(scripts/bench.py --only throughput; BENCHMARKS.md). The first trial of a worker fills it (~1.2x there).
The one behavioural change: no dropout inside the frozen blocks during training (the adapted blocks and the head
keep theirs), as in the common "frozen feature extractor" set-up. SWEEPS_FROZEN_PREFIX=0 turns the cache off.

Scope: BERT-family encoders (`<base>.encoder.layer`) fed right-padded `input_ids`; anything else (token_type_ids,
position_ids, inputs_embeds, left padding, a trainable tensor below block k) runs the normal forward. The cached
bytes are held in meter.py as platform memory: they are not charged to any trial's measured peak.
"""

from __future__ import annotations

import os

import torch

from sweeps.trial.memory import meter

_ATTR = "_sweeps_prefix"  # on the base model: {"cache": PrefixCache, "hook": handle, "encoder": module}


def enabled() -> bool:
    return os.environ.get("SWEEPS_FROZEN_PREFIX", "1") != "0"


def _limit_bytes() -> int:
    return int(float(os.environ.get("SWEEPS_PREFIX_CACHE_MB", "1024")) * 2**20)


class PrefixCache:
    """Hidden states after block `blocks - 1`, one [length, hidden] CPU tensor per distinct input row."""

    def __init__(self, blocks: int):
        self.blocks = blocks
        self.rows: dict[bytes, torch.Tensor] = {}
        self.nbytes = 0
        self.hits = self.misses = 0

    def put(self, key: bytes, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.nbytes + size > _limit_bytes():
            return  # full: later inputs are computed (still once per step, without dropout) but not kept
        meter.hold(size)
        self.rows[key] = value
        self.nbytes += size

    def clear(self) -> int:
        freed = self.nbytes
        self.rows.clear()
        self.nbytes = 0
        meter.hold(-freed)
        return freed


def _stack(model: torch.nn.Module):
    """(the encoder owner e.g. `model.bert`, its `encoder`, the block list) or None for other architectures."""
    owner = getattr(model, getattr(model, "base_model_prefix", ""), None)
    encoder = getattr(owner, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if owner is None or getattr(owner, "embeddings", None) is None or not isinstance(layers, torch.nn.ModuleList):
        return None
    return owner, encoder, layers


def prepare(model: torch.nn.Module, blocks: int | None) -> int:
    """Make the model's cache hold features after `blocks` blocks; returns the bytes dropped (another depth)."""
    state = model.__dict__.get(_ATTR)
    if state is None or not blocks or state["cache"].blocks == blocks:  # a trial without a prefix leaves it be
        return 0
    freed = state["cache"].clear()
    state["cache"].blocks = blocks
    return freed


def attach(model: torch.nn.Module, blocks: int | None) -> bool:
    """Route the encoder through the cache for blocks [0, blocks); False (nothing changed) where it cannot apply."""
    stack = _stack(model)
    if not enabled() or stack is None or not blocks or blocks >= len(stack[2]):
        return False
    detach(model)
    owner, encoder, layers = stack
    state = model.__dict__.setdefault(_ATTR, {"cache": PrefixCache(blocks)})
    prepare(model, blocks)
    seen: dict = {}

    def capture(module, args, kwargs):
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)
        seen["mask"] = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        seen["plain"] = all(kwargs.get(k) is None for k in ("token_type_ids", "position_ids", "inputs_embeds",
                                                           "encoder_hidden_states"))

    original = type(encoder).forward.__get__(encoder)

    def forward(hidden_states, attention_mask=None, *args, **kwargs):
        feats = _features(state["cache"], owner, layers, seen, hidden_states)
        seen.clear()
        if feats is None:
            return original(hidden_states, attention_mask, *args, **kwargs)
        encoder.layer = layers[state["cache"].blocks:]
        try:
            return original(feats, attention_mask, *args, **kwargs)
        finally:
            encoder.layer = layers

    state.update(hook=owner.register_forward_pre_hook(capture, with_kwargs=True), encoder=encoder)
    encoder.forward = forward
    return True


def detach(model: torch.nn.Module) -> None:
    """Back to the plain forward; the cache itself stays on the model for its next trial."""
    state = model.__dict__.get(_ATTR)
    if state and state.get("hook") is not None:
        state.pop("hook").remove()
        state["encoder"].__dict__.pop("forward", None)


def cache_of(model: torch.nn.Module) -> PrefixCache | None:
    state = model.__dict__.get(_ATTR)
    return state["cache"] if state else None


def _lengths(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None:
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
    mask = mask.detach().to("cpu").bool()
    lengths = mask.sum(1)
    right_padded = torch.arange(mask.shape[1])[None, :] < lengths[:, None]
    return lengths if torch.equal(mask, right_padded) else None


def _features(cache: PrefixCache, owner, layers, seen: dict, hidden: torch.Tensor) -> torch.Tensor | None:
    ids = seen.get("ids")
    if ids is None or not seen.get("plain") or tuple(ids.shape) != tuple(hidden.shape[:2]):
        return None
    if any(p.requires_grad for block in layers[:cache.blocks] for p in block.parameters()):
        return None
    lengths = _lengths(ids, seen.get("mask"))
    if lengths is None:
        return None
    ids_cpu = ids.detach().to("cpu")
    keys = [ids_cpu[i, :n].numpy().tobytes() for i, n in enumerate(lengths.tolist())]
    rows = [cache.rows.get(k) for k in keys]
    missing: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        if row is None:
            missing.setdefault(int(lengths[i]), []).append(i)
    cache.hits += len(rows) - sum(map(len, missing.values()))
    for n, group in missing.items():  # equal lengths together: a batch without padding
        cache.misses += len(group)
        for i, row in zip(group, _compute(owner, layers[:cache.blocks], ids[group, :n]), strict=True):
            rows[i] = row
            cache.put(keys[i], row)
    out = torch.zeros(hidden.shape, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, :row.shape[0]] = row
    return out.to(hidden.device)


def _compute(owner, blocks, ids: torch.Tensor) -> list[torch.Tensor]:
    """Unpadded inputs of one length through embeddings + frozen blocks in eval mode (no dropout): one plain CPU
    tensor per row. A row's features do not depend on the rows computed with it (bitwise, checked on AVX2 CPUs),
    so a cache filled by another trial's batches holds what this trial would have computed."""
    modules = [owner.embeddings, *blocks]
    modes = [m.training for m in modules]
    # inference_mode(False): a row may be reused in a later training step, where inference tensors may not go.
    with torch.inference_mode(False), torch.no_grad():
        try:
            for m in modules:
                m.eval()
            hidden = owner.embeddings(input_ids=ids.clone())
            for block in blocks:
                hidden = block(hidden, None)
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)
        return [row.to("cpu", copy=True) for row in hidden.detach()]
