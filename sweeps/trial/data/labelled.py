"""Classification data: load, clean, split (stratified, seeded), few-shot sample (tokenized.py caches the tokens).

It never imports torch: the trial process hands in a tokenizer and gets back plain `datasets.Dataset`s.
Selection uses `validation` (carved out of train here, so every trial of a sweep sees the same carve for a seed);
`test` is held out and only touched for the promoted adapter.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from dataclasses import dataclass, field

import datasets
import numpy as np

from sweeps.spec import DataSpec
from sweeps.trial.data.reading import DataError, read_source, test_split

# Bump when the cleaning below changes: fingerprints (and the tokenized caches keyed on them) change with it.
_PREP_VERSION = "1"


@dataclass(frozen=True)
class TaskData:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    labels: list[str]
    fingerprint: str
    # rows dropped while cleaning, e.g. {"train.empty_text": 3, "test.missing_label": 1}
    dropped: dict[str, int] = field(default_factory=dict)

def _label_str(value, feature) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(feature, datasets.ClassLabel):
        return None if value < 0 else feature.int2str(value)  # -1 marks unlabelled rows (e.g. GLUE test)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # an int column with a gap is read as float: 1.0 is label "1"
    return str(value)

def _clean(ds: datasets.Dataset, data: DataSpec, what: str, unescape: bool, dropped: dict[str, int]):
    for col in (data.text_column, data.label_column):
        if col not in ds.column_names:
            kind = "text" if col == data.text_column else "label"
            raise DataError(f"{what}: no {kind} column {col!r}; columns: {', '.join(ds.column_names)}")
    if len(ds) == 0:
        raise DataError(f"{what}: no rows")
    feature = ds.features[data.label_column]
    texts, labels = [], []
    for text, label in zip(ds[data.text_column], ds[data.label_column], strict=True):
        text = "" if text is None else str(text)
        if unescape:  # drug reviews: `"I didn&#039;t ..."` -> `I didn't ...` (quotes wrap every review)
            text = html.unescape(text).strip().removeprefix('"').removesuffix('"')
        text, label = text.strip(), _label_str(label, feature)
        if not text:
            dropped[f"{what}.empty_text"] = dropped.get(f"{what}.empty_text", 0) + 1
        elif label is None:
            dropped[f"{what}.missing_label"] = dropped.get(f"{what}.missing_label", 0) + 1
        else:
            texts.append(text)
            labels.append(label)
    if not texts:
        raise DataError(f"{what}: no rows with both text and label")
    return texts, labels

def _listed(texts: list[str], labels: list[str], data: DataSpec, split: str, dropped: dict[str, int]):
    """With data.labels and other_labels: drop, only the rows of a listed label (the others counted as dropped)."""
    if not data.labels or data.other_labels != "drop":
        return texts, labels
    listed = set(data.labels)
    keep = [i for i, label in enumerate(labels) if label in listed]
    if len(keep) < len(labels):
        dropped[f"{split}.unlisted_label"] = dropped.get(f"{split}.unlisted_label", 0) + len(labels) - len(keep)
    if not keep:
        raise DataError(f"{data.source} ({split}): no row has one of data.labels {data.labels}")
    return [texts[i] for i in keep], [labels[i] for i in keep]

def _to_dataset(texts: list[str], labels: list[str], names: list[str], what: str) -> datasets.Dataset:
    index = {name: i for i, name in enumerate(names)}
    unseen = sorted(set(labels) - set(index))
    if unseen:
        raise DataError(f"{what}: label(s) {unseen} not among the training labels {names}")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"text": texts, "label": [index[x] for x in labels]}, features=features)

def _stratified_indices(labels: np.ndarray, n_classes: int, fraction: float, seed: int):
    """Per class: seeded shuffle, first round(fraction*n) to validation (at least 1, leaving 1 to train)."""
    rng = np.random.default_rng(seed)
    val = []
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        n_val = min(max(int(math.floor(fraction * len(idx) + 0.5)), 1), len(idx) - 1)
        val.extend(rng.permutation(idx)[:n_val].tolist())
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val)

def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) row indices, `fraction` of each label carved out for validation, seeded."""
    names = sorted(set(labels))
    codes = np.asarray([names.index(x) for x in labels])
    return _stratified_indices(codes, len(names), fraction, seed)

