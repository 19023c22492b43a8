"""Which modules a target group means, per architecture: attention, ffn or all-linear of a range of blocks.

Target groups are resolved on *full* module names, split into (block index, path inside the block), and the
path must equal one of the family's names exactly. Suffix matching is wrong for BERT: `output.dense` (FFN out)
is also a suffix of `attention.output.dense` (attention out).
"""

from __future__ import annotations

import re

import torch
from transformers.pytorch_utils import Conv1D

from sweeps.spec.params import TrialParams, resolve_layers

# family -> group -> module paths inside one transformer block
ARCH_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "bert": {
        "attention": ("attention.self.query", "attention.self.key", "attention.self.value",
                      "attention.output.dense"),
        "ffn": ("intermediate.dense", "output.dense"),
    },
    "distilbert": {
        "attention": ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
        "ffn": ("ffn.lin1", "ffn.lin2"),
    },
    "llama": {
        "attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        "ffn": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    },
    "gpt2": {  # Conv1D layers: weights stored (in, out), hence fan_in_fan_out=True
        "attention": ("attn.c_attn", "attn.c_proj"),
        "ffn": ("mlp.c_fc", "mlp.c_proj"),
    },
}
# config.model_type -> family
MODEL_TYPES = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "electra": "bert",
    "distilbert": "distilbert",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama",
    "gpt2": "gpt2",
}
# Classification heads, trained in full (modules_to_save); never LoRA targets.
HEAD_MODULES = ("classifier", "score", "pooler", "pre_classifier")
# `<anything>.<layer|layers|h|block>.<index>.<path inside the block>`
_BLOCK = re.compile(r"^(?:.*\.)?(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")


class TargetError(ValueError):
    """The architecture has no known target groups (or the layer range is out of bounds)."""


def _linear_types() -> tuple[type, ...]:
    # bitsandbytes' Linear8bitLt / Linear4bit subclass nn.Linear, so quantized bases resolve the same way.
    return (torch.nn.Linear, Conv1D)


def _linear_names(model: torch.nn.Module) -> list[str]:
    return [name for name, mod in model.named_modules() if isinstance(mod, _linear_types())]


def family(model: torch.nn.Module) -> str | None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return MODEL_TYPES.get(model_type)


def num_blocks(model: torch.nn.Module) -> int:
    config = model.config
    for attr in ("num_hidden_layers", "n_layer", "n_layers"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    raise TargetError(f"cannot tell how many blocks {type(model).__name__} has")


def target_modules(model: torch.nn.Module, target: str, layers: str = "all") -> list[str]:
    """Full names of the linear modules in group `target` (attention | ffn | all-linear) of the chosen blocks."""
    fam = family(model)
    names = _linear_names(model)
    if fam is None:
        suffixes = sorted({m.group(2) if (m := _BLOCK.match(n)) else n for n in names})
        raise TargetError(
            f"no target groups known for model_type {getattr(model.config, 'model_type', '?')!r} "
            f"(known: {', '.join(sorted(MODEL_TYPES))}); its linear modules are: {', '.join(suffixes)}"
        )
    groups = ARCH_GROUPS[fam]
    if target == "all-linear":
        wanted = set(groups["attention"]) | set(groups["ffn"])
    elif target in groups:
        wanted = set(groups[target])
    else:
        raise TargetError(f"unknown target group {target!r}; allowed: attention, ffn, all-linear")
    try:
        blocks = resolve_layers(layers, num_blocks(model))
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    out = []
    for name in names:
        match = _BLOCK.match(name)
        if not match or match.group(2) not in wanted:
            continue
        if blocks is not None and int(match.group(1)) not in blocks:
            continue
        if any(part in HEAD_MODULES for part in name.split(".")):
            continue
        out.append(name)
    if not out:
        raise TargetError(f"target={target!r} layers={layers!r} matched no module in {type(model).__name__}")
    return out


def head_modules(model: torch.nn.Module) -> list[str]:
    """Top-level-ish head modules present in the model (classifier/score, and BERT's pooler)."""
    present = set()
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        # a weightless head (pretrained.MeanPooler) has nothing to train or save
        if last in HEAD_MODULES and not _BLOCK.match(name) and any(True for _ in module.parameters()):
            present.add(last)
    return sorted(present)


def head_only_target(model: torch.nn.Module) -> list[str]:
    """One projection of the top block: where a head-only trial puts its frozen, zero LoRA (see apply_peft)."""
    top = str(num_blocks(model) - 1)
    return target_modules(model, "attention", top)[:1]


def lowest_block(model: torch.nn.Module, params: TrialParams) -> int | None:
    """Index of the lowest block holding an adapted module (None if a target lies outside the blocks)."""
    names = head_only_target(model) if params.method == "head-only" else target_modules(model, params.target,
                                                                                            params.layers)
    blocks = [_BLOCK.match(name) for name in names]
    return None if not all(blocks) else min(int(m.group(1)) for m in blocks)
