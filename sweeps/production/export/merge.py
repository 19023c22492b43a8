"""`sweep export REF --merge [--gguf]`: fold an adapter into its base and write a standalone model.

    sweep export reviews@champion --merge --out exported/reviews
    sweep export helpdesk@champion --merge --gguf --out exported/helpdesk     # + helpdesk.gguf for llama.cpp

The base is loaded exactly as the adapter was trained on it: an adapter trained on an nf4/int8 base is merged
into the dequantized weights of that quantized base (what its forward passes saw), not into the original fp32
weights. The result is safetensors + tokenizer (+ labels.json / chat.json), and export.json with provenance.

BERT-family classifiers trained with mean pooling keep no pooler weights (pretrained.MeanPooler has none):
export.json records `pooling: mean`, and `load_merged` puts the mean pooler back.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from sweeps import bundled
from sweeps.production import sources
from sweeps.spec import ModelSpec
from sweeps.spec.params import TrialParams
from sweeps.trial.adapters import disk, multi
from sweeps.trial.models import precision, pretrained

log = logging.getLogger(__name__)
EXPORT_FILE = "export.json"
_QUANT_KEYS = ("quantization", "double_quant", "compute_dtype")


class ExportError(ValueError):
    pass


def _quantization(found: sources.Located, override: str | None) -> dict:
    """How the base was quantized when the adapter was trained: --base-quantization, else the registry tag."""
    if override:
        return {"quantization": override}
    raw = found.tags.get("quantization") if found.tags else None
    try:
        recorded = json.loads(raw) if raw else {}
    except ValueError:
        recorded = {"quantization": raw}
    return {k: v for k, v in recorded.items() if k in _QUANT_KEYS}


def _source_gguf(base: str | None) -> Path | None:
    """The GGUF file a bundled base was converted from (its tokenizer metadata is copied into the export)."""
    if base and base.startswith("bundled:"):
        path = bundled.model_path(base)
        return path if path.suffix == ".gguf" else None
    return None


def merge(found: sources.Located, quantization: str | None = None, device: str = "cpu",
          allow_unverified_base: bool = False):
    """(merged model, tokenizer, base path, quantization used) for a located adapter; refuses a changed base,
    and one that cannot be checked (no recorded hash) unless `allow_unverified_base`."""
    if not found.base:
        raise ExportError(f"{found.ref}: the adapter does not record its base model")
    base_path = pretrained.resolve_base(ModelSpec(base=found.base))
    try:
        actual, hash_error = pretrained.content_hash(base_path), None
    except OSError as exc:
        actual, hash_error = None, f"{type(exc).__name__}: {exc}"
    warning = sources.check_unverified(found, found.base, actual, allow_unverified_base, hash_error)
    if warning:
        log.warning("%s", warning)
    elif found.base_sha256 != actual:
        raise ExportError(f"{found.ref} was trained on {found.base} with sha256 {found.base_sha256[:12]}; the base "
                          f"found now has sha256 {actual[:12]}: refusing to merge into other weights")
    quant = _quantization(found, quantization)
    params = TrialParams(pooling=found.pooling, **quant)
    labels = len(found.labels) if found.labels else None
    model = pretrained.load_base(base_path, found.task, labels, params, device)
    model = precision.dequantized(model)
    merged = multi.merge(disk.load_adapter(model, found.path))
    if found.labels:
        merged.config.id2label = dict(enumerate(found.labels))
        merged.config.label2id = {label: i for i, label in enumerate(found.labels)}
    return merged, pretrained.load_tokenizer(base_path), base_path, quant.get("quantization", "none")


def export(ref: str, out: Path, gguf: bool = False, gguf_type: str = "f16", quantization: str | None = None,
           tracker=None, allow_unverified_base: bool = False) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty: pick a new --out directory")
    with tempfile.TemporaryDirectory(prefix="sweeps-export-") as tmp:
        found = sources.locate(ref, Path(tmp), tracker)
        if gguf and found.task != "instruction":
            raise ExportError("--gguf exports causal LMs (instruction adapters); this is a classification adapter")
        merged, tokenizer, base_path, quant = merge(found, quantization, allow_unverified_base=allow_unverified_base)
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        for extra in ("labels.json", "chat.json"):
            if (found.path / extra).is_file():
                shutil.copy2(found.path / extra, out / extra)
    summary = {"ref": ref, **{k: v for k, v in found.describe().items() if k != "ref"}, "merged_into": str(base_path),
               "base_quantization": quant, "pooling": found.pooling if found.task == "classification" else None,
               "files": sorted(p.name for p in out.iterdir())}
    if gguf:
        from sweeps.production.export.gguf_writer import write_gguf

        summary["gguf"] = write_gguf(out, out / f"{found.name}.gguf", _source_gguf(found.base), gguf_type)
    (out / EXPORT_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def load_merged(path: Path, device: str = "cpu") -> torch.nn.Module:
    """An exported model, ready for inference (mean pooling restored where the adapter was trained with it)."""
    info = json.loads((Path(path) / EXPORT_FILE).read_text(encoding="utf-8"))
    labels = info.get("labels")
    params = TrialParams(pooling=info.get("pooling") or "mean")
    model = pretrained.load_base(Path(path), info["task"], len(labels) if labels else None, params, device)
    return model.eval()
