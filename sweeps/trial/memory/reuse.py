"""One base model per worker process, handed to each trial as if freshly loaded (Ray reuses the worker).

    model = reuse.base_for_trial(base, task, num_labels, params, device, revision, peak=pm)   # inside PeakMemory
    ... apply_peft, train, save ...
    reuse.release(model)                                                                      # base back to the slot

Loading MiniLM costs ~0.1 s in a warm process (int8 0.4 s, nf4 1.2 s): little next to a trial. What reuse buys is
what can live on the base between trials, chiefly the frozen-prefix cache (prefix.py): the frozen lower blocks'
features are computed once per worker, not once per epoch of every trial.

"As if freshly loaded" means equal metrics, which takes four things on a hit:
- every PEFT layer is taken out (lora.release) and the heads' loaded tensors are restored;
- tensors `from_pretrained` initialised instead of loading (a new classification head) are drawn again through the
  model's own `initialize_weights`, from the trial's RNG state: the same values and the same RNG draws as a load;
- requires_grad flags are put back as loaded;
- the measured peak is charged the base's resident bytes and its load peak, as a trial that loaded it would be.
SWEEPS_REUSE_BASE=0 loads a fresh base for every trial.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sweeps.spec.params import TrialParams
from sweeps.trial.adapters import lora, targeting
from sweeps.trial.memory import meter, prefix
from sweeps.trial.models import precision, pretrained

_HEADS = set(targeting.HEAD_MODULES)


@dataclass
class _Entry:
    key: tuple
    model: Any
    fresh: list[str]  # tensors from_pretrained initialised rather than loaded: drawn again for every trial
    heads: dict[str, torch.Tensor]  # loaded tensors of the head modules (modules_to_save candidates)
    requires_grad: dict[str, bool]
    resident_bytes: int
    load_peak_bytes: int


_SLOT: dict = {"entry": None}  # entry: the cached _Entry; charge: (resident, load peak) of the last base


def enabled() -> bool:
    return os.environ.get("SWEEPS_REUSE_BASE", "1") != "0"


def _key(base, task: str, num_labels: int | None, params: TrialParams, device: str, revision: str | None) -> tuple:
    qconfig = precision.quantization_config(params, device)
    stamp = ()
    if Path(str(base)).is_dir():  # a model directory rewritten in place is a new base
        stamp = tuple(sorted((f.name, f.stat().st_mtime_ns) for f in Path(str(base)).iterdir() if f.is_file()))
    return (str(base), task, num_labels, repr(qconfig.to_dict()) if qconfig else "none",
            params.pooling if task == "classification" else None, str(device), revision, stamp)


def base_for_trial(base, task: str, num_labels: int | None, params: TrialParams, device: str,
                   revision: str | None = None, peak: meter.PeakMemory | None = None) -> Any:
    """The frozen base for one trial: this worker's cached one made clean, or a fresh load (then cached)."""
    key = _key(base, task, num_labels, params, device, revision)
    entry = _SLOT["entry"]
    # Trials in one process run one after another: a base still out is that of a trial that failed before
    # release(), and _reset cleans up after it.
    if entry is not None and entry.key == key and enabled():
        _reset(entry)  # first: it draws the new head from the RNG where from_pretrained would have
        freed = prefix.prepare(entry.model, prefix_blocks(entry.model, task, params))
        if freed and peak is not None:  # features of another depth were dropped: measure from here
            meter.trim()
            peak.restart()
        if peak is not None:
            peak.charge(entry.resident_bytes, entry.load_peak_bytes)
    else:
        if entry is not None:
            entry = None  # no reference left here: drop() frees the old base before the new one loads
            drop()
            if peak is not None:  # what the previous base held was freed inside the trial's measurement
                peak.restart()
        entry = _load(key, base, task, num_labels, params, device, revision)
        if enabled():
            _SLOT["entry"] = entry
    prefix.attach(entry.model, prefix_blocks(entry.model, task, params))
    _SLOT["charge"] = (entry.resident_bytes, entry.load_peak_bytes)
    return entry.model


def charge_again(peak: meter.PeakMemory) -> None:
    """After `peak.restart()` inside a trial: charge the base of the last base_for_trial as a reused worker's
    trial is charged (its resident bytes and its load peak), whether it was loaded fresh or reused."""
    resident, load_peak = _SLOT.get("charge", (0, 0))
    peak.charge(resident, load_peak)


def release(model: Any) -> None:
    """End of a trial: PEFT layers out (their memory goes with the trial), cache hooks off; the base waits in the
    slot for the next trial. Optional: the next base_for_trial cleans up after a trial that skipped it."""
    prefix.detach(lora.release(model))


def drop() -> None:
    """Forget the cached base (and its prefix cache) and return the memory to the OS."""
    entry, _SLOT["entry"] = _SLOT["entry"], None
    if entry is not None:
        cache = prefix.cache_of(entry.model)
        if cache is not None:
            cache.clear()
        del entry
        meter.trim()


def prefix_blocks(model: Any, task: str, params: TrialParams) -> int | None:
    if task != "classification" or not prefix.enabled():
        return None
    try:
        return targeting.lowest_block(model, params)
    except targeting.TargetError:  # apply_peft reports it with the trial's context
        return None


def _load(key: tuple, base, task, num_labels, params, device, revision) -> _Entry:
    with meter.PeakMemory(device) as pm:
        model = pretrained.load_base(base, task, num_labels, params, device, revision)
        resident = pm.level_bytes
    tensors = model.state_dict(keep_vars=True)
    fresh = [name for name, t in tensors.items() if not getattr(t, "_is_hf_initialized", False)]
    heads = {name: t.detach().clone() for name, t in tensors.items()
             if name not in fresh and _HEADS & set(name.split("."))}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    return _Entry(key, model, fresh, heads, requires_grad, max(0, resident), pm.peak_bytes)


def _reset(entry: _Entry) -> None:
    model = lora.release(entry.model)  # a trial that ended without release() left its layers in
    prefix.detach(model)
    tensors = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in entry.heads.items():
            tensors[name].copy_(value)
    for name, param in model.named_parameters():
        param.requires_grad_(entry.requires_grad.get(name, True))
    if entry.fresh:
        # from_pretrained visits every module and initialises the tensors without the `_is_hf_initialized` flag
        # (the missing ones): clear the modules' flags and the same call draws the same values from the same RNG.
        for module in model.modules():
            if "_is_hf_initialized" in module.__dict__:
                module._is_hf_initialized = False
        for name in entry.fresh:
            if "_is_hf_initialized" in tensors[name].__dict__:
                del tensors[name]._is_hf_initialized
        model.initialize_weights()
