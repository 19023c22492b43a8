"""The `hf` child of scripts/bench.py (peer_children.py runs it): HF Trainer.hyperparameter_search, our trials' recipe.

What a user porting our trial recipe (sweeps/trial/loop.py run_trial, train.py, tasks/classify.py) to Trainer writes,
so both tools train the same model the same way; every part is Trainer's own unless it had to be overridden to
match ours, and each override names the part of our recipe it matches:
  rows       classify.ClassificationTask: the same tokenized train / validation / test rows (split, max_length,
             head+tail truncation), class weights and label order as our trials; DataCollatorWithPadding pads each
             batch to its longest row (right padding, as classify.collate)
  batches    classify.length_batches as the train DataLoader's batch sampler, one numpy RNG seeded with the spec's
             seed for the whole trial (train.train): length-sorted within chunks of 50 batches, the batches shuffled.
             Trainer's group_by_length is not that: it walks each megabatch from its longest batch to its shortest,
             unshuffled, so every epoch ends on the shortest reviews
  model      model_init: pretrained.load_base (BERT's [CLS] pooler swapped for the mask-weighted mean,
             pretrained.MeanPooler, and the linear classifier) and lora.apply_peft (LoRA on targeting.target_modules,
             the head in modules_to_save), with the trial's rank and alpha read by hp_space itself: Trainer calls
             model_init before its own hp_space call, when an optuna trial holds no parameters yet
  frozen     no dropout in the embeddings and the blocks below the lowest adapted one, as our trials compute those
             rows (sweeps/trial/memory/prefix.py: once, in eval mode; SWEEPS_FROZEN_PREFIX=0 turns both off); the
             adapted blocks, LoRA and the head keep their dropout
  loss       class-weighted cross-entropy on float logits (classify.class_weights), Trainer's compute_loss_func
  optimizer  AdamW over the trainable tensors, the head (modules_to_save) at learning_rate * head_lr_ratio, the
             spec's weight decay on every group (create_optimizer below)
  schedule   train._lr_lambda: linear warmup over round(steps * warmup_ratio) steps from 1/warmup, then linear decay
             to 0 (Trainer's "linear" starts at 0: one step fewer at full rate)
  search     the GridSampler over the same points with no pruning (hyperparameter_search's default is optuna's
             MedianPruner, which stopped below-median trials after epoch 1; `sweep run` runs each to the end)
  rest       epochs, batch size, max_grad_norm, seed and bf16 setting of the spec; the RNG state is kept across each
             evaluation (as ours, whose evaluation draws nothing), so the dropout masks follow the same stream
Validation macro-F1 (classify.macro_f1) after each epoch; the trial's objective is the last one, as ours.
Each trial's final model is also scored once on the test split (a callback at train end, its seconds
reported apart so they can be taken off the wall), so HF's pick gets a test figure without a retrain.
"""

from __future__ import annotations

import time
import types

from children import STARTED, emit


def _eval_mode_below_adapters(model, params) -> int:
    """The rows below the lowest adapted block without dropout, as our trials compute them (prefix.py: once, in eval
    mode): those blocks stay in eval mode through model.train(), and the embeddings' dropout returns its input.
    It still draws its mask, as in our trials (BertModel runs the embeddings, then the cache supplies the rows), so
    every later dropout mask comes from the same point of the RNG stream. Returns the blocks (0: not a BERT encoder,
    or SWEEPS_FROZEN_PREFIX=0, where our trials run the plain forward too)."""
    import torch

    from sweeps.trial.adapters import targeting
    from sweeps.trial.memory import prefix

    owner = getattr(model, getattr(model, "base_model_prefix", ""), None)
    layers = getattr(getattr(owner, "encoder", None), "layer", None)
    blocks = targeting.lowest_block(model, params) if prefix.enabled() and layers is not None else None
    dropout = getattr(getattr(owner, "embeddings", None), "dropout", None)
    if not blocks or blocks >= len(layers) or dropout is None:
        return 0
    dropout.register_forward_hook(lambda module, args, out: args[0])
    for module in layers[:blocks]:
        module.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), module)
        module.eval()
    return blocks


class LengthBatches:
    """classify.length_batches as a DataLoader batch sampler: one RNG for the trial, drawn on epoch after epoch."""

    def __init__(self, lengths, batch_size: int, seed: int, sample_weights=None):
        import numpy as np

        from sweeps.trial.tasks import classify

        self._batches = lambda rng: classify.length_batches(lengths, batch_size, rng, True, sample_weights)
        self._rng = np.random.default_rng(seed)
        self._count = len(self._batches(np.random.default_rng(seed)))

    def __iter__(self):
        return iter([batch.tolist() for batch in self._batches(self._rng)])

    def __len__(self) -> int:
        return self._count


