"""k-fold cross-validation of one configuration (`data.folds: K`), for training sets too small to carve from.

A validation split of 120 rows puts one standard error of macro-F1 near .045: most trials of a sweep tie. With K
folds every training row is scored once, by the fit that did not see it, so the trial's figures rest on all of
them (600 rows in rank_study: about half the SE). The K out-of-fold predictions are pooled and scored together
(macro-F1 is not an average of per-fold macro-F1s; pooling avoids the bias of averaging small-fold F1s, Forman &
Scholz 2010, "Apples-to-apples in cross-validation studies"), with bootstrap SEs over the pooled rows.

The adapter a trial keeps is then refitted on every training row with the same recipe (with restore_best, for the
median of the folds' best epochs), the usual practice after choosing by cross-validation: the folds estimate how
the recipe generalises; the refit is what ships. The test split is never part of any fold.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sweeps.spec import SweepSpec
from sweeps.spec.params import TrialParams
from sweeps.trial.tasks import classify


def run(spec: SweepSpec, params: TrialParams, out_dir: Path, report: Callable[[dict], None] | None,
        device: str | None):
    from sweeps.trial.loop import TrialResult, run_trial

    folds = spec.data.folds
    y_true, y_pred, fits = [], [], []
    for fold in range(folds):
        # no per-epoch reports: a rung compares trials at one epoch, and folds are not epochs
        result = run_trial(spec, params, out_dir / f"fold-{fold}", None, device, fold=fold)
        predictions = result.tables.pop("predictions")
        y_true.append(predictions["y_true"])
        y_pred.append(predictions["y_pred"])
        fits.append(result)
        shutil.rmtree(result.adapter_dir, ignore_errors=True)  # only the refit's adapter is kept
    epochs = params.epochs
    if params.restore_best:
        epochs = max(1, int(round(float(np.median([f.metrics["best_epoch"] for f in fits])))))
    refit = run_trial(spec, params.model_copy(update={"epochs": epochs, "restore_best": False}), out_dir, None,
                      device, fold="all")
    truth, pred = np.concatenate(y_true), np.concatenate(y_pred)
    metrics = dict(refit.metrics)
    metrics.update(classify.scores(truth, pred))
    metrics["loss"] = float(np.mean([f.metrics["loss"] for f in fits]))
    for key in ("peak_memory_bytes", "peak_memory_mb"):  # the most any fit needed
        metrics[key] = max(f.metrics[key] for f in [*fits, refit])
    metrics["train_seconds"] = sum(f.metrics["train_seconds"] for f in [*fits, refit])
    metrics["folds"] = float(folds)
    metrics["refit_epochs"] = float(epochs)
    for i, f in enumerate(fits):
        metrics[f"fold{i}_macro_f1"] = f.metrics["macro_f1"]
    if report is not None:
        report({"epoch": params.epochs, **metrics})
    info = {**refit.info, "cv_rows": int(len(truth)), "folds": folds, "validation_examples": int(len(truth))}
    return TrialResult(metrics=metrics, adapter_dir=refit.adapter_dir, history=refit.history, info=info,
                       tables=refit.tables)
