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

Scope: BERT-family encoders (`<base>.encoder.layer`) and Llama-style decoders (`<base>.layers` with `embed_tokens`
and a final `norm`: Llama, Mistral, Qwen2, ...; SmolLM2 as a classifier) fed right-padded `input_ids`; anything else
(token_type_ids, position_ids, inputs_embeds, a KV cache, left padding, a trainable tensor below block k) runs the
normal forward. A decoder's upper blocks get the cached rows as `inputs_embeds`: positions restart at 0 in every
row and the causal mask comes from the attention mask, as in the plain forward of right-padded rows. On SmolLM2
(30 blocks, LoRA on the upper half, 128 tokens) a cached epoch skips half of every forward. The cached
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
    """(the owner e.g. `model.bert` / `model.model`, the module whose forward runs the blocks, the block list) or
    None for other architectures. For an encoder that module is `owner.encoder`; for a decoder it is the owner."""
    owner = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if owner is None:
        return None
    encoder = getattr(owner, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if getattr(owner, "embeddings", None) is not None and isinstance(layers, torch.nn.ModuleList):
        return owner, encoder, layers
    layers = getattr(owner, "layers", None)
    if _is_decoder(owner) and isinstance(layers, torch.nn.ModuleList):
        return owner, owner, layers
    return None


def _is_decoder(owner: torch.nn.Module) -> bool:
    return all(isinstance(getattr(owner, name, None), torch.nn.Module) for name in ("embed_tokens", "norm")) and \
        not hasattr(owner, "encoder")


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
    if encoder is owner:
        hook, forward = None, _decoder_forward(state, owner, layers)
    else:
        hook, forward = _encoder_forward(state, owner, encoder, layers)
    state.update(hook=hook, encoder=encoder)
    encoder.forward = forward
    return True


def _encoder_forward(state: dict, owner, encoder, layers):
    """A BERT encoder's forward on the rows after block k (the owner's pre-hook sees the input ids it needs)."""
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

    return owner.register_forward_pre_hook(capture, with_kwargs=True), forward


def _decoder_forward(state: dict, owner, layers):
    """A Llama-style model's forward that takes the rows after block k from the cache and runs only the blocks
    above k (as `owner.layers`, swapped for the call) on them."""
    original = type(owner).forward.__get__(owner)

    def forward(input_ids=None, attention_mask=None, position_ids=None, *args, **kwargs):
        plain = not args and position_ids is None and all(
            kwargs.get(k) is None for k in ("cache", "past_key_values", "inputs_embeds")) and not kwargs.get(
            "use_cache") and input_ids is not None
        feats = _features(state["cache"], owner, layers, {"ids": input_ids, "mask": attention_mask, "plain": True},
                          None) if plain else None
        if feats is None:
            return original(input_ids, attention_mask, position_ids, *args, **kwargs)
        kwargs.pop("inputs_embeds", None)
        owner.layers = layers[state["cache"].blocks:]
        try:
            return original(None, attention_mask, None, *args, inputs_embeds=feats, **kwargs)
        finally:
            owner.layers = layers

    return forward


def detach(model: torch.nn.Module) -> None:
    """Back to the plain forward; the cache itself stays on the model for its next trial."""
    state = model.__dict__.get(_ATTR)
    if state and state.get("encoder") is not None:
        hook = state.pop("hook", None)
        if hook is not None:
            hook.remove()
        state.pop("encoder").__dict__.pop("forward", None)


def row_key(row) -> tuple[torch.Tensor, bytes]:
    """(the row's ids as a long tensor, its cache key): the key _features builds from a batch row."""
    ids = torch.as_tensor(list(row), dtype=torch.long)
    return ids, ids.numpy().tobytes()


def uncached(model: torch.nn.Module, rows) -> int:
    """How many of the token-id rows the model's cache lacks (0 also where no cache is attached)."""
    return sum(row_key(row)[1] not in cache.rows for row in rows) if (cache := cache_of(model)) is not None else 0


def fill(model: torch.nn.Module, rows, batch_size: int = 16, frozen: bool = False) -> int:
    """Compute the features of the token-id rows (lists of ids, unpadded) not yet cached: the rows training and
    validation will ask for, before the trial trains. A worker's first trial then trains, and is measured, on a
    warm cache like its later trials (on SmolLM2 the fill held ~1 GB of transient heap inside the first epoch).
    Call under the trial's autocast, like the training forward that would otherwise compute them. Returns the
    number of rows computed (0: nothing attached, or everything cached). `frozen`: the caller knows nothing below
    the prefix will train (a trial fills before PEFT freezes the base, whose parameters still ask for gradients);
    training's own check (_features) still guards every step, so a wrong promise costs work, not correctness."""
    state = model.__dict__.get(_ATTR)
    stack = _stack(model)
    if not state or state.get("encoder") is None or stack is None:
        return 0
    cache, (owner, _, layers) = state["cache"], stack
    if not frozen and any(p.requires_grad for module in [_embeddings(owner), *layers[:cache.blocks]]
                          for p in module.parameters()):
        return 0
    device = next(owner.parameters()).device
    todo: dict[int, dict[bytes, torch.Tensor]] = {}
    for row in rows:
        ids, key = row_key(row)
        if key not in cache.rows:
            todo.setdefault(len(ids), {})[key] = ids
    computed = 0
    for group in todo.values():  # equal lengths together: batches without padding, as in _features
        items = list(group.items())
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
            ids = torch.stack([x for _, x in part]).to(device)
            for (key, _), feats in zip(part, _compute(owner, layers[:cache.blocks], ids), strict=True):
                cache.put(key, feats)
                computed += 1
    cache.misses += computed
    return computed


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
    if ids is None or not seen.get("plain") or (hidden is not None and tuple(ids.shape) != tuple(hidden.shape[:2])):
        return None
    below = [_embeddings(owner), *layers[:cache.blocks]]
    if any(p.requires_grad for module in below for p in module.parameters()):
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
    out = torch.zeros((*ids.shape, rows[0].shape[-1]), dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, :row.shape[0]] = row
    return out.to(ids.device)


def _embeddings(owner) -> torch.nn.Module:
    return owner.embeddings if not _is_decoder(owner) else owner.embed_tokens


def _compute(owner, blocks, ids: torch.Tensor) -> list[torch.Tensor]:
    """Unpadded inputs of one length through embeddings + frozen blocks in eval mode (no dropout): one plain CPU
    tensor per row. A row's features do not depend on the rows computed with it (bitwise, checked on AVX2 CPUs),
    so a cache filled by another trial's batches holds what this trial would have computed."""
    modules = [_embeddings(owner), *blocks]
    modes = [m.training for m in modules]
    # inference_mode(False): a row may be reused in a later training step, where inference tensors may not go.
    with torch.inference_mode(False), torch.no_grad():
        try:
            for m in modules:
                m.eval()
            if _is_decoder(owner):
                hidden = _decoder_prefix(owner, blocks, ids.clone())
            else:
                hidden = owner.embeddings(input_ids=ids.clone())
                for block in blocks:
                    hidden = block(hidden, None)
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)
        return [row.to("cpu", copy=True) for row in hidden.detach()]


def _decoder_prefix(owner, blocks, ids: torch.Tensor) -> torch.Tensor:
    """The decoder's own forward over blocks [0, k) without its final norm: rotary positions and the causal mask
    are built exactly as for the full model (unpadded rows, so no attention mask)."""
    layers, norm = owner.layers, owner.norm
    owner.layers, owner.norm = torch.nn.ModuleList(blocks), torch.nn.Identity()
    try:
        return type(owner).forward(owner, input_ids=ids, use_cache=False).last_hidden_state
    finally:
        owner.layers, owner.norm = layers, norm
