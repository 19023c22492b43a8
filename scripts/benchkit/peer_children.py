"""The peers' child processes of scripts/bench.py: `python scripts/benchkit/peer_children.py NAME JSON`.

Each runs another tool on the benchmark's data the way a user of that tool would, and prints `RESULT {json}` lines
(scripts/benchkit/common.py: run collects them).
  hf         Hugging Face Trainer.hyperparameter_search (optuna backend, model_init per trial), our trials' recipe
  raytune    plain Ray Tune (Tuner + OptunaSearch + ASHAScheduler) around our trial function (loop.run_trial)
  setfit     SetFit on the same MiniLM body and splits: the few-shot tool for sentence-transformer bodies
  pick_test  a finished trial's saved adapter scored once on the test split (the pick of `sweep run` or Ray Tune)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from children import STARTED, _train_split, emit


def hf(p: dict) -> None:
    """Trainer.hyperparameter_search (optuna GridSampler, model_init per trial) with the recipe of our trials.

    What a user porting our trial recipe to Trainer writes, so both tools train the same model the same way:
      rows      tokenized.tokenize_splits, as _train_split (same split, max_length, head+tail truncation);
                DataCollatorWithPadding pads per batch, train_sampling_strategy group_by_length is HF's length
                bucketing (our trials bucket by length too; the batch order itself is each tool's own)
      model     built by our own functions in model_init: pretrained.load_base (AutoModelForSequenceClassification
                with BERT's dense+tanh [CLS] pooler swapped for the mask-weighted mean, pretrained.MeanPooler, and
                the linear classifier) and lora.apply_peft (LoRA on targeting.target_modules, the head in
                modules_to_save): reused rather than rewritten, so the comparison is about the harness
      loss      class-weighted cross-entropy, classify.class_weights, through Trainer's compute_loss_func
      optimizer AdamW, the head (modules_to_save) at learning_rate * head_lr_ratio (create_optimizer below);
                linear warmup (round(steps * warmup_ratio), as train._lr_lambda) then linear decay to 0
      rest      epochs, batch size, weight decay, max_grad_norm, seed and bf16 setting of the spec
    Validation macro-F1 (classify.macro_f1) after each epoch; the trial's objective is the last one, as ours.
    Each trial's final model is also scored once on the test split (a callback at train end, its seconds
    reported apart so they can be taken off the wall), so HF's pick gets a test figure without a retrain.
    """
    import math

    import numpy as np
    import optuna
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from sweeps.spec import load_spec
    from sweeps.trial import loop as sweeps_trial
    from sweeps.trial.adapters import lora
    from sweeps.trial.models import pretrained
    from sweeps.trial.tasks import classify

    emit({"phase": "imported", "since_launch": time.time() - p.get("launched", STARTED)})
    spec = load_spec(p["spec"])
    base, tokenizer, task, splits = _train_split(spec)
    num_labels = len(task.labels)
    grid = p["space"]
    fixed = spec.trial_params()
    train_labels = np.asarray(splits["train"]["labels"])
    weights = classify.class_weights(train_labels, num_labels)
    majority = np.full(len(splits["validation"]), np.bincount(train_labels, minlength=num_labels).argmax())
    emit({"phase": "majority", "macro_f1": classify.macro_f1(np.asarray(splits["validation"]["labels"]), majority)})

    def sampled_params(trial):
        sampled = {name: values[0] for name, values in grid.items()}
        if trial is not None:
            sampled.update({k: v for k, v in trial.params.items() if k in grid})
        return spec.trial_params(sampled)

    def hp_space(trial):
        return {name: trial.suggest_categorical(name, values) for name, values in grid.items()}

    def model_init(trial):
        params = sampled_params(trial)
        model = pretrained.load_base(base, "classification", num_labels, params, "cpu", spec.model.revision)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return lora.apply_peft(model, params, "classification", num_labels)

    loss_fn = torch.nn.CrossEntropyLoss(weight=weights if fixed.class_balance == "weighted_loss" else None)

    def compute_loss_func(outputs, labels, num_items_in_batch=None):
        return loss_fn(outputs.logits.float(), labels)

    def compute_metrics(pred):
        y_true, y_pred = np.asarray(pred.label_ids), np.argmax(pred.predictions, axis=-1)
        return {"macro_f1": classify.macro_f1(y_true, y_pred), **classify.bootstrap_se(y_true, y_pred)}

    class RecipeTrainer(Trainer):
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                named = [(n, q) for n, q in (self.model if model is None else model).named_parameters()
                         if q.requires_grad]
                lr = self.args.learning_rate  # the trial's, set by hyperparameter_search
                head = [q for n, q in named if "modules_to_save" in n]
                groups = [{"params": [q for n, q in named if "modules_to_save" not in n], "lr": lr}]
                if head:
                    groups.append({"params": head, "lr": lr * fixed.head_lr_ratio})
                self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=self.args.weight_decay)
            return self.optimizer

    steps = math.ceil(len(splits["train"]) / fixed.batch_size) * fixed.epochs
    warmup = max(1, int(round(steps * fixed.warmup_ratio))) if fixed.warmup_ratio > 0 else 0
    args = TrainingArguments(output_dir=p["out"], num_train_epochs=fixed.epochs, eval_strategy="epoch",
                             per_device_train_batch_size=fixed.batch_size,
                             per_device_eval_batch_size=fixed.batch_size * 2, warmup_steps=warmup,
                             lr_scheduler_type="linear", weight_decay=fixed.weight_decay,
                             max_grad_norm=fixed.max_grad_norm, train_sampling_strategy="group_by_length",
                             bf16=sweeps_trial.use_bf16(fixed, "cpu"), save_strategy="no", report_to="none",
                             logging_strategy="no", seed=spec.seed, use_cpu=True, disable_tqdm=True)
    tests: dict[int, dict] = {}

    class TestAtEnd(TrainerCallback):  # the trial's final model on the test split, once, timed apart
        def on_train_end(self, args, state, control, **kwargs):
            started = time.perf_counter()
            metrics = trainer.predict(splits["test"], metric_key_prefix="test").metrics
            number = trainer._trial.number if trainer._trial is not None else -1
            tests[number] = {"macro_f1": metrics["test_macro_f1"], "macro_f1_se": metrics["test_macro_f1_se"],
                             "seconds": time.perf_counter() - started}
            emit({"phase": "test", "trial": number, **tests[number]})

    trainer = RecipeTrainer(args=args, model_init=model_init, train_dataset=splits["train"],
                            eval_dataset=splits["validation"], data_collator=DataCollatorWithPadding(tokenizer),
                            compute_metrics=compute_metrics, compute_loss_func=compute_loss_func,
                            callbacks=[TestAtEnd()])
    validation: dict[int, dict] = {}

    def objective(metrics):  # Trainer calls it after every evaluation (each epoch); the last one is the trial's
        number = trainer._trial.number if trainer._trial is not None else -1
        validation[number] = {"macro_f1": metrics["eval_macro_f1"], "macro_f1_se": metrics.get("eval_macro_f1_se")}
        emit({"phase": "epoch", "trial": number, "macro_f1": metrics["eval_macro_f1"], "epoch": metrics.get("epoch"),
              "params": dict(trainer._trial.params) if trainer._trial is not None else {},
              "since_launch": time.time() - STARTED})
        return metrics["eval_macro_f1"]

    best = trainer.hyperparameter_search(direction="maximize", backend="optuna", hp_space=hp_space,
                                         n_trials=p["trials"], compute_objective=objective,
                                         sampler=optuna.samplers.GridSampler(grid, seed=spec.seed))
    pick = int(best.run_id)
    emit({"phase": "done", "best_macro_f1": best.objective, "best": best.hyperparameters, "best_trial": pick,
          "best_macro_f1_se": validation.get(pick, {}).get("macro_f1_se"),
          "test_macro_f1": tests[pick]["macro_f1"], "test_macro_f1_se": tests[pick]["macro_f1_se"],
          "test_seconds": sum(t["seconds"] for t in tests.values()),
          "since_launch": time.time() - p.get("launched", STARTED)})



def pick_test(p: dict) -> None:
    """A tool's pick (the saved adapter of a finished trial) scored once on the test split."""
    from sweeps.spec import load_spec
    from sweeps.trial.loop import evaluate_adapter

    spec = load_spec(p["spec"])
    metrics = evaluate_adapter(spec, spec.trial_params(p["config"]), Path(p["adapter"]), "test", device="cpu")
    emit({"phase": "test", "macro_f1": metrics["macro_f1"], "macro_f1_se": metrics["macro_f1_se"]})



