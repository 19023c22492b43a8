"""The classification task inside a trial: tokenized splits, length-bucketed batches, class balance, metrics.

The trial loop (sweeps/trial/loop.py, train.py) drives it (loading, quantization, PEFT, training, memory);
instruct.py is its sibling for the instruction task. `length_batches` is shared by both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sweeps.spec import SweepSpec
from sweeps.spec.params import TrialParams
from sweeps.trial.data import labelled, tokenized

_BUCKET_BATCHES = 50  # length-sort within chunks of this many batches: little padding, still shuffled


def prepare_data(spec: SweepSpec, params: TrialParams, tokenizer, fold: int | None = None
                 ) -> tuple[labelled.TaskData, dict]:
    task = labelled.load_classification(spec.data, spec.seed, fold)
    splits = tokenized.tokenize_splits(task, tokenizer, spec.data.max_length, truncation=spec.data.truncation)
    if params.k_per_class:
        train = labelled.few_shot(task.train, params.k_per_class, spec.seed)
        keep = set(_row_keys(train))
        # few_shot keeps rows in order, so select the same rows of the tokenized train split.
        index = [i for i, key in enumerate(_row_keys(task.train)) if key in keep]
        splits["train"] = splits["train"].select(index)
    return task, splits


def _row_keys(ds) -> list[tuple]:
    # (text, label, occurrence) identifies a row even when a text repeats
    seen: dict = {}
    keys = []
    for text, label in zip(ds["text"], ds["label"], strict=True):
        n = seen.get((text, label), 0)
        seen[(text, label)] = n + 1
        keys.append((text, label, n))
    return keys


# ---------------------------------------------------------------- batching


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, shuffle: bool,
             sample_weights: np.ndarray | None = None) -> list[np.ndarray]:
    """Length-bucketed batches: sort by length within chunks of ~50 batches, then shuffle the batches."""
    n = len(lengths)
    if sample_weights is not None:
        order = rng.choice(n, size=n, replace=True, p=sample_weights / sample_weights.sum())
    else:
        order = rng.permutation(n) if shuffle else np.arange(n)
    chunk = batch_size * _BUCKET_BATCHES
    out = []
    for start in range(0, n, chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    if shuffle:
        rng.shuffle(out)
    return out


def collate(ds_cols: dict, idx: np.ndarray, pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Pad to this batch's longest example, not to max_length."""
    seqs = [ds_cols["input_ids"][i] for i in idx]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    labels = torch.tensor([ds_cols["labels"][i] for i in idx], dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _columns(ds) -> dict:
    return {"input_ids": ds["input_ids"], "labels": ds["labels"]}


# ---------------------------------------------------------------- metrics


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class F1 over the classes present in y_true or y_pred (sklearn's default label set)."""
    classes = np.union1d(y_true, y_pred)
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores)) if scores else 0.0


_BOOTSTRAP = 1000  # resamples: the SE of a macro-F1 near .5 on 120 rows (~.04) is then known to about 2 %


