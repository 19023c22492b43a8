"""PEFT adapters: which modules a target group means per architecture, applying LoRA/DoRA/rsLoRA, save/load.

Target groups are resolved on *full* module names, split into (block index, path inside the block), and the
path must equal one of the family's names exactly. Suffix matching is wrong for BERT: `output.dense` (FFN out)
is also a suffix of `attention.output.dense` (attention out).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper
from transformers.pytorch_utils import Conv1D

from sweeps.spec.params import TrialParams, resolve_layers

# peft reads transformers' deprecated `is_gradient_checkpointing`; the FutureWarning is theirs, not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

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


def _num_blocks(model: torch.nn.Module) -> int:
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
        blocks = resolve_layers(layers, _num_blocks(model))
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


def _head_modules(model: torch.nn.Module) -> list[str]:
    """Top-level-ish head modules present in the model (classifier/score, and BERT's pooler)."""
    present = set()
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        # a weightless head (models.MeanPooler) has nothing to train or save
        if last in HEAD_MODULES and not _BLOCK.match(name) and any(True for _ in module.parameters()):
            present.add(last)
    return sorted(present)


def _head_only_target(model: torch.nn.Module) -> list[str]:
    """One projection of the top block: where a head-only trial puts its frozen, zero LoRA (see apply_peft)."""
    top = str(_num_blocks(model) - 1)
    return target_modules(model, "attention", top)[:1]


def apply_peft(model: torch.nn.Module, params: TrialParams, task: str, num_labels: int | None = None) -> PeftModel:
    head_only = params.method == "head-only"
    if head_only and task != "classification":
        raise TargetError("method=head-only needs a classification head (task: classification)")
    # head-only: a rank-1 LoRA on one top-block projection that never trains. PEFT initialises B to zero, so it
    # adds exactly nothing, and the artifact stays a PEFT adapter (the head in modules_to_save) that serve,
    # export and merge load like any other.
    targets = _head_only_target(model) if head_only else target_modules(model, params.target, params.layers)
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        # Casts the non-quantized params (norms, head) to fp32 and freezes the base; no checkpointing: it
        # trades compute for memory, and compute is what a CPU trial is short of.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=1 if head_only else params.rank,
        lora_alpha=1.0 if head_only else params.lora_alpha(),
        lora_dropout=params.dropout,
        target_modules=targets,
        use_dora=params.method == "dora",
        use_rslora=params.method == "rslora",
        fan_in_fan_out=family(model) == "gpt2",
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
        modules_to_save=_head_modules(model) if task == "classification" else None,
    )
    peft_model = get_peft_model(model, config)
    if head_only:
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(False)
    return peft_model


def trained_head(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """The trained copy of a fully trained head module (`classifier`, `score`) inside a PeftModel, or None.

    PEFT wraps such a module and trains a copy; the original stays untouched for `release` to give back.
    """
    for module_name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and module_name.rsplit(".", 1)[-1] == name:
            return module.modules_to_save[module.active_adapter if isinstance(module.active_adapter, str)
                                          else module.active_adapter[0]]
    return None


def lowest_block(model: torch.nn.Module, params: TrialParams) -> int | None:
    """Index of the lowest block holding an adapted module (None if a target lies outside the blocks)."""
    names = _head_only_target(model) if params.method == "head-only" else target_modules(model, params.target,
                                                                                            params.layers)
    blocks = [_BLOCK.match(name) for name in names]
    return None if not all(blocks) else min(int(m.group(1)) for m in blocks)


def release(model: torch.nn.Module) -> torch.nn.Module:
    """Take every PEFT layer out of `model` (a PeftModel, or the base it was applied to), in place, and return the
    bare base: adapted layers get their base layer back, fully trained heads their untouched original.

    Unlike peft's `unload()`, which keeps the *trained* copy of a modules_to_save head (what merging wants), this
    restores the module the base was loaded with, so a worker can hand the same base to its next trial.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    replaced: list[str] = []
    for name, module in list(base.named_modules()):
        if not name or any(name.startswith(prefix + ".") for prefix in replaced):
            continue
        if isinstance(module, ModulesToSaveWrapper):
            original = module.original_module
        elif isinstance(module, BaseTunerLayer):
            original = module.get_base_layer()
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name) if parent_name else base, child, original)
        replaced.append(name)
    if "peft_config" in base.__dict__:
        del base.peft_config
    return base


def trainable_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total). modules_to_save keeps a frozen original next to the trained copy: both are counted in
    total, as both are held in memory."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # packed: two 4-bit values per stored uint8
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def save_adapter(model: PeftModel, out_dir: str | Path) -> Path:
    """Write into a scratch directory beside `out_dir`, then rename it into place: a full disk leaves no
    half-written adapter under the real name, and the scratch is removed (after a SIGKILL: by the next save)."""
    import os
    import shutil

    from sweeps import faults

    out = Path(out_dir)
    for stale in out.parent.glob(f"{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        faults.point("adapter.saved", dir=out.parent.name)  # e.g. dir=trial-0002
        pickles = [p.name for p in tmp.rglob("*") if p.suffix in _PICKLES]
        if pickles:
            raise RuntimeError(f"pickle files written to {out}: {pickles}")
        if not (tmp / "adapter_model.safetensors").is_file():
            raise RuntimeError(f"{out}: adapter_model.safetensors was not written")
        if out.exists():  # a retried trial saves again
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_safetensors(path: Path) -> None:
    pickles = [p.name for p in path.rglob("*") if p.suffix in _PICKLES]
    if pickles:
        raise ValueError(f"refusing to load adapter {path}: it contains pickle files {pickles}; "
                         "only adapter_model.safetensors is accepted")
    if not (path / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: no adapter_model.safetensors")


def load_adapter(base_model: torch.nn.Module, adapter_dir: str | Path, adapter_name: str = "default") -> PeftModel:
    """Attach a saved adapter (inference mode). Refuses directories holding pickles: only safetensors load."""
    path = Path(adapter_dir)
    _check_safetensors(path)
    return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, is_trainable=False,
                                     use_safetensors=True)
