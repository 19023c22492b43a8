"""The peers' child processes of scripts/bench.py: `python scripts/benchkit/peer_children.py NAME JSON`.

Each runs another tool on the benchmark's data the way a user of that tool would, and prints `RESULT {json}` lines
(scripts/benchkit/common.py: run collects them).
  hf         Hugging Face Trainer.hyperparameter_search (optuna backend, model_init per trial), our trials' recipe
             (in hf_child.py)
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

from children import STARTED, emit
from hf_child import hf


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
