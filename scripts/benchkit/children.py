"""Child processes of scripts/bench.py: `python scripts/benchkit/children.py NAME JSON` (the peers' in peer_children).

Each prints `RESULT {json}` lines that the parent collects (scripts/benchkit/common.py: run).
  trials  the bare loop: configurations one after another in this process through sweeps.trial.loop.run_trial
  plain   a plain fp32 PEFT loop on the same model and data: padded to max_length, fixed order, no bucketing
  profile run_trial twice under cProfile (a cold and a warm trial) and the time spent in its parts
  recipe  one trial (benchkit/recipes.py: an arm x seed), then its saved adapter evaluated once on the test split
  baselines  sweeps.driver.prepare.baselines(spec): the majority class and the linear probe, validation and test
  memory_account  the same trial N times in this process (peaks), then where one training step's memory goes
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

STARTED = time.time()


def emit(payload: dict) -> None:
    print("RESULT " + json.dumps(payload, default=float), flush=True)


class _Clock:
    """Stands in for the `time` module inside sweeps.trial.train: the same wall clock, plus the main thread's CPU time
    at every perf_counter() call, so the trial's training seconds can also be counted in CPU seconds (what other
    processes on a busy machine cannot steal)."""

    def __init__(self):
        self.calls: list[tuple[float, float]] = []

    def __getattr__(self, name):
        return getattr(time, name)

    def perf_counter(self) -> float:
        now = time.perf_counter()
        self.calls.append((now, time.thread_time()))
        return now

    def cpu_train_seconds(self, train_seconds: float) -> float | None:
        """train.train counts [start, end of epoch) spans between its calls; redo that sum in CPU time."""
        spans = list(zip(self.calls[0::2], self.calls[1::2], strict=False))
        if abs(sum(end[0] - start[0] for start, end in spans) - train_seconds) > 1e-3:
            return None  # train.py times training differently now: no CPU figure rather than a wrong one
        return sum(end[1] - start[1] for start, end in spans)


def trials(p: dict) -> None:
    import torch

    from sweeps.spec import load_spec
    from sweeps.trial import train
    from sweeps.trial.loop import run_trial
    from sweeps.trial.worker import release_memory

    emit({"phase": "imported", "since_launch": time.time() - p.get("launched", STARTED)})
    spec = load_spec(p["spec"])
    done = set()
    csv_path = Path(p["csv"]) if p.get("csv") else None
    if csv_path and csv_path.is_file():
        with csv_path.open() as fh:
            done = {json.dumps({k: row[k] for k in p["axes"]}, sort_keys=True) for row in csv.DictReader(fh)}
    for i, sampled in enumerate(p["configs"]):
        key = json.dumps({k: _fmt(sampled[k]) for k in p.get("axes", [])}, sort_keys=True)
        if csv_path and key in done:
            continue
        release_memory()  # what the sweep's worker does before each trial
        train.time = clock = _Clock()
        started = time.perf_counter()
        result = run_trial(spec, spec.trial_params(sampled), Path(p["out"]) / f"t{i}")
        cpu = clock.cpu_train_seconds(result.metrics["train_seconds"])
        row = {**sampled, **result.metrics, "wall_seconds": time.perf_counter() - started,
               "cpu_tokens_per_second": result.info.get("train_tokens", 0) / cpu if cpu else None,
               "train_tokens": result.info.get("train_tokens"), "threads": torch.get_num_threads()}
        emit({"phase": "trial", **row})
        if csv_path:
            _append(csv_path, row, p["columns"])
    emit({"phase": "done", "since_launch": time.time() - p.get("launched", STARTED)})


def _append(path: Path, row: dict, columns: list[str]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row[k]) for k in columns})


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _train_split(spec):
    """The same tokenized train rows our trials see (sweeps/trial/data: same split, truncation and max_length)."""
    from sweeps.trial.data import labelled, tokenized
    from sweeps.trial.models import pretrained

    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base)
    task = labelled.load_classification(spec.data, spec.seed)
    splits = tokenized.tokenize_splits(task, tokenizer, spec.data.max_length, truncation=spec.data.truncation)
    return base, tokenizer, task, splits


def plain(p: dict) -> None:
    """What a user writes from the PEFT quick-tour: from_pretrained, get_peft_model, pad to max_length, loop."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from sweeps.spec import load_spec
    from sweeps.trial.adapters import targeting

    spec = load_spec(p["spec"])
    params = spec.trial_params(p["config"])
    base, tokenizer, task, splits = _train_split(spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=len(task.labels))
    targets = targeting.target_modules(model, params.target, params.layers)  # the same modules as our trial
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=params.rank, lora_alpha=params.lora_alpha(),
                                             lora_dropout=params.dropout, target_modules=targets))
    rows = list(splits["train"]["input_ids"])
    labels = torch.tensor(list(splits["train"]["labels"]))
    width = spec.data.max_length
    order = sorted(range(len(rows)), key=lambda i: len(rows[i])) if p.get("bucket") else list(range(len(rows)))
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=params.learning_rate)
    model.train()
    tokens, started, cpu_started = 0, time.perf_counter(), time.thread_time()
    for _ in range(params.epochs):
        for start in range(0, len(order), params.batch_size):
            idx = order[start:start + params.batch_size]
            w = max(len(rows[i]) for i in idx) if p.get("bucket") else width
            ids = torch.full((len(idx), w), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(idx):
                ids[r, :len(rows[i])] = torch.tensor(rows[i])
                mask[r, :len(rows[i])] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels[idx]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tokens += int(mask.sum())
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    emit({"phase": "plain", "tokens": tokens, "train_seconds": seconds, "tokens_per_second": tokens / seconds,
          "cpu_tokens_per_second": tokens / cpu,
          "threads": torch.get_num_threads(), "bucket": bool(p.get("bucket"))})


# (label, function name, file name): cumulative seconds of the function, summed over calls
PARTS = [("tokenizer load", "load_tokenizer", "pretrained.py"),
         ("data: load, split, tokenize (cached)", "make_task", "loop.py"),
         ("base model load", "load_base", "pretrained.py"),
         ("base model from the worker's slot", "base_for_trial", "reuse.py"),
         ("apply LoRA", "apply_peft", "lora.py"), ("training loop incl. evaluation", "train", "train.py"),
         ("evaluation", "evaluate", "classify.py"), ("forward passes", "forward", "peft_model.py"),
         ("backward passes", "backward", "_tensor.py"), ("optimizer steps", "adam", "adam.py"),
         ("frozen-prefix misses", "_compute", "prefix.py"), ("save adapter", "save_adapter", "disk.py"),
         ("base sha256", "content_hash", "pretrained.py"), ("task info (truncation stats)", "info", "classify.py")]


def profile(p: dict) -> None:
    import cProfile
    import pstats

    from sweeps.spec import load_spec
    from sweeps.trial.loop import run_trial
    from sweeps.trial.worker import release_memory

    emit({"phase": "imported", "since_launch": time.time() - p.get("launched", STARTED)})
    spec = load_spec(p["spec"])
    for i in range(2):
        release_memory()
        prof = cProfile.Profile()
        started = time.perf_counter()
        prof.enable()
        result = run_trial(spec, spec.trial_params(p["config"]), Path(p["out"]) / f"p{i}")
        prof.disable()
        wall = time.perf_counter() - started
        stats = pstats.Stats(prof).stats
        parts = {}
        for label, func, file in PARTS:
            secs = sum(v[3] for k, v in stats.items() if k[2] == func and k[0].endswith("/" + file))
            if secs:
                parts[label] = secs
        emit({"phase": "profile", "trial": "cold" if i == 0 else "warm", "wall": wall, "parts": parts,
              "train_seconds": result.metrics["train_seconds"], "tokens_per_second":
              result.metrics["tokens_per_second"]})


def recipe(p: dict) -> None:
    from sweeps.spec import load_spec
    from sweeps.trial.loop import evaluate_adapter, run_trial
    from sweeps.trial.worker import release_memory

    spec = load_spec(p["spec"])
    params = spec.trial_params(p["config"])
    release_memory()
    started = time.perf_counter()
    result = run_trial(spec, params, Path(p["out"]))
    wall = time.perf_counter() - started
    test = evaluate_adapter(spec, params, result.adapter_dir, "test")
    m = result.metrics
    emit({"phase": "trial", "arm": p["arm"], "seed": p["seed"], "config": p["config"],
          "max_length": spec.data.max_length, "macro_f1": m["macro_f1"], "val_macro_f1": m["macro_f1"],
          "val_macro_f1_se": m.get("macro_f1_se"), "test_macro_f1": test["macro_f1"],
          "test_accuracy": test.get("accuracy"), "best_epoch": m.get("best_epoch"), "epochs_run": m["epochs_run"],
          "train_seconds": m["train_seconds"], "peak_memory_mb": m["peak_memory_mb"],
          "trainable_params": m["trainable_params"], "tokens_per_second": m["tokens_per_second"],
          "wall_seconds": wall, "validation_examples": result.info.get("validation_examples"),
          "train_examples": result.info.get("train_examples")})


def baselines(p: dict) -> None:
    from sweeps.driver.prepare import baselines as compute
    from sweeps.spec import load_spec

    spec = load_spec(p["spec"])
    emit({"phase": "baselines", "seed": spec.seed, **compute(spec)})


def memory_account(p: dict) -> None:
    import numpy as np
    import torch

    from sweeps.spec import load_spec
    from sweeps.trial import loop as T
    from sweeps.trial.adapters import lora
    from sweeps.trial.memory import meter, reuse
    from sweeps.trial.models import precision, pretrained
    from sweeps.trial.tasks.classify import length_batches
    from sweeps.trial.worker import release_memory

    spec = load_spec(p["spec"])
    params = spec.trial_params(p["config"])
    for i in range(p.get("trials", 1)):
        release_memory()  # what the sweep's worker does before each trial
        result = T.run_trial(spec, params, Path(p["out"]) / f"t{i}")
        emit({"phase": "trial", "index": i, "platform_bytes": meter.platform_bytes(),
              **{k: result.metrics[k] for k in ("peak_memory_mb", "peak_memory_bytes", "base_weight_bytes",
                                                "trainable_params", "macro_f1", "train_seconds")}})
    if not p.get("account"):
        return
    # the accounting: the same set-up as run_trial (the worker's base, prefix cache, PEFT), one forward in train mode
    release_memory()
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, spec.model.revision)
    task = T.make_task(spec, params, tokenizer)
    T.seed_everything(spec.seed)
    with meter.PeakMemory("cpu") as pm:
        model = T.load_model(spec, params, base, tokenizer, task, "cpu", peak=pm)
        weight_bytes = precision.weight_bytes(model)
        entry = reuse._SLOT.get("entry")
        model = lora.apply_peft(model, params, spec.task, task.num_labels)
        trainable, _ = lora.trainable_params(model)
        model.train()
        batches = list(task.train_batches(np.random.default_rng(spec.seed), "cpu", length_batches))
        batch = max(batches, key=lambda b: (b["input_ids"].numel(), b["input_ids"].shape[1]))
        held = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        seen: dict[int, int] = {}

        def pack(t):
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # a tensor without plain storage: counted by its size
                seen[id(t)] = t.numel() * t.element_size()
                return t
            if storage.data_ptr() not in held:
                seen.setdefault(storage.data_ptr(), storage.nbytes())
            return t

        level = pm.level_bytes
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = task.loss(model, batch)
        forward_growth = pm.level_bytes - level
        del loss
        reuse.release(model)
    emit({"phase": "account", "weight_bytes": weight_bytes, "trainable_params": trainable,
          "saved_bytes": sum(seen.values()), "saved_storages": len(seen), "forward_rss_growth": forward_growth,
          "batch_shape": list(batch["input_ids"].shape), "batches": len(batches),
          "platform_bytes": meter.platform_bytes(),
          "base_resident_bytes": entry.resident_bytes if entry is not None else None,
          "base_load_peak_bytes": entry.load_peak_bytes if entry is not None else None})


if __name__ == "__main__":
    {"trials": trials, "plain": plain, "profile": profile, "recipe": recipe, "baselines": baselines,
     "memory_account": memory_account}[sys.argv[1]](json.loads(sys.argv[2]))
