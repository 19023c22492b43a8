"""Classification data: load, clean, split (stratified, seeded), few-shot sample, tokenize (cached on disk).

The only module that imports `datasets`. It never imports torch: the trial process hands in a tokenizer and
gets back plain `datasets.Dataset`s. Selection uses `validation` (carved out of train here, so every trial of
a sweep sees the same carve for a seed); `test` is held out and only touched for the promoted adapter.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from sweeps import bundled, digest
from sweeps.spec import DataSpec
from sweeps.store import cache_dir

# Bump when the cleaning below changes: fingerprints (and the tokenized caches keyed on them) change with it.
_PREP_VERSION = "1"
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_DRUG_FILES = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
HELPDESK = Path(__file__).parent / "assets" / "helpdesk"
_HELPDESK_SPLITS = ("train", "validation", "test")
# Per-split progress bars of a few hundred rows only clutter the sweep's live view and CI logs.
datasets.disable_progress_bars()


class DataError(ValueError):
    """Bad input data; the message names the file/column/value and what is allowed."""


@dataclass(frozen=True)
class TaskData:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    labels: list[str]
    fingerprint: str
    # rows dropped while cleaning, e.g. {"train.empty_text": 3, "test.missing_label": 1}
    dropped: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- reading raw splits


def _hf_cache() -> str:
    # Keep datasets' arrow caches inside the sweep store, not ~/.cache, so the store stays self-contained.
    return str(cache_dir() / "hf-datasets")


def _read_file(path: Path, h: hashlib._Hash) -> datasets.Dataset:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unknown extension {path.suffix!r}; allowed: {', '.join(_BUILDERS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    digest.update_named(h, [path])
    kwargs = {}
    if builder == "csv":
        # Only empty cells are missing: pandas' defaults would turn labels such as "NA" or "None" into NaN.
        kwargs = {"delimiter": "\t" if path.suffix.lower() == ".tsv" else ",", "keep_default_na": False,
                  "na_values": [""]}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=_hf_cache(),
                                     **kwargs)
    except Exception as exc:  # the builders raise pandas/pyarrow/json errors of many types
        if "corresponds to no data" in str(exc):  # datasets' words for a header-only file
            raise DataError(f"{path}: no rows") from exc
        raise DataError(f"{path}: could not read it as {builder}: {exc}") from exc


def _extract_bundled_drug_reviews() -> Path:
    zip_path = bundled.dataset_path("drug-reviews")
    target = cache_dir() / "bundled" / f"drug-reviews-{digest.file_sha256(zip_path)[:16]}"
    if not target.is_dir():
        tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        with zipfile.ZipFile(zip_path) as zf:  # read named members only: no path from the archive is trusted
            for name in _DRUG_FILES.values():
                (tmp / name).write_bytes(zf.read(name))
        _publish(tmp, target)
    return target


def _read_source(data: DataSpec, h: hashlib._Hash) -> tuple[dict[str, datasets.Dataset], bool]:
    """All splits of `data.source` by name, and whether its text is HTML-escaped (the drug reviews are)."""
    source = data.source
    if source.startswith("bundled:"):
        try:
            folder = _extract_bundled_drug_reviews() if source == "bundled:drug-reviews" else None
        except bundled.BundledNotFound as exc:
            raise DataError(str(exc)) from exc
        if source == "bundled:helpdesk":  # our own data set, shipped inside the package (sweeps/assets)
            return {split: _read_file(HELPDESK / f"{split}.jsonl", h) for split in _HELPDESK_SPLITS}, False
        if folder is None:
            raise DataError(f"unknown bundled dataset {source!r}; allowed: bundled:drug-reviews, bundled:helpdesk")
        return {split: _read_file(folder / name, h) for split, name in _DRUG_FILES.items()}, True
    path = Path(source).expanduser()
    if not path.is_dir() and (path.is_file() or path.suffix):
        return {"train": _read_file(path, h)}, False
    if path.is_dir():  # a dataset folder (train.csv, test.csv, ...): hash its content, not its mtimes
        digest.update_named(h, sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
    try:
        loaded = datasets.load_dataset(str(path) if path.is_dir() else source, cache_dir=_hf_cache())
    except Exception as exc:  # offline, unknown id, bad folder layout, ...
        raise DataError(f"could not load dataset {source!r}: {exc}") from exc
    if not path.is_dir():  # hub: datasets' fingerprints follow the resolved revision
        h.update("".join(loaded[s]._fingerprint for s in sorted(loaded)).encode())
    return dict(loaded), False


# ---------------------------------------------------------------- cleaning and splitting


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


def _test_split(data: DataSpec, raw: dict, h: hashlib._Hash) -> tuple[datasets.Dataset | None, str]:
    if "train" not in raw:
        raise DataError(f"{data.source}: no 'train' split; splits: {', '.join(sorted(raw))}")
    if data.test is None:
        return raw.get("test"), "test"
    if data.test in raw:
        return raw[data.test], data.test
    if Path(data.test).expanduser().is_file() or Path(data.test).suffix:
        return _read_file(Path(data.test).expanduser(), h), data.test
    raise DataError(f"test split {data.test!r} not found; {data.source} has splits {sorted(raw)} "
                    "(or give a .csv/.tsv/.jsonl/.json/.parquet file)")


def read_records(data: DataSpec) -> tuple[dict[str, list[dict]], str]:
    """Every split of the source as plain row dicts (train, test when there is one, and any other split such as a
    fixed validation), plus a fingerprint of the files: the instruction task's raw input (sweeps.chat)."""
    h = hashlib.sha256()
    raw, _ = _read_source(data, h)
    test, _ = _test_split(data, raw, h)
    out = {name: split.to_list() for name, split in raw.items() if name != "test"}
    if test is not None:
        out["test"] = test.to_list()
    return out, h.hexdigest()


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
    raw, unescape = _read_source(data, h)
    test_raw, test_name = _test_split(data, raw, h)
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


# ---------------------------------------------------------------- tokenization cache


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished temp dir into place; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


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
        _publish(tmp, final)
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
