"""Promotion of a sweep's chosen adapters to the registry (`sweep promote`, `sweep run --promote`).

The policy picks among the tolerant front (front.py); each chosen trial's adapter is evaluated once on the held-out
test split when its registry version is created, and those figures are recorded on the version (never fed back
into selection). Registering a version, idempotently, is register.py's job.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps import store
from sweeps.driver.promotion import register
from sweeps.driver.promotion.front import PromotionError, complete_records, selection_inputs, sweep_spec
from sweeps.driver.selection.policies import choose, objective_aliases
from sweeps.driver.study.study import Study
from sweeps.spec import SweepSpec
from sweeps.tracking.runs import TrialRecord
from sweeps.tracking.tracker import Tracker

# Held-out figures a promotion prints; zero_shot_* are the untuned base's on the same split (instruction task).
_SHOWN = ("accuracy", "macro_f1", "loss", "perplexity", "routing_accuracy", "zero_shot_loss",
          "zero_shot_routing_accuracy")


def versus_baselines(test: dict[str, float], baselines: dict[str, dict[str, float]], metric: str = "macro_f1"
                     ) -> str:
    """'test macro_f1 .561, linear probe .470 (+.091), majority .264 (+.297)': the adapter against its references."""
    if metric not in test:
        return ""
    parts = [f"test {metric} {test[metric]:.3f}"]
    for name, figures in baselines.items():
        ref = figures.get(f"test.{metric}")
        if ref is not None:
            parts.append(f"{name.replace('-', ' ')} {ref:.3f} ({test[metric] - ref:+.3f})")
    return ", ".join(parts)


@dataclass
class Promotion:
    name: str
    entries: list[dict[str, Any]]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = []
        for e in self.entries:
            test = ", ".join(f"{k}={e['test_metrics'][k]:.4f}" for k in _SHOWN if k in e["test_metrics"])
            verb = "registered" if e["created"] else "already registered"
            lines.append(f"{verb} models:/{self.name}/{e['version']} (trial {e['trial_number']}) aliases "
                         f"{', '.join(e['aliases'])}; held-out test: {test or 'not evaluated'}")
            versus = versus_baselines(e["test_metrics"], self.baselines)
            if versus:
                lines.append(f"    {versus}")
        return "\n".join(lines)


def promote_sweep(sweep: str, policy: str, name: str, extra_aliases: list[str] | None = None,
                  tracker: Tracker | None = None, per_objective: bool = True) -> Promotion:
    """Choose by `policy`, register the chosen adapter (alias champion) and each objective's best front point.

    Both read the spec's tolerances (sweeps.driver.selection.tolerance.tolerance_matrix): the front they choose
    from is tolerant."""
    store.safe_name(name, "model name")  # before Tracker(): opening it creates the store and mlflow.db
    store.safe_name(sweep, "sweep name")
    tracker = tracker or Tracker()
    spec = sweep_spec(tracker, sweep)
    records = complete_records(spec, tracker)
    if not records:
        raise PromotionError(f"sweep {sweep!r} has no completed trials to promote")
    trials, objectives, tol = selection_inputs(spec, records)
    chosen = choose(trials, objectives, policy, tol)
    if chosen is None:
        raise PromotionError(f"no completed trial of {sweep!r} satisfies the policy {policy!r}")
    by_index: dict[int, list[str]] = {chosen: ["champion", *(extra_aliases or [])]}
    if per_objective:
        for alias, idx in objective_aliases(trials, objectives, tol).items():
            by_index.setdefault(idx, []).append(alias)
    study = Study(spec, store.study_storage(spec.infra.study_storage))
    sampled = {t.number: t.params for t in study.trials()}
    baselines = sweep_baselines(spec, tracker)
    entries = []
    # Register the non-champion versions first so the champion is the newest version of the name.
    for idx in sorted(by_index, key=lambda i: i == chosen):
        entries.append(_promote_one(tracker, spec, records[idx], name, by_index[idx], sampled, policy, baselines))
    return Promotion(name, entries, baselines)


def sweep_baselines(spec: SweepSpec, tracker: Tracker) -> dict[str, dict[str, float]]:
    """The sweep's baseline runs; a sweep run before baselines existed gets them now (cached, logged)."""
    found = tracker.baselines(spec.name)
    parent = tracker.parent_run(spec.name)
    if found or spec.task != "classification" or parent is None:
        return found
    from sweeps.driver.prepare import reference_points

    found = reference_points(spec)
    for name, figures in found.items():
        tracker.log_baseline(spec.name, parent, name, figures, {"baseline": name, "base_model": spec.model.base})
    return found


def _promote_one(tracker: Tracker, spec: SweepSpec, rec: TrialRecord, name: str, aliases: list[str],
                 sampled: dict[int, dict], policy: str, baselines: dict | None = None) -> dict[str, Any]:
    params = spec.trial_params(sampled.get(rec.trial_number, {}))
    existing = tracker.find_version(name, rec.run_id)
    test_metrics: dict[str, float] = {}
    if existing is None:
        test_metrics = _evaluate_on_test(tracker, spec, params, rec.run_id)
    else:
        info = tracker.version_info(name, existing)
        test_metrics = {k[5:]: float(v) for k, v in info["tags"].items() if k.startswith("test.")}
    lineage = {
        "sweep": spec.name, "trial_number": str(rec.trial_number), "run_id": rec.run_id, "policy": policy,
        "task": spec.task, "base_model": spec.model.base, "base_model_sha256": _base_hash(spec),
        "quantization": json.dumps({k: getattr(params, k) for k in ("quantization", "double_quant",
                                                                   "compute_dtype")}),
        "peft": json.dumps({k: v for k, v in params.flat().items() if k in ("method", "rank", "effective_alpha",
                                                                             "dropout", "target", "layers")}),
        **{f"val.{k}": f"{v:.6g}" for k, v in rec.metrics.items()},
        **{f"baseline.{b}.{k}": f"{v:.6g}" for b, figs in (baselines or {}).items() for k, v in figs.items()
           if k.split(".")[0] in ("validation", "test")},
    }
    versus = versus_baselines(test_metrics, baselines or {})
    if versus:
        lineage["versus_baselines"] = versus
    version, created = register.promote(tracker, name, rec.run_id, aliases, lineage, test_metrics or None)
    return {"version": version, "created": created, "trial_number": rec.trial_number, "aliases": aliases,
            "test_metrics": test_metrics, "run_id": rec.run_id}


def _evaluate_on_test(tracker: Tracker, spec: SweepSpec, params, run_id: str) -> dict[str, float]:
    from sweeps.trial.loop import evaluate_adapter

    with tempfile.TemporaryDirectory(prefix="sweeps-promote-") as tmp:
        adapter = tracker.download_adapter(run_id, Path(tmp))
        return evaluate_adapter(spec, params, adapter, split="test")


def _base_hash(spec: SweepSpec) -> str:
    from sweeps.trial.models.pretrained import content_hash, resolve_base

    try:
        return content_hash(resolve_base(spec.model))
    except Exception as exc:  # a hub id without local files: say so rather than fail the promotion
        return f"unavailable ({type(exc).__name__})"
