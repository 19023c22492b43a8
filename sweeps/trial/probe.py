"""Reference points of a classification sweep: the majority class and a linear probe on the frozen base.

An adapter is only worth shipping if it beats what the base already knows. The linear probe is that reference:
the frozen base with the trial's pooling, only a multinomial logistic-regression head trained (class-weighted,
like the trials' loss), i.e. a rank-0 adapter. Its head also warm-starts LP-FT trials (`head_init: probe`,
Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"): a
random head's large early gradients flow back into the adapter and distort the features; a head that already
fits them does not.

Both are computed once per base, quantization, data and seed and kept under the cache (baseline.cached);
the features are the input of the model's own head (`classifier` / `score`) with the adapter absent, so the
probe's weights load straight into that head.
"""

from __future__ import annotations

import numpy as np
import torch

from sweeps.trial import baseline
from sweeps.trial.tasks import classify

_WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)  # L2 on standardised features; chosen on validation macro-F1


def head_module(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The final linear layer of a sequence classifier (BERT `classifier`, Llama `score`), or None."""
    for name in ("classifier", "score"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Linear):
            return module
    return None


def features(model: torch.nn.Module, ds, pad_id: int, batch_size: int, device: str, bf16: bool = False
             ) -> np.ndarray:
    """(rows, hidden) inputs of the model's head, in row order: what a linear probe sees.

    Rows run in length-sorted batches (little padding) under the trials' bf16 autocast where they use it: on
    SmolLM2 (30 blocks, 128 tokens, 1000 rows) this took the probe from ~2 min to well under one."""
    head = head_module(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no linear `classifier` or `score` head to probe")
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float()))
    cols = {"input_ids": ds["input_ids"], "labels": ds["labels"]}
    lengths = np.array([len(x) for x in cols["input_ids"]])
    out = np.empty((0, 0), dtype=np.float32)
    model.eval()
    try:
        with torch.inference_mode():
            for idx in classify.length_batches(lengths, batch_size, np.random.default_rng(0), shuffle=False):
                batch = classify.collate(cols, idx, pad_id, device)
                seen.clear()
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                x = seen[-1]
                if x.dim() == 3:  # a decoder scores every position and keeps the last real token (right padding)
                    last = batch["attention_mask"].sum(1) - 1
                    x = x[torch.arange(x.shape[0]), last.to(x.device)]
                if out.size == 0:
                    out = np.empty((len(lengths), x.shape[-1]), dtype=np.float32)
                out[idx] = x.cpu().numpy()
    finally:
        hook.remove()
    return out


def _fit(x: np.ndarray, y: np.ndarray, num_labels: int, weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """Class-weighted multinomial logistic regression by L-BFGS; returns (W [labels, hidden], b) on raw features."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = torch.tensor((x - mu) / sd, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.long)
    weights = classify.class_weights(y, num_labels).double()
    w = torch.zeros(num_labels, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_labels, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w.T + b, yt, weight=weights)
        loss = loss + weight_decay * (w ** 2).sum() / len(y)
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / sd  # fold the standardisation into the head: logits = x @ W.T + b
    return w_raw, b.detach().numpy() - w_raw @ mu


def linear_probe(train: tuple, validation: tuple, num_labels: int, test: tuple | None = None) -> dict:
    """Fit on train for each weight decay, keep the best on validation macro-F1; figures of every split.

    Each split is (features, labels). Returns JSON-able figures plus the head (`weight`, `bias` as lists).
    """
    best = None
    for wd in _WEIGHT_DECAYS:
        w, b = _fit(*train, num_labels, wd)
        pred = (validation[0] @ w.T + b).argmax(1)
        f1 = classify.macro_f1(validation[1], pred)
        if best is None or f1 > best[0] + 1e-12:
            best = (f1, wd, w, b)
    _, wd, w, b = best
    out = {"weight_decay": wd, "weight": w.tolist(), "bias": b.tolist()}
    for split, part in (("train", train), ("validation", validation), ("test", test)):
        if part is not None:
            pred = (part[0] @ w.T + b).argmax(1)
            out[split] = classify.scores(np.asarray(part[1]), pred)
    return out


def cross_validated(train: tuple, folds: np.ndarray, num_labels: int, test: tuple | None = None) -> dict:
    """`data.folds: K`, where no validation split is carved: the weight decay is chosen on the pooled out-of-fold
    predictions (the rows and folds the trials are scored on, crossval.py), whose scores are the probe's
    `validation` figures; the head is then refitted on every training row, as the trials' adapters are. The
    features are frozen, so each fold refits only the head (K x 4 small fits, no forward pass)."""
    x, y = train[0], np.asarray(train[1])
    best = None
    for wd in _WEIGHT_DECAYS:
        pred = np.empty(len(y), dtype=np.int64)
        for fold in np.unique(folds):
            held = folds == fold
            w, b = _fit(x[~held], y[~held], num_labels, wd)
            pred[held] = (x[held] @ w.T + b).argmax(1)
        f1 = classify.macro_f1(y, pred)
        if best is None or f1 > best[0] + 1e-12:
            best = (f1, wd, pred)
    _, wd, out_of_fold = best
    w, b = _fit(x, y, num_labels, wd)
    out = {"weight_decay": wd, "weight": w.tolist(), "bias": b.tolist(), "folds": int(len(np.unique(folds))),
           "train": classify.scores(y, (x @ w.T + b).argmax(1)), "validation": classify.scores(y, out_of_fold)}
    if test is not None:
        out["test"] = classify.scores(np.asarray(test[1]), (test[0] @ w.T + b).argmax(1))
    return out


def majority(train_labels, splits: dict[str, np.ndarray]) -> dict:
    """Always the most frequent training class: the floor every classifier must clear (macro-F1 ~ 1/(3k) ...)."""
    top = int(np.bincount(np.asarray(train_labels)).argmax())
    return {"label_index": top,
            **{split: classify.scores(np.asarray(y), np.full(len(y), top)) for split, y in splits.items()}}


def compute(model, task, device: str, parts: dict, splits=("train", "validation", "test"), bf16: bool = False
            ) -> dict:
    """The probe (and the majority class) for `task`'s splits, from the cache when there."""
    def run() -> dict:
        feats = {s: (features(model, task.splits[s], task.pad_id, 32, device, bf16),
                     np.asarray(task.splits[s]["labels"]))
                 for s in splits if s in task.splits}
        if not task.has_validation:  # data.folds: the cross-validation refit's task, every row in train
            from sweeps.trial.data import labelled

            train_y = feats["train"][1]
            folds = labelled.fold_of(train_y, task.num_labels, task.spec.data.folds, task.spec.seed)
            probe = cross_validated(feats["train"], folds, task.num_labels, feats.get("test"))
            # the majority class of K-1 folds is the whole set's on any data with a clear majority
            labels = {**{s: f[1] for s, f in feats.items() if s != "validation"}, "validation": train_y}
        else:
            probe = linear_probe(feats["train"], feats["validation"], task.num_labels, feats.get("test"))
            labels = {s: f[1] for s, f in feats.items()}
        probe["majority"] = majority(feats["train"][1], labels)
        return probe

    return baseline.cached(parts, run)


def cached(parts: dict) -> dict | None:
    """The probe for `parts` if already computed (the driver checks before loading a model for it)."""
    return baseline.lookup(parts)


def init_head(head: torch.nn.Linear, probe: dict) -> None:
    """LP-FT: copy the probe's weights into the (trainable) head before the adapter trains."""
    with torch.no_grad():
        head.weight.copy_(torch.tensor(probe["weight"], dtype=head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(torch.tensor(probe["bias"], dtype=head.bias.dtype))
