"""Figures of the untuned base, computed once per base and kept: zero-shot (instruction), linear probe (classification).

Every instruction trial reports its base's zero-shot loss, perplexity and routing accuracy beside its own, and its
generations table shows the base's answers before tuning; a promotion does the same on the test split. These
depend on the base, its quantization, the device and the evaluation data, not on the adapter (it is switched off
while they are computed), so the trials of a sweep that share a base and a quantization would each repeat one
evaluation with generation (about a sixth of a 2-epoch SmolLM2 trial). They are computed once and kept as JSON
under the cache (`SWEEPS_CACHE/zero-shot/`), keyed by a hash of everything they depend on, library versions
included. Concurrent trials may both compute a missing entry; each writes it whole (rename), so either copy is
valid. SWEEPS_ZERO_SHOT_CACHE=0 computes them every time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable
from importlib import metadata

from sweeps.store import cache_dir

_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes")


def enabled() -> bool:
    return os.environ.get("SWEEPS_ZERO_SHOT_CACHE", "1") != "0"


@functools.cache
def _versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def digest(value) -> str:
    """sha256 of a JSON-able value (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def key(parts: dict) -> str:
    return digest({**parts, "versions": _versions()})[:40]


def _path(parts: dict):
    return cache_dir() / "zero-shot" / f"{key(parts)}.json"


def lookup(parts: dict):
    """The stored value for `parts`, or None (missing, unreadable, or the cache is off)."""
    if not enabled():
        return None
    try:
        return json.loads(_path(parts).read_text())["value"]
    except (OSError, ValueError, KeyError, TypeError):  # missing, or unreadable: compute it again
        return None


def cached(parts: dict, compute: Callable[[], dict]) -> dict:
    """compute()'s JSON-able result for `parts`: from the cache when there, else computed and stored."""
    if not enabled():
        return compute()
    path = _path(parts)
    value = lookup(parts)
    if value is not None:
        return value
    value = compute()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"parts": parts, "value": value}, sort_keys=True, default=str))
        os.replace(tmp, path)
    except OSError:  # a full or read-only cache costs the next trial this evaluation, nothing else
        with contextlib.suppress(OSError):
            tmp.unlink()
    return value
