"""What a saved PEFT adapter says about itself (adapter_config.json), read without loading its weights or importing
peft: which files make an adapter, its task, the pooling it was trained with, its rank and its base."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
# adapter_config.json's task_type -> our task names
TASKS = {"SEQ_CLS": "classification", "CAUSAL_LM": "instruction"}


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))


def config_task(config: dict) -> str | None:
    """classification | instruction, from PEFT's task_type (None for a task we do not serve)."""
    return TASKS.get(config.get("task_type") or "")


def config_pooling(config: dict) -> str:
    # The trial swaps BERT's pooler for a weightless mean pooler unless pooling=cls; only the dense CLS pooler has
    # weights, so it is in modules_to_save exactly when the adapter was trained with cls pooling.
    return "cls" if "pooler" in (config.get("modules_to_save") or []) else "mean"


def config_rank(config: dict) -> int | None:
    return config.get("r")


def config_base(config: dict) -> str | None:
    """The base model the adapter was trained on, as PEFT recorded it (a path or a hub id)."""
    return config.get("base_model_name_or_path")
