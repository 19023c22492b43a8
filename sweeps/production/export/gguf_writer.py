"""A merged Llama-family model (HF safetensors directory) -> one GGUF file that llama.cpp runs.

The only module importing `gguf`. Tensor names come from gguf's own HF -> GGUF map; q_proj/k_proj rows are
permuted the way llama.cpp's convert_hf_to_gguf.py does, because llama.cpp applies rotary embeddings to
interleaved pairs while HF Llama rotates the two halves of each head (transformers un-permutes on GGUF load,
so a round trip through pretrained.resolve_base and back must permute again).

Metadata: the architecture's hyperparameters come from config.json. The tokenizer, when the base was itself a
GGUF (the bundled SmolLM2), is copied key by key from that file, so llama.cpp tokenizes exactly as it did for
the original; otherwise it is built from tokenizer.json (byte-level BPE only, pre-tokenizer "gpt-2").
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open

LLAMA_TYPES = {"llama"}  # mistral/qwen2 have GGUF architectures of their own, with other metadata
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
# Never copied from a source GGUF: the writer sets these itself, or they describe the old tensors.
_OWN_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


class GGUFExportError(ValueError):
    pass


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-split rotary layout -> llama.cpp's interleaved layout (convert_hf_to_gguf.LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hparams(writer: gguf.GGUFWriter, config: dict, file_type: int) -> None:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise GGUFExportError(f"rope scaling {rope.get('rope_type')!r} is not supported by this exporter")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)


def _copy_metadata(writer: gguf.GGUFWriter, source: Path) -> int:
    """Tokenizer and general.* keys of the source GGUF, with their exact value types."""
    reader = gguf.GGUFReader(str(source))
    copied = 0
    for key, field in reader.fields.items():
        if key.startswith(_OWN_KEYS) or not key.startswith(("tokenizer.", "general.")):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        copied += 1
    return copied


def _tokenizer_from_hf(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    if spec["model"]["type"] != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise GGUFExportError("without a source GGUF only byte-level BPE tokenizers (GPT-2 pre-tokenizer) are "
                              "converted; this tokenizer is " + f"{spec['model']['type']} / {pre.get('type')}")
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    special = set()
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added.get("special"):
            special.add(added["id"])
    tokens, types = [], []
    for i in range(vocab_size):  # the embedding may be padded past the tokenizer: those ids are unused
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # llama.cpp spells the GPT-2 regex "gpt-2"
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)


def _convert(name: str, data: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    if data.ndim == 1 or dtype == "f32":  # norms stay f32, as llama.cpp's own converter keeps them
        return data.astype(np.float32), None
    if dtype == "f16":
        return data.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
        return data.astype(np.float16), None  # rows must hold whole 32-value blocks
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def write_gguf(model_dir: Path, out_file: Path, source_gguf: Path | None = None, dtype: str = "f16") -> dict:
    """Write `out_file` from a merged model directory; returns a summary (tensors, metadata keys copied)."""
    model_dir, out_file = Path(model_dir), Path(out_file)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") not in LLAMA_TYPES:
        raise GGUFExportError(f"--gguf supports Llama-family causal LMs; this model is {config.get('model_type')!r}")
    if dtype not in FILE_TYPES:
        raise GGUFExportError(f"unknown GGUF type {dtype!r}; allowed: {', '.join(FILE_TYPES)}")
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _hparams(writer, config, FILE_TYPES[dtype])
    copied = _copy_metadata(writer, source_gguf) if source_gguf else 0
    if not source_gguf:
        _tokenizer_from_hf(writer, model_dir, config["vocab_size"])
    count = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                tied_head = key == "lm_head.weight" and config.get("tie_word_embeddings")
                if key.endswith("rotary_emb.inv_freq") or tied_head:
                    continue  # llama.cpp computes rotary frequencies; a tied head reuses token_embd
                target = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise GGUFExportError(f"no GGUF name for tensor {key!r}")
                data = fh.get_tensor(key).to(torch.float32).numpy()
                if key.endswith("q_proj.weight"):
                    data = permute_qk(data, n_head)
                elif key.endswith("k_proj.weight"):
                    data = permute_qk(data, n_kv)
                data, qtype = _convert(key, data, dtype)
                writer.add_tensor(target, data, raw_dtype=qtype)
                count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"gguf": str(out_file), "tensors": count, "metadata_copied": copied, "dtype": dtype,
            "tokenizer": f"copied from {source_gguf.name}" if source_gguf else "built from tokenizer.json"}
