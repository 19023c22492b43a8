"""Tokenized splits, cached on disk per tokenizer, length, truncation and data fingerprint.

Built once (in the driver's `prepare`, before any trial) in a temp dir and moved into place whole, so concurrent
trials never see half a cache; every trial of a sweep then reads the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import datasets
import numpy as np

from sweeps.store import cache_dir, publish
from sweeps.trial.data.labelled import TaskData


def _tokenize_key(task: TaskData, tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    h.update(str(len(tokenizer)).encode())
    h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the full vocab + normaliser + post-processor
    if backend is not None:
        # Drop per-call state: each `tokenizer(..., truncation=True)` rewrites it and would change the key.
        config = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        vocab = json.dumps(config, sort_keys=True)
    else:
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    h.update(vocab.encode())
    h.update(f"{max_length}|{task.fingerprint}".encode())
    return h.hexdigest()[:32]

def _head_tail(tokenizer, text: str, max_length: int) -> list[int]:
    """Keep the first quarter and the last three quarters of the token budget (Sun et al. 2019, "How to
    fine-tune BERT for text classification"): reviews and tickets tend to end with their verdict."""
    enc = tokenizer(text, return_special_tokens_mask=True)
    ids, special = enc["input_ids"], enc["special_tokens_mask"]
    lead = next((i for i, s in enumerate(special) if not s), len(ids))  # [CLS] and the like
    trail = next((i for i, s in enumerate(reversed(special)) if not s), 0)  # [SEP] and the like
    body = ids[lead:len(ids) - trail]
    budget = max_length - lead - trail
    head = budget // 4
    return ids[:lead] + body[:head] + body[len(body) - (budget - head):] + ids[len(ids) - trail:]

def _encode(ds: datasets.Dataset, tokenizer, max_length: int, truncation: str = "head"
            ) -> tuple[datasets.Dataset, dict]:
    texts = list(ds["text"])  # datasets 4+ returns a lazy Column; the tokenizer wants a list
    if not texts:  # a cross-validation refit has no validation rows
        return ds, {"examples": 0, "truncated": 0, "max_length": max_length, "truncation": truncation,
                       "median_tokens": 0.0, "p90_tokens": 0.0, "max_tokens": 0}
    # Untruncated first, to measure what truncation cuts; re-encode only the long ones with truncation.
    enc = tokenizer(texts, truncation=False, verbose=False)
    ids, mask = list(enc["input_ids"]), list(enc["attention_mask"])
    lengths = [len(x) for x in ids]
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if long and truncation == "head_tail":
        for i in long:
            ids[i] = _head_tail(tokenizer, texts[i], max_length)
            mask[i] = [1] * len(ids[i])
    elif long:
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)
        for j, i in enumerate(long):
            ids[i], mask[i] = cut["input_ids"][j], cut["attention_mask"][j]
    out = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": mask, "labels": list(ds["label"])})
    stats = {"examples": len(texts), "truncated": len(long), "max_length": max_length, "truncation": truncation,
             "median_tokens": float(np.median(lengths)) if lengths else 0.0,
             "p90_tokens": float(np.percentile(lengths, 90)) if lengths else 0.0,
             "max_tokens": max(lengths, default=0)}
    return out, stats

def tokenize_splits(task: TaskData, tokenizer, max_length: int, cache_root: Path | None = None,
                    truncation: str = "head") -> dict[str, datasets.Dataset]:
    """Tokenized splits (input_ids unpadded, attention_mask, labels), cached per tokenizer/length/data.

    truncation: "head" keeps the start of a long text; "head_tail" its first quarter and last three quarters.
    """
    final = _cache_path(task, tokenizer, max_length, cache_root, truncation)
    splits = {"train": task.train, "validation": task.validation}
    if task.test is not None:
        splits["test"] = task.test
    if not final.is_dir():
        # Built in a temp dir and moved into place whole: concurrent trials never see half a cache.
        tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        stats = {}
        for name, ds in splits.items():
            encoded, stats[name] = _encode(ds, tokenizer, max_length, truncation)
            if len(encoded):  # an empty split (a cross-validation refit's validation) is not written
                encoded.save_to_disk(str(tmp / name))
        (tmp / "truncation.json").write_text(json.dumps(stats, indent=1))
        publish(tmp, final)
    return {name: datasets.load_from_disk(str(final / name)) if (final / name).is_dir() else
            datasets.Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []}) for name in splits}

def _cache_path(task: TaskData, tokenizer, max_length: int, cache_root: Path | None, truncation: str = "head"
                ) -> Path:
    root = Path(cache_root) if cache_root is not None else cache_dir()
    (root / "tokenized").mkdir(parents=True, exist_ok=True)
    key = _tokenize_key(task, tokenizer, max_length)
    return root / "tokenized" / (key if truncation == "head" else f"{key}-{truncation}")

def tokenized_key(task: TaskData, tokenizer, max_length: int, truncation: str = "head") -> str:
    """Names the splits exactly as tokenized (tokenizer, length, truncation, data): a cache key for derived figures."""
    return _tokenize_key(task, tokenizer, max_length) + f"-{truncation}"

def truncation_stats(task: TaskData, tokenizer, max_length: int, cache_root: Path | None = None,
                     truncation: str = "head") -> dict:
    """Per split: examples, truncated (count longer than max_length), median/p90/max length in tokens."""
    tokenize_splits(task, tokenizer, max_length, cache_root, truncation)  # a cache hit when already built
    path = _cache_path(task, tokenizer, max_length, cache_root, truncation)
    return json.loads((path / "truncation.json").read_text())
