"""PEFT on a base model: apply LoRA / DoRA / rsLoRA (or a head-only adapter) to the chosen modules, find the trained
head, count parameters, and take every PEFT layer out again so a worker can reuse the base for its next trial."""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper

from sweeps.spec.params import TrialParams
from sweeps.trial.adapters.targeting import TargetError, family, head_modules, head_only_target, target_modules

# peft reads transformers' deprecated `is_gradient_checkpointing`; the FutureWarning is theirs, not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def apply_peft(model: torch.nn.Module, params: TrialParams, task: str, num_labels: int | None = None) -> PeftModel:
    head_only = params.method == "head-only"
    if head_only and task != "classification":
        raise TargetError("method=head-only needs a classification head (task: classification)")
    # head-only: a rank-1 LoRA on one top-block projection that never trains. PEFT initialises B to zero, so it
    # adds exactly nothing, and the artifact stays a PEFT adapter (the head in modules_to_save) that serve,
    # export and merge load like any other.
    targets = head_only_target(model) if head_only else target_modules(model, params.target, params.layers)
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
        modules_to_save=head_modules(model) if task == "classification" else None,
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


def head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters of the fully trained heads: PEFT names those copies `...modules_to_save...`."""
    return [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]


def target_names(model: PeftModel) -> list[str]:
    """The modules the (default) adapter of `model` was applied to, sorted."""
    return sorted(model.peft_config["default"].target_modules)