def fold_of(labels: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """Stratified fold number (0..folds-1) of every row: per class, a seeded shuffle dealt out round-robin."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=np.int64)
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = np.arange(len(idx)) % folds
    return out

def load_classification(data: DataSpec, seed: int, fold: int | None = None) -> TaskData:
    """Train/validation/test of a classification source.

    With `data.folds: K`, `fold=i` makes validation the i-th stratified fold of the training data and train the
    other K-1 folds; `fold=None` then trains on all of it (the refit) and validation is empty. The test split is
    the same in every case and never part of a fold.
    """
    h = hashlib.sha256()
    raw, unescape = read_source(data, h)
    test_raw, test_name = test_split(data, raw, h)
    dropped: dict[str, int] = {}
    texts, labels = _listed(*_clean(raw["train"], data, f"{data.source} (train)", unescape, dropped), data,
                            "train", dropped)
    distinct = sorted(set(labels))
    if data.labels:
        extra = [x for x in distinct if x not in data.labels]
        if extra:
            raise DataError(f"{data.source}: training label(s) {extra} not in data.labels {data.labels}")
    names = list(data.labels) if data.labels else distinct
    if len(distinct) < 2:
        raise DataError(f"{data.source}: training data has only one class ({distinct[0]!r}); need at least 2")
    counts = {name: labels.count(name) for name in names}
    small = {name: n for name, n in counts.items() if n < 2}
    if small:
        raise DataError(f"{data.source}: class(es) with fewer than 2 examples cannot be split stratified: "
                        f"{small}")
    full = _to_dataset(texts, labels, names, f"{data.source} (train)")
    codes = np.asarray(list(full["label"]))
    if data.folds:
        small = {name: n for name, n in counts.items() if n < data.folds}
        if small:
            raise DataError(f"{data.source}: data.folds={data.folds} needs at least {data.folds} examples of each "
                            f"class; these have fewer: {small}")
        assigned = fold_of(codes, len(names), data.folds, seed)
        if fold is not None and not 0 <= fold < data.folds:
            raise ValueError(f"fold {fold} out of range 0..{data.folds - 1}")
        val_idx = [] if fold is None else np.flatnonzero(assigned == fold).tolist()
        train_idx = np.flatnonzero(assigned != fold).tolist() if fold is not None else list(range(len(codes)))
    else:
        train_idx, val_idx = _stratified_indices(codes, len(names), data.validation_fraction, seed)
    test = None
    if test_raw is not None:
        test = _to_dataset(*_listed(*_clean(test_raw, data, f"{test_name} (test)", unescape, dropped), data,
                                    "test", dropped), names, f"{test_name} (test)")
    settings = [_PREP_VERSION, data.validation_fraction, seed, data.text_column, data.label_column, names,
                data.test]
    if data.labels and data.other_labels == "drop":  # fewer rows: not the same data (existing digests unchanged)
        settings.append("drop-unlisted")
    if data.folds:  # a fold is another carve: its tokenized cache and fingerprint are its own
        settings += [data.folds, fold]
    h.update(json.dumps(settings).encode())
    return TaskData(train=full.select(train_idx), validation=full.select(val_idx), test=test, labels=names,
                    fingerprint=h.hexdigest(), dropped=dropped)

def few_shot(ds: datasets.Dataset, k: int, seed: int) -> datasets.Dataset:
    """k examples per class (all of a class with fewer), seeded, in the dataset's original order."""
    if k < 1:
        raise DataError(f"few_shot: k must be >= 1 (got {k})")
    labels = np.asarray(list(ds["label"]), dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        keep.extend(rng.permutation(np.flatnonzero(labels == c))[:k].tolist())
    return ds.select(sorted(keep))
