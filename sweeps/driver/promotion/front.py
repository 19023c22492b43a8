"""A sweep's Pareto front, read back from MLflow: its table, hypervolume, tolerances, baselines and plot.

Selection only ever reads validation metrics; the front is computed with the spec's tolerances (differences within
noise do not dominate). `sweep pareto` prints it; `sweep run` prints it at the end; the plot and the front table are
logged to the sweep's parent run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sweeps import store
from sweeps.driver.selection.pareto import hypervolume, normalized_hypervolume, pareto_mask, reference_point
from sweeps.driver.selection.policies import DEFAULT_POLICY, choose
from sweeps.driver.selection.tolerance import describe_tolerances, tolerance_matrix
from sweeps.spec import SweepSpec, parse_yaml, validate_dict
from sweeps.tracking.runs import TrialRecord
from sweeps.tracking.tracker import Tracker


class PromotionError(RuntimeError):
    pass


@dataclass
class ParetoReport:
    spec: SweepSpec
    records: list[TrialRecord]
    front: list[bool]
    hypervolume: float
    normalized_hypervolume: float
    plot_path: Path | None
    counts: dict[str, int] = field(default_factory=dict)
    tolerances: list[str] = field(default_factory=list)  # how each objective's tolerance was resolved
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # majority / linear probe figures

    def front_records(self) -> list[TrialRecord]:
        return [r for r, keep in zip(self.records, self.front, strict=True) if keep]


def sweep_spec(tracker: Tracker, sweep: str) -> SweepSpec:
    text = tracker.sweep_spec_text(sweep)
    if text is None:
        known = ", ".join(s["name"] for s in tracker.sweeps()) or "none"
        raise PromotionError(f"no sweep named {sweep!r} in {tracker.ui_hint()} (known: {known})")
    return validate_dict(parse_yaml(text, sweep), sweep)


def complete_records(spec: SweepSpec, tracker: Tracker) -> list[TrialRecord]:
    names = spec.metric_names()
    return [r for r in tracker.trial_records(spec.name)
            if r.state == "COMPLETE" and all(m in r.metrics for m in names)]


def selection_inputs(spec: SweepSpec, records: list[TrialRecord]):
    """(metric dicts, objectives, (n, m) tolerances) for `records`: what the front, policies and aliases read."""
    trials = [r.metrics for r in records]
    objectives = list(zip(spec.metric_names(), spec.directions(), strict=True))
    return trials, objectives, tolerance_matrix(trials, objectives, spec.tolerances())


def choose_record(spec: SweepSpec, records: list[TrialRecord], policy: str) -> int | None:
    """Index into `records` of the trial `policy` picks, with the spec's tolerances (as `sweep promote` does)."""
    trials, objectives, tol = selection_inputs(spec, records)
    return choose(trials, objectives, policy, tol)


def pareto_report(sweep: str, plot: bool = True, tracker: Tracker | None = None) -> ParetoReport | None:
    store.safe_name(sweep, "sweep name")  # before Tracker(): opening it creates the store and mlflow.db
    tracker = tracker or Tracker()
    spec = sweep_spec(tracker, sweep)
    all_records = tracker.trial_records(spec.name)
    records = complete_records(spec, tracker)
    if not records:
        return None
    names, directions = spec.metric_names(), spec.directions()
    trials, objectives, tol = selection_inputs(spec, records)
    values = np.array([[r.metrics[m] for m in names] for r in records], dtype=float)
    # The tolerant front (differences within noise do not dominate); the hypervolume is that of its points.
    # Reference and ideal come from all complete trials, so they do not move with the tolerances.
    mask = pareto_mask(values, directions, tol)
    ref = reference_point(values, directions)
    ideal = np.array([values[:, i].max() if d == "maximize" else values[:, i].min()
                      for i, d in enumerate(directions)])
    hv = hypervolume(values, directions, ref, tol)
    nhv = normalized_hypervolume(values, directions, ref, ideal, tol)
    counts: dict[str, int] = {}
    for r in all_records:
        counts[r.state] = counts.get(r.state, 0) + 1
    plot_path = None
    parent = tracker.parent_run(spec.name)
    baselines = tracker.baselines(spec.name)
    if plot:
        from sweeps.driver.promotion.plot import pareto_plot

        chosen = choose(trials, objectives, DEFAULT_POLICY, tol)  # the star: what `sweep promote` would pick
        plot_path = store.store_dir() / "plots" / f"{spec.name}-pareto.png"
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        first = names[0]
        refs = {name.replace("-", " "): figs[f"validation.{first}"] for name, figs in baselines.items()
                if f"validation.{first}" in figs}
        pareto_plot([{**r.metrics, "trial_number": r.trial_number} for r in records],
                    objectives, list(mask), chosen, plot_path,
                    title=f"sweep {spec.name}", references=refs)
        if parent:
            tracker.log_artifact(parent, plot_path)
    if parent:  # the front as a table of the parent run (its Artifacts tab, and the evaluation view)
        tracker.log_rows(parent, "pareto_front.json", [
            {"trial": r.trial_number, "run_id": r.run_id, **{k: r.params.get(k) for k in _FRONT_PARAMS},
             **{m: r.metrics[m] for m in names}} for r, keep in zip(records, mask, strict=True) if keep])
        tracker.log_metrics(parent, {"hypervolume": hv, "hypervolume_normalized": nhv,
                                     "front_size": float(mask.sum()), "trials_complete": float(len(records))})
    return ParetoReport(spec, records, mask.tolist(), hv, nhv, plot_path, counts,
                        describe_tolerances(trials, objectives, spec.tolerances()), baselines)


_FRONT_PARAMS = ("method", "rank", "effective_alpha", "target", "layers", "quantization", "learning_rate")