def raytune(p: dict) -> None:
    """Plain Ray Tune around the trial function our workers run: the script a Ray user writes.

      search     OptunaSearch with Optuna's GridSampler over the same 8 points that HF and `sweep run` (sampler
                 grid) train; metric macro_f1, mode max
      scheduler  ASHAScheduler on the epoch (training_iteration): max_t = the spec's epochs, grace period 1,
                 reduction factor 2: at each rung a trial below the top half of the rung's macro-F1 so far stops
      trial      sweeps.trial.loop.run_trial with `tune.report` as its per-epoch report (the last epoch's after the
                 adapter is saved); Ray's default reuse_actors=False: each trial in a fresh worker process
      layout     max_concurrent_trials 2 x 1 CPU (`sweep run`'s default layout); ray.init as our driver calls it:
                 no dashboard, and workers at this process's niceness, not Ray's default 15 (which starves them next
                 to any other load and would time the machine, not the tool)
    The pick: the best last-reported macro-F1 of the trials that ran every epoch (a stopped trial saved no adapter).
    """
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.spec import load_spec

    emit({"phase": "imported", "since_launch": time.time() - p.get("launched", STARTED)})
    spec = load_spec(p["spec"])
    grid, out = p["space"], Path(p["out"])
    epochs = spec.trial_params().epochs

    def train_fn(config: dict) -> None:
        from sweeps.trial.loop import run_trial

        params = spec.trial_params({name: config[name] for name in grid})

        def report(row: dict) -> None:  # the last epoch is reported once the adapter is saved: at max_t ASHA stops
            if row["epoch"] < params.epochs:  # the trial, and a function stopped there never saves it
                tune.report(dict(row))

        result = run_trial(spec, params, out / tune.get_context().get_trial_id(), report=report)
        tune.report({**result.metrics, "epoch": params.epochs})

    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             _system_config={"worker_niceness": os.nice(0)})
    tuner = tune.Tuner(
        tune.with_resources(train_fn, {"cpu": 1}),
        param_space={name: tune.choice(values) for name, values in grid.items()},
        tune_config=tune.TuneConfig(
            metric="macro_f1", mode="max", num_samples=p["trials"], max_concurrent_trials=p["concurrency"],
            search_alg=OptunaSearch(sampler=optuna.samplers.GridSampler(grid, seed=spec.seed)),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1,
                                    reduction_factor=2)),
        run_config=tune.RunConfig(name="raytune", storage_path=str(out / "ray_results"), verbose=0))
    results = tuner.fit()
    rows = []
    for r in results:
        m = r.metrics or {}
        ran = int(m.get("training_iteration") or 0)
        row = {"config": {k: r.config[k] for k in grid}, "trial_id": m.get("trial_id"), "epochs_run": ran,
               "stopped_early": r.error is None and ran < epochs, "error": str(r.error)[-300:] if r.error else None,
               **{k: m.get(k) for k in ("macro_f1", "macro_f1_se", "peak_memory_mb", "trainable_params")}}
        row["adapter"] = str(out / row["trial_id"] / "adapter") if r.error is None and ran == epochs else None
        rows.append(row)
        emit({"phase": "trial", **row})
    ray.shutdown()
    finished = [i for i, r in enumerate(rows) if r["adapter"] and r["macro_f1"] is not None]
    pick = max(finished, key=lambda i: (rows[i]["macro_f1"], -i)) if finished else None
    emit({"phase": "done", "pick": pick, "epochs": epochs, "since_launch": time.time() - p.get("launched", STARTED)})


