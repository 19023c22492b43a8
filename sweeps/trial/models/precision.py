"""Precision of a base: bitsandbytes quantization (int8, nf4, fp4) and what it takes to train on it, the compute
dtype, bf16 support of the hardware, and the bytes the weights really take (packed, with their quant state)."""

from __future__ import annotations

import functools

import torch
from transformers import BitsAndBytesConfig, PreTrainedModel

from sweeps.spec.params import TrialParams

# Classification heads stay in full precision: bitsandbytes layers there break the forward pass (DESIGN.md), and
# the head is trained anyway. transformers matches these from the start of a module name, as a regex, or as a
# suffix; the pooler sits under the base prefix (`bert.pooler.dense`), hence the regex.
HEAD_SKIP_PATTERNS = ["classifier", "score", r".*pooler", "lm_head"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _compute_dtype(params: TrialParams, device: str) -> torch.dtype:
    if params.compute_dtype == "auto":
        return torch.bfloat16 if detect_bf16(device) else torch.float32
    return _DTYPES[params.compute_dtype]


def quantization_config(params: TrialParams, device: str = "cpu") -> BitsAndBytesConfig | None:
    if params.quantization == "none":
        return None
    if params.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=HEAD_SKIP_PATTERNS)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=params.quantization,  # nf4 | fp4
        bnb_4bit_use_double_quant=params.double_quant,
        bnb_4bit_compute_dtype=_compute_dtype(params, device),
        llm_int8_skip_modules=HEAD_SKIP_PATTERNS,
    )


def keep_4bit_trainable(model: torch.nn.Module) -> None:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights (CPUs with AVX512-BF16), and let 4-bit
    layers follow autocast (`_autocast_input`).

    On such a CPU, the first forward of a Linear4bit in eval mode without grad (an evaluation, the zero-shot
    baseline) repacks its weight for a bf16 kernel, for good. Training forwards afterwards take that kernel, which
    autograd does not go through: gradients stop at every 4-bit layer, so LoRA below the top block hardly learns
    (measured on a tiny Llama: the block-0 LoRA gradient fell from 1.63 to 0.04), and evaluation runs in bf16 while
    training ran in the compute dtype. One 4-bit path for training and evaluation keeps both right.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
        if hasattr(module, "compute_type_is_set"):  # a bitsandbytes Linear4bit
            module.register_forward_pre_hook(_autocast_input)


def _autocast_input(module: torch.nn.Module, args: tuple):
    """Under autocast, give a 4-bit layer its input in the autocast dtype, as autocast does for nn.Linear.

    bitsandbytes returns a Linear4bit's output in its input's dtype; autocast leaves the residual stream in fp32,
    so every 4-bit projection returned fp32 where nn.Linear returns bf16, and the tensors autograd keeps for
    backward were twice the size: measured on SmolLM2 (8 x 215 tokens), 1.43 GB saved per step with an nf4 base
    against 1.30 GB with the fp32 base, which ate the 370 MB the 4-bit weights save.
    """
    device = args[0].device.type if args and isinstance(args[0], torch.Tensor) else None
    if device is None or not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    return (args[0].to(dtype), *args[1:]) if args[0].is_floating_point() and args[0].dtype != dtype else None


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters + buffers as stored; quantized weights count packed bytes plus their quant state."""
    total, seen = 0, set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:  # tied weights (embeddings / lm_head) are stored once
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
        total += _quant_state_bytes(tensor)
    for module in model.modules():
        # bitsandbytes' int8 layer moves the row scales from its weight to `module.state` on its first forward:
        # a base that has run (a worker's reused one) holds the same bytes as a fresh load
        weight, scb = getattr(module, "weight", None), getattr(getattr(module, "state", None), "SCB", None)
        if isinstance(scb, torch.Tensor) and getattr(weight, "SCB", None) is None:
            total += scb.numel() * scb.element_size()
    return total


def _quant_state_bytes(tensor: torch.Tensor) -> int:
    extra = 0
    scb = getattr(tensor, "SCB", None)  # int8: one fp32 scale per row
    if isinstance(scb, torch.Tensor):
        extra += scb.numel() * scb.element_size()
    state = getattr(tensor, "quant_state", None)  # 4-bit: absmax per block (+ nested state when double-quant)
    if state is not None and hasattr(state, "as_dict"):
        for value in state.as_dict(packed=True).values():
            if isinstance(value, torch.Tensor):
                extra += value.numel() * value.element_size()
    return extra


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none), read once per process."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[-1].split())
    except OSError:
        pass
    return frozenset()


def has_amx() -> bool:
    """The CPU has AMX for bf16 (its flags; torch 2.13 has no public query)."""
    return "amx_bf16" in _cpu_flags()


def detect_bf16(device: str | torch.device) -> bool:
    """bf16 pays off only with hardware support: AMX or AVX512-BF16 on CPU, bf16 tensor cores on GPU.

    Measured matmuls at 1 thread, bf16 vs fp32: 4.7x on an AVX512-BF16 EPYC (Zen 5), ~6x with AMX; on an AVX2-only
    EPYC bf16 is emulated and was 100x+ slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    amx = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    if amx is not None and amx():
        return True
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def dequantized(model: PreTrainedModel) -> PreTrainedModel:
    """A bitsandbytes-quantized model with plain fp32 linear layers holding the weights its quantized layers
    computed with: what an adapter trained on that base saw, so merging into these reproduces base+adapter."""
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize()
    return model.to(torch.float32)
