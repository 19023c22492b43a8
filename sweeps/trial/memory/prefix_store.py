"""Frozen-prefix rows on disk (prefix.py's cache, shared): the sweep's driver computes the rows once beside the
linear probe with every core and writes them; each worker, and a later sweep on the same store, reads them instead
of computing them on its one core. Safetensors only (tensors, no pickle); the file's key is the caller's
(ClassificationTask.prefix_file), the depth is checked against the file's metadata."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sweeps.trial.memory import prefix


def save(model: torch.nn.Module, rows, path) -> int:
    """Write the cached features of the token-id `rows` to `path` (safetensors: tensors only, no pickle), whole
    (temp file + rename, so a concurrent reader sees the old file or the new one). Returns the rows written."""
    from safetensors.torch import save_file

    cache = prefix.cache_of(model)
    if cache is None:
        return 0
    tensors: dict[str, torch.Tensor] = {}
    seen: set[bytes] = set()
    for row in rows:
        ids, key = prefix.row_key(row)
        value = cache.rows.get(key)
        if value is not None and key not in seen:
            seen.add(key)
            i = len(seen) - 1
            tensors[f"{i}.ids"], tensors[f"{i}.x"] = ids, value.contiguous()
    if not tensors:
        return 0
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={"blocks": str(cache.blocks)})
        os.replace(tmp, path)
    except OSError:  # a full or read-only store costs the next worker the computation, nothing else
        tmp.unlink(missing_ok=True)
        return 0
    return len(tensors) // 2


def load(model: torch.nn.Module, path) -> int:
    """Put the rows of a file written by `save` (same base, depth and precision: the caller's key) into the
    model's cache; returns the rows added (0: no file, an unreadable one, or another depth)."""
    from safetensors import SafetensorError, safe_open

    cache = prefix.cache_of(model)
    if cache is None or not Path(path).is_file():
        return 0
    added = 0
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("blocks") != str(cache.blocks):
                return 0
            for i in range(len(f.keys()) // 2):
                key = f.get_tensor(f"{i}.ids").numpy().tobytes()
                if key not in cache.rows:
                    cache.put(key, f.get_tensor(f"{i}.x"))
                    added += 1
    except (OSError, SafetensorError):  # truncated or foreign: compute instead
        return added
    return added
