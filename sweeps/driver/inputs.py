"""What a sweep trains, selects and tests on, described for MLflow's dataset inputs (`Tracker.start_sweep`).

One descriptor per split (train, validation, test): a name, a digest of the split's own rows (so two sweeps
whose validation splits differ show different digests in the UI's Dataset column), where the data came from,
its size and its columns. No mlflow here: sweeps/tracking (runs.py) turns the descriptors into MLflow dataset entities.

Reading the data again in the driver is cheap (the sweep's data sets are small; the driver's `prepare` has just
read and cached the same files). The train digest is that of the whole train split; a few-shot trial
(k_per_class) trains on a seeded subset of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from sweeps.spec import SweepSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def _digest(rows) -> str:
    # 16 hex digits: MLflow keeps at most 36 characters of a dataset digest
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def source_of(data_source: str) -> dict:
    """{"type": "local", "uri": ...} for a file, a folder or a bundled set; {"type": "hugging_face", "path": ...}
    for a hub id."""
    if data_source == "bundled:helpdesk":
        from sweeps.trial.data.reading import HELPDESK

        return {"type": "local", "uri": Path(HELPDESK).resolve().as_uri()}
    if data_source.startswith("bundled:"):
        from sweeps import bundled

        try:
            return {"type": "local", "uri": bundled.dataset_path(data_source).resolve().as_uri()}
        except bundled.BundledNotFound:
            return {"type": "local", "uri": data_source}
    path = Path(data_source).expanduser()
    if path.exists() or path.suffix:
        return {"type": "local", "uri": path.resolve().as_uri()}
    return {"type": "hugging_face", "path": data_source}


def describe(spec: SweepSpec) -> list[dict]:
    """Descriptors of the spec's splits; [] (with a warning) when the data cannot be read here."""
    try:
        splits, columns = _splits(spec)
    except Exception as exc:  # never fail a sweep over its UI description: prepare() has checked the data
        log.warning("could not describe the data sets of %s for MLflow: %s", spec.name, exc)
        return []
    out = []
    for context in SPLITS:
        rows = splits.get(context)
        if not rows:
            continue
        # a test file of its own (data.test) is its own source; a split name (`test`) is part of data.source
        own = context == "test" and spec.data.test and Path(spec.data.test).suffix
        where = spec.data.test if own else spec.data.source
        out.append({"name": f"{_short(where)} ({context})", "context": context, "digest": _digest(rows),
                    "rows": len(rows), "source": source_of(where), "columns": columns})
    return out


def _short(source: str) -> str:
    source = source.removeprefix("bundled:")
    return Path(source).name if "/" in source or "\\" in source else source


def _splits(spec: SweepSpec) -> tuple[dict[str, list], list[str]]:
    if spec.task == "classification":
        from sweeps.trial.data.labelled import load_classification

        task = load_classification(spec.data, spec.seed)
        splits = {name: [[t, task.labels[y]] for t, y in zip(ds["text"], ds["label"], strict=True)]
                  for name, ds in (("train", task.train), ("validation", task.validation), ("test", task.test))
                  if ds is not None}
        return splits, ["text", "label"]
    from sweeps.trial.data.chat import load_chats

    chats = load_chats(spec.data, spec.seed)
    splits = {name: [[list(map(dict, c.messages)), c.category] for c in getattr(chats, name) or []]
              for name in SPLITS}
    return splits, ["messages", "category"]
