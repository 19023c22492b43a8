"""Many adapters on one base model: attach more, switch and route between them, combine (fusion), merge, and fast
mixed-adapter batches.

Everything here works on a PeftModel built by this folder (lora.py, disk.py) through PEFT's own methods, except
`grouped_mixed_batches`, which replaces PEFT's private per-sample forward of LoRA layers: it lives here, with the
rest of what knows PEFT's internals. Used by sweep serve (production/serving), sweep fuse (production/fusion.py)
and sweep export (production/export).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from sweeps.trial.adapters import disk

# PEFT's weighted combinations. The plain task-arithmetic forms (linear, ties, dare_*) combine the A and B factors
# separately and need equal ranks; cat stacks the factors (exact sum of the deltas, rank adds up); the *_svd forms
# combine the full delta weights and re-factor them to a fixed rank.
COMBINATIONS = ("linear", "cat", "ties", "dare_linear", "dare_ties", "magnitude_prune",
                "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd")
USES_DENSITY = {"ties", "dare_linear", "dare_ties", "magnitude_prune", "ties_svd", "dare_linear_svd",
                "dare_ties_svd"}


def attach(model: torch.nn.Module, adapter_dir: str | Path, adapter_name: str) -> PeftModel:
    """`model` with one more adapter: the first one turns the base into a PeftModel (inference mode), later ones
    are loaded beside the others. Returns the model to use from now on."""
    if hasattr(model, "peft_config"):  # already a PeftModel
        disk.add_adapter(model, adapter_dir, adapter_name)
        return model
    model = disk.load_adapter(model, adapter_dir, adapter_name)
    model.eval()
    return model


def has_adapter(model: torch.nn.Module, adapter_name: str) -> bool:
    return adapter_name in getattr(model, "peft_config", {})


def activate(model: PeftModel, adapter_name: str) -> None:
    model.set_adapter(adapter_name)


def remove(model: PeftModel, adapter_name: str, keep_active: str) -> None:
    """Delete an adapter after making `keep_active` the active one: PEFT warns when the active adapter is deleted
    and picks another itself."""
    model.set_adapter(keep_active)
    model.delete_adapter(adapter_name)


def route(model: PeftModel, names: list[str]) -> dict:
    """Forward kwargs that send row i of a batch through adapter names[i]: one adapter is made the active one;
    several go as PEFT's per-sample `adapter_names`, in one forward."""
    if len(set(names)) == 1:
        model.set_adapter(names[0])
        return {}
    return {"adapter_names": names}


def combine(model: torch.nn.Module, names: list[str], weights: list[float], method: str, new_name: str,
            density: float | None = None) -> None:
    if method not in COMBINATIONS:
        raise ValueError(f"unknown combination {method!r}; allowed: {', '.join(COMBINATIONS)}")
    model.add_weighted_adapter(names, [float(w) for w in weights], new_name, combination_type=method,
                               density=density if method in USES_DENSITY else None)


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """Fold the active adapter into the base weights: a plain transformers model, no PEFT at inference."""
    return model.merge_and_unload(safe_merge=True)


# ---------------------------------------------------------------- mixed-adapter batches without the copies


def _runs(names: list[str]) -> list[tuple[str, int, int]]:
    """[(adapter, start, end)] for each run of equal consecutive names."""
    out: list[tuple[str, int, int]] = []
    for i, name in enumerate(names):
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1], i + 1)
        else:
            out.append((name, i, i + 1))
    return out


def _segment_forward(layer: LoraLayer, original):
    """PEFT's `_mixed_batch_forward` of a LoRA Linear (peft 0.21), for rows grouped by adapter: slices, not copies."""
    def forward(x: torch.Tensor, *args, adapter_names: list[str], **kwargs):
        runs = _runs(adapter_names)
        if len(runs) != len(set(adapter_names)) or any(n in layer.lora_variant for n, _, _ in runs) or \
                kwargs.get("alora_offsets") is not None:
            return original(x, *args, adapter_names=adapter_names, **kwargs)  # not grouped: PEFT's own path
        kwargs.pop("alora_offsets", None)
        result = layer.base_layer(x, *args, **kwargs)
        for name, start, end in runs:
            if name not in layer.lora_A:  # "__base__" or an adapter that does not target this layer: base only
                continue
            lora_a, lora_b, scaling = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
            sub = layer.lora_dropout[name](x[start:end].to(lora_a.weight.dtype))  # a view: rows are contiguous
            out = result[start:end]
            if out.is_contiguous() and lora_b.bias is None:
                # out += scaling * (sub A^T) B^T as one accumulating GEMM: no [rows, out_features] temporaries
                hidden = lora_a(sub).reshape(-1, lora_b.in_features).to(out.dtype)
                out.view(-1, out.shape[-1]).addmm_(hidden, lora_b.weight.T.to(out.dtype), alpha=scaling)
            else:
                out += (lora_b(lora_a(sub)) * scaling).to(result.dtype)
        return result

    return forward


def _is_lora_linear(module: torch.nn.Module) -> bool:
    # PEFT's LoRA Linear and its bitsandbytes subclasses (Linear8bitLt, Linear4bit) wrap an nn.Linear as base_layer;
    # LoRA embeddings and convolutions keep PEFT's own path.
    return isinstance(module, LoraLayer) and isinstance(getattr(module, "base_layer", None), torch.nn.Linear)


def grouped_mixed_batches(model: torch.nn.Module) -> int:
    """Speed up PEFT's per-sample `adapter_names` for batches sorted by adapter; returns the layers patched.

    PEFT gathers each adapter's rows with a Python index list and scatters the LoRA output back (x[idx],
    result[idx] += ...): on CPU those copies cost more than the LoRA matmuls, and a 4-adapter batch ran at
    ~0.5x the single-adapter throughput. When the rows of each adapter are contiguous (the server sorts its
    batches by adapter), slices are views and the LoRA output is added in place: the same arithmetic, no copies.
    Anything else (unsorted names, LoRA variants such as DoRA) still takes PEFT's own path. Idempotent: call it
    again after loading an adapter that wraps new layers.
    """
    patched = 0
    for module in model.modules():
        if _is_lora_linear(module) and not getattr(module, "_sweeps_grouped", False):
            module._mixed_batch_forward = _segment_forward(module, module._mixed_batch_forward)
            module._sweeps_grouped = True
            patched += 1
    return patched
