"""TrialParams: every axis one trial can vary, flat, so each lands as one MLflow param.

A sweep YAML fixes them under `params:` and varies any of them under `search.space:`; `sweep trial --set k=v`
overrides them. Keeping them flat (not nested) is what makes MLflow's compare and parallel-coordinates views
work without flattening tricks.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Metrics a trial reports, per task; objectives must name one of these.
COMMON_METRICS = {
    "loss", "peak_memory_mb", "peak_memory_bytes", "base_weight_bytes", "trainable_params", "total_params",
    "train_seconds", "tokens_per_second",
}
CLASSIFICATION_METRICS = COMMON_METRICS | {"accuracy", "macro_f1", "accuracy_se", "macro_f1_se"}
INSTRUCTION_METRICS = COMMON_METRICS | {"perplexity", "routing_accuracy"}

LAYERS_PATTERN = re.compile(r"^(all|lower-half|upper-half|\d+-\d+|\d+)$")


class TrialParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- PEFT method and adapter shape
    method: Literal["lora", "dora", "rslora", "head-only"] = Field(
        "lora", description="lora; dora (weight-decomposed LoRA); rslora (alpha/sqrt(r) scaling); head-only "
        "(classification: the base stays frozen and only the head trains, a rank-0 adapter: with head_init: probe "
        "it is the linear probe, fine-tuned; rank, alpha, target and layers are then ignored).",
    )
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r: the inner dimension of B·A.")
    alpha: float | None = Field(
        None, gt=0, description="LoRA alpha (absolute). When unset, alpha = alpha_ratio × rank."
    )
    alpha_ratio: float = Field(2.0, gt=0, le=64, description="alpha as a multiple of rank, used when alpha is unset.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target: Literal["attention", "ffn", "all-linear"] = Field(
        "attention", description="Layer group to adapt, resolved per architecture (BERT, Llama, GPT-2 families)."
    )
    layers: str = Field(
        "all", description="Which transformer blocks: all, lower-half, upper-half, `N` or an inclusive range `A-B`."
    )
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="Classification, BERT family: classify the mask-weighted mean of the last hidden states "
        "(what sentence-embedding checkpoints such as MiniLM were trained for) or the pooled [CLS] vector.",
    )
    head_init: Literal["random", "probe"] = Field(
        "random",
        description="Classification: start the head from random weights, or from the linear probe on the frozen "
        "base (LP-FT, Kumar et al. 2022): the adapter then trains against a head that already fits the features, "
        "instead of absorbing a random head's large early gradients. The probe is fitted once per base and data.",
    )
    restore_best: bool = Field(
        False,
        description="Keep the weights of the best validation epoch (macro_f1 for classification, loss for "
        "instruction) instead of the last; the trial's metrics are that epoch's (best_epoch says which).",
    )
    # --- quantization of the frozen base (bitsandbytes)
    quantization: Literal["none", "int8", "nf4", "fp4"] = Field(
        "none", description="Base-model weights: none (full precision), int8 (LLM.int8), nf4 or fp4 (4-bit)."
    )
    double_quant: bool = Field(True, description="4-bit only: quantize the quantization constants too.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="4-bit only: dtype the dequantized matmul runs in. auto: bfloat16 where the hardware has fast "
        "bf16 (CUDA, CPUs with AMX or AVX512-BF16), else float32 (bf16 on an AVX2-only CPU was ~100x slower).",
    )
    # --- optimisation
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="AdamW peak learning rate (linear warm-up and decay).")
    head_lr_ratio: float = Field(
        10.0, gt=0, le=1000,
        description="Learning rate of the fully trained head (classifier) as a multiple of learning_rate: a fresh "
        "head needs larger steps than the low-rank update to converge within a few epochs.",
    )
    epochs: int = Field(3, ge=1, le=1000, description="Passes over the training split.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per optimisation step.")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay on trainable parameters.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    class_balance: Literal["weighted_loss", "balanced_sampler", "none"] = Field(
        "weighted_loss",
        description="Imbalance handling: inverse-frequency class weights in the loss, a balanced sampler, or none "
        "(an unweighted loss collapses to the majority class on skewed data).",
    )
    k_per_class: int | None = Field(None, ge=1, description="Few-shot: keep k training examples per class.")
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 autocast: auto uses it where the CPU has AMX or AVX512-BF16 or the GPU supports "
        "bf16; on, off (a bare YAML on/off works too)."
    )
    packing: bool = Field(False, description="Instruction task: pack several examples into one sequence.")
    max_memory_mb: float | None = Field(
        None, gt=0, description="Fail the trial as infeasible when its measured peak exceeds this."
    )

    @field_validator("bf16", mode="before")
    @classmethod
    def _bf16_switch(cls, value):
        # YAML reads a bare `bf16: off` (and `--set bf16=on`) as a boolean: take it as the switch it means.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("layers")
    @classmethod
    def _layers_form(cls, value: str) -> str:
        if not LAYERS_PATTERN.match(value):
            raise ValueError("expected all, lower-half, upper-half, N or A-B (inclusive block range)")
        if "-" in value and value[0].isdigit():
            start, end = map(int, value.split("-"))
            if start > end:
                raise ValueError(f"range start {start} is after its end {end}")
        return value

    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else self.alpha_ratio * self.rank

    def flat(self) -> dict[str, str | int | float | bool | None]:
        """MLflow-ready params, plus the derived effective alpha."""
        return {**self.model_dump(), "effective_alpha": self.lora_alpha()}


def resolve_layers(layers: str, num_layers: int) -> list[int] | None:
    """Block indices for a `layers` value; None means every block (PEFT's default)."""
    if layers == "all":
        return None
    half = num_layers // 2
    if layers == "lower-half":
        return list(range(half))
    if layers == "upper-half":
        return list(range(half, num_layers))
    start, _, end = layers.partition("-")
    idx = list(range(int(start), int(end or start) + 1))
    if idx[-1] >= num_layers:
        raise ValueError(f"layers={layers!r} but the model has {num_layers} blocks (0-{num_layers - 1})")
    return idx