def setfit(p: dict) -> None:
    """SetFit as its quick-start runs it, on the spec's base body and splits.

    SetFit fine-tunes the sentence-transformer body contrastively on pairs of training rows (CosineSimilarityLoss,
    p["iterations"] pairs per row and side), then fits a logistic-regression head on the body's embeddings.
      body    the spec's base, resolved locally (sweeps.trial.models.pretrained.resolve_base: the bundled
              all-MiniLM-L6-v2 directory with its sentence-transformers modules: mean pooling, normalisation)
      rows    sweeps.trial.data.labelled.load_classification(spec.data, spec.seed): the same train / validation /
              test rows as our trials (the validation split is not used for training, as ours)
      head    LogisticRegression(class_weight="balanced"): unweighted, the head predicts the majority class on this
              data (measured: test macro-F1 .264, the majority level)
      rest    max_length p["max_length"], batch 16, 1 epoch, the spec's seed; bf16 autocast where the spec's
              `bf16` would use it (as our trials and the hf child)
    """
    import importlib.metadata

    import numpy as np
    import torch
    from setfit import SetFitModel, Trainer, TrainingArguments

    from sweeps.spec import load_spec
    from sweeps.trial import loop as sweeps_trial
    from sweeps.trial.data import labelled
    from sweeps.trial.models import pretrained
    from sweeps.trial.tasks import classify

    emit({"phase": "imported", "since_launch": time.time() - p.get("launched", STARTED)})
    spec = load_spec(p["spec"])
    task = labelled.load_classification(spec.data, spec.seed)
    body = pretrained.resolve_base(spec.model)
    if not isinstance(body, Path):
        raise ValueError(f"{spec.model.base}: not a local model directory (the benchmark never downloads)")
    bf16 = sweeps_trial.use_bf16(spec.trial_params(), "cpu")
    started = time.perf_counter()
    model = SetFitModel.from_pretrained(str(body), head_params={"class_weight": "balanced"}, local_files_only=True)
    args = TrainingArguments(output_dir=p["out"], batch_size=16, num_epochs=1, num_iterations=p["iterations"],
                             max_length=p["max_length"], seed=spec.seed, report_to="none", save_strategy="no",
                             show_progress_bar=False, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=task.train.select_columns(["text", "label"]))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        trainer.train()
    fit_seconds = time.perf_counter() - started
    scores = {}
    for split, rows in (("validation", task.validation), ("test", task.test)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y_pred = np.asarray(model.predict(list(rows["text"]), as_numpy=True, batch_size=64)).astype(int)
        scores[split] = classify.scores(np.asarray(rows["label"]), y_pred)
        emit({"phase": split, **scores[split]})
    emit({"phase": "done", "fit_seconds": fit_seconds, "train_rows": len(task.train), "bf16": bf16,
          "version": importlib.metadata.version("setfit"),
          "pairs": 2 * p["iterations"] * len(task.train), "threads": torch.get_num_threads(),
          "validation": scores["validation"], "test": scores["test"]})


if __name__ == "__main__":
    {"hf": hf, "raytune": raytune, "setfit": setfit, "pick_test": pick_test}[sys.argv[1]](json.loads(sys.argv[2]))