def bootstrap_se(y_true: np.ndarray, y_pred: np.ndarray, seed: int = 0, resamples: int = _BOOTSTRAP
                 ) -> dict[str, float]:
    """Standard errors of accuracy and macro-F1 by the bootstrap over evaluation rows (Efron & Tibshirani 1993).

    With scarce labels the validation split is small (120 rows in rank_study): two trials .03 apart in macro-F1
    are often within one SE of each other, and selection has to know that (sweeps/driver/selection compares with it).
    Seeded, so the same predictions always give the same SE.
    """
    n = len(y_true)
    if n < 2:
        return {"accuracy_se": float("nan"), "macro_f1_se": float("nan")}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    t, p = y_true[idx], y_pred[idx]
    acc = (t == p).mean(axis=1)
    classes = np.union1d(y_true, y_pred)
    f1 = np.zeros((resamples, len(classes)))
    present = np.zeros((resamples, len(classes)), dtype=bool)
    for j, c in enumerate(classes):
        tp = ((p == c) & (t == c)).sum(axis=1)
        fp = ((p == c) & (t != c)).sum(axis=1)
        fn = ((p != c) & (t == c)).sum(axis=1)
        denom = 2 * tp + fp + fn
        f1[:, j] = np.divide(2 * tp, denom, out=np.zeros(resamples), where=denom > 0)
        present[:, j] = denom > 0  # macro_f1's label set: classes seen in y_true or y_pred of this resample
    macro = (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return {"accuracy_se": float(acc.std(ddof=1)), "macro_f1_se": float(macro.std(ddof=1))}


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """accuracy and macro-F1 with their bootstrap standard errors."""
    return {"accuracy": float(np.mean(y_pred == y_true)), "macro_f1": macro_f1(y_true, y_pred),
            **bootstrap_se(y_true, y_pred)}


def class_weights(labels: np.ndarray, num_labels: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present (absent classes get 0)."""
    counts = np.bincount(labels, minlength=num_labels).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    weights *= (counts > 0).sum() / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)


def evaluate(model, ds, pad_id: int, batch_size: int, device: str, bf16: bool) -> dict[str, float]:
    """accuracy, macro_f1 (each with its bootstrap SE) and (unweighted) cross-entropy loss on a tokenized split."""
    y_true, y_pred, loss_sum = predict(model, ds, pad_id, batch_size, device, bf16)
    return {**scores(y_true, y_pred), "loss": loss_sum / len(y_true)}


def predict(model, ds, pad_id: int, batch_size: int, device: str, bf16: bool
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """(gold labels, predicted labels, summed cross-entropy) of a tokenized split, in the split's row order."""
    model.eval()
    cols = _columns(ds)
    lengths = np.array([len(x) for x in cols["input_ids"]])
    preds, golds, rows, loss_sum = [], [], [], 0.0
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size * 2, np.random.default_rng(0), shuffle=False):
            batch = collate(cols, idx, pad_id, device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits = logits.float()
            loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
            preds.append(logits.argmax(-1).cpu().numpy())
            rows.append(idx)
            golds.append(batch["labels"].cpu().numpy())
    order = np.concatenate(rows)
    y_pred, y_true = np.empty(len(order), dtype=np.int64), np.empty(len(order), dtype=np.int64)
    y_pred[order], y_true[order] = np.concatenate(preds), np.concatenate(golds)
    return y_true, y_pred, loss_sum


class ClassificationTask:
    """Batches, loss and evaluation of sequence classification for the training loop below."""

    metric_keys = ("accuracy", "macro_f1", "loss", "accuracy_se", "macro_f1_se")

    def __init__(self, spec: SweepSpec, params: TrialParams, tokenizer, fold: int | None = None):
        self.params, self.pad_id = params, tokenizer.pad_token_id
        self.data, self.splits = prepare_data(spec, params, tokenizer, fold)
        # a cross-validation refit (data.folds, all training rows) has no validation split to score per epoch
        self.has_validation = len(self.splits["validation"]) > 0
        self.num_labels = len(self.data.labels)
        self.cols = _columns(self.splits["train"])
        self.lengths = np.array([len(x) for x in self.cols["input_ids"]])
        labels = np.asarray(self.cols["labels"])
        self.weights = class_weights(labels, self.num_labels)
        self.sample_w = None
        if params.class_balance == "balanced_sampler":
            self.sample_w = self.weights.numpy()[labels].astype(np.float64)
        self._loss_fn = None
        self.tokenizer, self.spec = tokenizer, spec

    def train_batches(self, rng: np.random.Generator, device: str, batches_of):
        for idx in batches_of(self.lengths, self.params.batch_size, rng, True, self.sample_w):
            yield collate(self.cols, idx, self.pad_id, device)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        if self._loss_fn is None:
            weighted = self.params.class_balance == "weighted_loss"
            self._loss_fn = torch.nn.CrossEntropyLoss(weight=self.weights.to(batch["labels"].device)
                                                      if weighted else None)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self._loss_fn(logits.float(), batch["labels"]), int(batch["attention_mask"].sum())

    def predict(self, model, device: str, bf16: bool, split: str = "validation") -> tuple[np.ndarray, np.ndarray]:
        y_true, y_pred, _ = predict(model, self.splits[split], self.pad_id, self.params.batch_size, device, bf16)
        return y_true, y_pred

    def evaluate(self, model, device: str, bf16: bool, split: str = "validation") -> dict[str, float]:
        return evaluate(model, self.splits[split], self.pad_id, self.params.batch_size, device, bf16)

    def prefill(self, model, bf16: bool, shared: Path | None = None) -> int:
        """Frozen-prefix features of the training and validation rows, before training (prefix.fill): read from
        `shared` (a file the sweep's driver or another worker wrote for this base, data, depth and precision:
        prefix_file) where there, the rest computed and the file rewritten. Returns the rows read or computed."""
        from sweeps.trial.memory import prefix, prefix_store

        rows = [ids for split in ("train", "validation") if split in self.splits
                for ids in self.splits[split]["input_ids"]]
        device = next(model.parameters()).device
        # a reused worker's later trial finds every row cached: no need to read the file again
        loaded = prefix_store.load(model, shared) if shared is not None and prefix.uncached(model, rows) else 0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            computed = prefix.fill(model, rows, self.params.batch_size, frozen=True)
        if shared is not None and computed:
            prefix_store.save(model, rows, shared)
        return loaded + computed

    def prefix_file(self, base_hash: str, bf16: bool, device: str) -> Path | None:
        """Where this task's frozen-prefix features are shared between the driver, the workers and later sweeps
        on the same store (keyed like the probe, by everything the features depend on, library versions
        included); None where sharing is off (SWEEPS_PREFIX_SHARE=0)."""
        import os

        from sweeps.store import cache_dir
        from sweeps.trial import baseline

        if os.environ.get("SWEEPS_PREFIX_SHARE", "1") == "0":
            return None
        d, p = self.spec.data, self.params
        parts = {"kind": "frozen-prefix", "base": base_hash, "layers": p.layers, "target": p.target,
                 "quantization": p.quantization, "double_quant": p.double_quant, "bf16": bf16,
                 "device": torch.device(device).type,
                 "tokens": tokenized.tokenized_key(self.data, self.tokenizer, d.max_length, d.truncation)}
        return cache_dir() / "prefix" / f"{baseline.key(parts)}.safetensors"

    def probe_parts(self, params: TrialParams, base_hash: str) -> dict:
        """Cache key of this task's linear probe (sweeps/trial/probe.py): base, quantization, pooling, bf16, tokens,
        seed."""
        d = self.spec.data
        return {"kind": "linear-probe", "base": base_hash, "quantization": params.quantization,
                "double_quant": params.double_quant, "pooling": params.pooling, "seed": self.spec.seed,
                "bf16": params.bf16,
                "k_per_class": params.k_per_class,
                "tokens": tokenized.tokenized_key(self.data, self.tokenizer, d.max_length, d.truncation)}

    def save_extras(self, adapter_dir: Path) -> None:
        (adapter_dir / "labels.json").write_text(json.dumps(self.data.labels))

    def info(self) -> dict:
        d = self.spec.data
        return {"train_examples": len(self.splits["train"]), "validation_examples": len(self.splits["validation"]),
                "labels": self.data.labels, "data_fingerprint": self.data.fingerprint,
                "truncation": tokenized.truncation_stats(self.data, self.tokenizer, d.max_length,
                                                        truncation=d.truncation),
                "dropped_rows": dict(self.data.dropped)}


