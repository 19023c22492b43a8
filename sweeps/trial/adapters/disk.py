"""PEFT adapters on disk: saved whole or not at all, loaded from safetensors only (never pickles), one more loaded
beside others, one of several saved on its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from peft import PeftModel

from sweeps import faults
from sweeps.trial.adapters.config import CONFIG, WEIGHTS

_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def save_adapter(model: PeftModel, out_dir: str | Path) -> Path:
    """Write into a scratch directory beside `out_dir`, then rename it into place: a full disk leaves no
    half-written adapter under the real name, and the scratch is removed (after a SIGKILL: by the next save)."""
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


def check_safetensors(path: Path) -> None:
    pickles = [p.name for p in path.rglob("*") if p.suffix in _PICKLES]
    if pickles:
        raise ValueError(f"refusing to load adapter {path}: it contains pickle files {pickles}; "
                         "only adapter_model.safetensors is accepted")
    if not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: no {WEIGHTS}")


def load_adapter(base_model: torch.nn.Module, adapter_dir: str | Path, adapter_name: str = "default") -> PeftModel:
    """Attach a saved adapter (inference mode). Refuses directories holding pickles: only safetensors load."""
    path = Path(adapter_dir)
    check_safetensors(path)
    return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, is_trainable=False,
                                     use_safetensors=True)


def add_adapter(model: torch.nn.Module, adapter_dir: str | Path, adapter_name: str) -> None:
    """Load one more adapter next to those already on `model` (same safetensors-only rule)."""
    path = Path(adapter_dir)
    check_safetensors(path)
    model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=False, use_safetensors=True)


def save_named(model: torch.nn.Module, adapter_name: str, out_dir: str | Path) -> Path:
    """Save one of several loaded adapters as a standalone adapter directory (PEFT nests non-default names)."""
    out = Path(out_dir)
    model.save_pretrained(str(out), selected_adapters=[adapter_name], safe_serialization=True)
    nested = out / adapter_name
    if adapter_name != "default" and nested.is_dir():
        for item in nested.iterdir():
            item.replace(out / item.name)
        nested.rmdir()
    if not (out / CONFIG).is_file() or not (out / WEIGHTS).is_file():
        raise RuntimeError(f"{out}: adapter {adapter_name!r} was not written")
    return out
