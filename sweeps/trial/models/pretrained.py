"""Base models and tokenizers: resolve, (de)quantize with bitsandbytes, load, measure.

Never runs code shipped with a model (trust_remote_code=False) and loads safetensors only, so a model file can
not execute anything on load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from sweeps import bundled, digest
from sweeps.spec import ModelSpec
from sweeps.spec.params import TrialParams
from sweeps.store import cache_dir

# Classification heads stay in full precision: bitsandbytes layers there break the forward pass (DESIGN.md), and
# the head is trained anyway. transformers matches these from the start of a module name, as a regex, or as a
# suffix; the pooler sits under the base prefix (`bert.pooler.dense`), hence the regex.
HEAD_SKIP_PATTERNS = ["classifier", "score", r".*pooler", "lm_head"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A fresh classification head is the point of fine-tuning: transformers' per-load report of its "MISSING" weights
# (and its progress bars) would print once per trial into the sweep's output.
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()


# ---------------------------------------------------------------- where the weights are


def resolve_base(model: ModelSpec) -> Path | str:
    """A local directory (bundled or user's) as a Path; anything else is a hub id, returned as a string."""
    base = model.base
    if base.startswith("bundled:"):
        name = base.removeprefix("bundled:")
        path = bundled.model_path(name)
        if path.suffix == ".gguf":
            return _dequantized_gguf(name, path)
        return path
    local = Path(base).expanduser()
    if local.is_dir():
        return local.resolve()
    return base


def _dequantized_gguf(name: str, gguf: Path) -> Path:
    """transformers dequantizes a GGUF to fp32 on every load (~14 s): do it once, keep safetensors in the cache."""
    final = cache_dir() / "models" / name
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    # The weights are plain fp32 tensors now; transformers still marks the model "quantized with gguf" and refuses
    # to save it, so drop that marker: what we write is an ordinary fp32 checkpoint.
    model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, final)  # atomic: a concurrent trial sees the whole directory or none of it
    except OSError:
        if not (final / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process converted it first
    return final


_HASHES: dict[tuple, str] = {}  # (files, sizes, mtimes) -> sha256: every trial of a worker asks for the same base


def content_hash(base: Path | str) -> str:
    """sha256 over a local model's *.safetensors (name + bytes, sorted); for a hub id, a hash of the id."""
    h = hashlib.sha256()
    path = Path(base)
    if not path.is_dir():
        h.update(f"hub:{base}".encode())
        return h.hexdigest()
    files = sorted(path.glob("*.safetensors"))
    stamp = (str(path), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp not in _HASHES:
        digest.update_named(h, files)
        _HASHES[stamp] = h.hexdigest()
    return _HASHES[stamp]


# ---------------------------------------------------------------- loading


def load_tokenizer(base: Path | str, revision: str | None = None) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(base), revision=revision, trust_remote_code=False)
    if tokenizer.pad_token is None:  # Llama/GPT-2 ship without one; padding positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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


def model_class(task: str):
    if task == "classification":
        return AutoModelForSequenceClassification
    if task == "instruction":
        return AutoModelForCausalLM
    raise ValueError(f"unknown task {task!r}; allowed: classification, instruction")


def warm_imports(base: Path | str, task: str, params: TrialParams) -> None:
    """Import the modeling code (and bitsandbytes) now, so their memory is not charged to the trial's peak."""
    config = AutoConfig.from_pretrained(str(base), trust_remote_code=False)
    model_class(task)._model_mapping[type(config)]  # noqa: B018 - the lookup imports modeling_<arch>
    if params.quantization != "none":
        import bitsandbytes  # noqa: F401
        import transformers.integrations.bitsandbytes  # noqa: F401
        import transformers.quantizers.auto  # noqa: F401


def load_base(base: Path | str, task: str, num_labels: int | None, params: TrialParams, device: str,
              revision: str | None = None) -> PreTrainedModel:
    """The frozen base in fp32 (or quantized per params), on `device`."""
    kwargs: dict = {"trust_remote_code": False, "use_safetensors": True, "revision": revision}
    if task == "classification":
        if not num_labels:
            raise ValueError("classification needs num_labels")
        # A base that is already a classifier with another label count gets a fresh head of the right size.
        kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    qconfig = quantization_config(params, device)
    if qconfig is not None:
        # bitsandbytes quantizes while loading onto the target device; a later .to() cannot move packed weights.
        kwargs.update(quantization_config=qconfig, device_map={"": device})
    else:
        kwargs["dtype"] = torch.float32
    model = model_class(task).from_pretrained(str(base), **kwargs)
    if qconfig is None:
        model.to(device)
        _own_weights(model)
    else:
        keep_4bit_trainable(model)
    if task == "classification" and params.pooling == "mean":
        use_mean_pooling(model)
    return model


def _own_weights(model: torch.nn.Module) -> None:
    """Copy weights that still sit in the memory-mapped checkpoint into the process's own memory.

    transformers maps a safetensors file and a full-precision CPU model keeps pointing into it: file pages, which
    the measured peak (anonymous memory) never sees, so an fp32 base looked 538 MB lighter than it is on SmolLM2
    while an nf4 base, quantized into new tensors, was counted in full. Owned weights make `none` and the
    quantized modes comparable, and are what training holds anyway. On GPU the weights were copied already.
    """
    if next(model.parameters()).device.type != "cpu":
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()


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


class MeanPooler(torch.nn.Module):
    """Replaces BERT's pooler: the mask-weighted mean of the last hidden states instead of dense(tanh([CLS])).

    Sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained for mean pooling; their [CLS] vector
    was not. Measured on the drug reviews (LoRA r=8, lr 2e-3, 3 epochs): validation macro-F1 .47 mean vs .40 CLS.
    The attention mask reaches it through a pre-hook on the encoder, as BERT calls its pooler without the mask.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return hidden_states.mean(dim=1)
        mask = self.mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def use_mean_pooling(model: PreTrainedModel) -> bool:
    """Swap in MeanPooler where the architecture has a pooler (BERT family); others keep their own pooling."""
    encoder = getattr(model, model.base_model_prefix, None)
    if encoder is None or getattr(encoder, "pooler", None) is None:
        return False
    pooler = MeanPooler()
    encoder.pooler = pooler

    def capture_mask(module, args, kwargs):
        pooler.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    encoder.register_forward_pre_hook(capture_mask, with_kwargs=True)
    return True


# ---------------------------------------------------------------- facts about a model / device


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
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return bool({"amx_bf16", "avx512_bf16"} & set(line.split()))
    except OSError:
        pass
    return False


def skeleton(base: Path | str, task: str, num_labels: int | None) -> PreTrainedModel:
    """The architecture without weights (meta device): enough to resolve target modules before any trial runs."""
    config = AutoConfig.from_pretrained(str(base), trust_remote_code=False)
    if task == "classification":
        config.num_labels = num_labels or 2
    with torch.device("meta"):
        return model_class(task).from_config(config, trust_remote_code=False)


def dequantized(model: PreTrainedModel) -> PreTrainedModel:
    """A bitsandbytes-quantized model with plain fp32 linear layers holding the weights its quantized layers
    computed with: what an adapter trained on that base saw, so merging into these reproduces base+adapter."""
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize()
    return model.to(torch.float32)