def hf(p: dict) -> None:
    """Trainer.hyperparameter_search (optuna GridSampler, model_init per trial) with the recipe of our trials."""
    import numpy as np
    import optuna
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from sweeps.spec import load_spec
    from sweeps.trial import loop as sweeps_trial
    from sweeps.trial.adapters import lora
    from sweeps.trial.models import pretrained
    from sweeps.trial.tasks import classify
    from sweeps.trial.train import _lr_lambda

    emit({"phase": "imported", "since_launch": time.time() - p.get("launched", STARTED)})
    spec = load_spec(p["spec"])
    fixed = spec.trial_params()
    base = pretrained.resolve_base(spec.model)
    tokenizer = pretrained.load_tokenizer(base, spec.model.revision)
    task = classify.ClassificationTask(spec, fixed, tokenizer)
    splits, num_labels, grid = task.splits, task.num_labels, p["space"]
    train_labels = np.asarray(splits["train"]["labels"])
    majority = np.full(len(splits["validation"]), np.bincount(train_labels, minlength=num_labels).argmax())
    emit({"phase": "majority", "macro_f1": classify.macro_f1(np.asarray(splits["validation"]["labels"]), majority)})

    def hp_space(trial):
        return {name: trial.suggest_categorical(name, values) for name, values in grid.items()}

    def model_init(trial):  # called before Trainer's own hp_space(trial): suggest here (optuna returns the same)
        sampled = {name: values[0] for name, values in grid.items()} if trial is None else hp_space(trial)
        params = spec.trial_params(sampled)
        model = pretrained.load_base(base, "classification", num_labels, params, "cpu", spec.model.revision)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        frozen = _eval_mode_below_adapters(model, params)
        peft_model = lora.apply_peft(model, params, "classification", num_labels)
        if trial is not None:
            emit({"phase": "model", "trial": trial.number, "params": sampled, "eval_mode_blocks": frozen,
                  "trainable_params": lora.trainable_params(peft_model)[0]})
        return peft_model

    loss_fn = torch.nn.CrossEntropyLoss(weight=task.weights if fixed.class_balance == "weighted_loss" else None)

    def compute_loss_func(outputs, labels, num_items_in_batch=None):
        return loss_fn(outputs.logits.float(), labels)

    def compute_metrics(pred):
        y_true, y_pred = np.asarray(pred.label_ids), np.argmax(pred.predictions, axis=-1)
        return {"macro_f1": classify.macro_f1(y_true, y_pred), **classify.bootstrap_se(y_true, y_pred)}

    class RecipeTrainer(Trainer):
        def get_train_dataloader(self):
            rows = self._remove_unused_columns(self.train_dataset, description="training")
            batches = LengthBatches(task.lengths, fixed.batch_size, spec.seed, task.sample_w)
            return self.accelerator.prepare(DataLoader(rows, batch_sampler=batches, collate_fn=self.data_collator,
                                                       generator=torch.Generator()))  # draws nothing from torch's RNG

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                trainable = [q for q in (self.model if model is None else model).parameters() if q.requires_grad]
                lr = self.args.learning_rate  # the trial's, set by hyperparameter_search
                head = {id(q) for q in lora.head_parameters(self.model if model is None else model)}
                groups = [{"params": [q for q in trainable if id(q) not in head], "lr": lr}]
                if head:
                    groups.append({"params": [q for q in trainable if id(q) in head], "lr": lr * fixed.head_lr_ratio})
                self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=fixed.weight_decay)
            return self.optimizer

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    self.optimizer if optimizer is None else optimizer,
                    _lr_lambda(num_training_steps, fixed.warmup_ratio))
                self._created_lr_scheduler = True
            return self.lr_scheduler

    args = TrainingArguments(output_dir=p["out"], num_train_epochs=fixed.epochs, eval_strategy="epoch",
                             per_device_train_batch_size=fixed.batch_size,
                             per_device_eval_batch_size=fixed.batch_size * 2, weight_decay=fixed.weight_decay,
                             max_grad_norm=fixed.max_grad_norm, bf16=sweeps_trial.use_bf16(fixed, "cpu"),
                             save_strategy="no", report_to="none", logging_strategy="no", seed=spec.seed,
                             use_cpu=True, disable_tqdm=True)
    tests: dict[int, dict] = {}

    class RecipeCallbacks(TrainerCallback):
        rng = None

        def on_epoch_end(self, args, state, control, **kwargs):  # evaluation next: our trials' draws nothing
            self.rng = torch.get_rng_state()

        def on_evaluate(self, args, state, control, **kwargs):
            if self.rng is not None:
                torch.set_rng_state(self.rng)

        def on_train_end(self, args, state, control, **kwargs):  # the final model on the test split, timed apart
            started = time.perf_counter()
            metrics = trainer.predict(splits["test"], metric_key_prefix="test").metrics
            number = trainer._trial.number if trainer._trial is not None else -1
            tests[number] = {"macro_f1": metrics["test_macro_f1"], "macro_f1_se": metrics["test_macro_f1_se"],
                             "seconds": time.perf_counter() - started}
            emit({"phase": "test", "trial": number, **tests[number]})

    trainer = RecipeTrainer(args=args, model_init=model_init, train_dataset=splits["train"],
                            eval_dataset=splits["validation"], data_collator=DataCollatorWithPadding(tokenizer),
                            compute_metrics=compute_metrics, compute_loss_func=compute_loss_func,
                            callbacks=[RecipeCallbacks()])
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
                                         sampler=optuna.samplers.GridSampler(grid, seed=spec.seed),
                                         pruner=optuna.pruners.NopPruner())
    pick = int(best.run_id)
    emit({"phase": "done", "best_macro_f1": best.objective, "best": best.hyperparameters, "best_trial": pick,
          "best_macro_f1_se": validation.get(pick, {}).get("macro_f1_se"),
          "test_macro_f1": tests[pick]["macro_f1"], "test_macro_f1_se": tests[pick]["macro_f1_se"],
          "test_seconds": sum(t["seconds"] for t in tests.values()),
          "since_launch": time.time() - p.get("launched", STARTED)})
