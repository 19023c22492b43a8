"""Base models and tokenizers: resolved (bundled, local or hub), converted once (GGUF), hashed, loaded, pooled.

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
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from sweeps import bundled, digest
from sweeps.spec import ModelSpec
from sweeps.spec.params import TrialParams
from sweeps.store import cache_dir
from sweeps.trial.models.precision import keep_4bit_trainable, quantization_config

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


def load_tokenizer(base: Path | str, revision: str | None = None) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(base), revision=revision, trust_remote_code=False)
    if tokenizer.pad_token is None:  # Llama/GPT-2 ship without one; padding positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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


def skeleton(base: Path | str, task: str, num_labels: int | None) -> PreTrainedModel:
    """The architecture without weights (meta device): enough to resolve target modules before any trial runs."""
    config = AutoConfig.from_pretrained(str(base), trust_remote_code=False)
    if task == "classification":
        config.num_labels = num_labels or 2
    with torch.device("meta"):
        return model_class(task).from_config(config, trust_remote_code=False)
