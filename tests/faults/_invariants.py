"""Issue 7's "nothing lost", checked the same way after every fault scenario (one checker, one table row each).

After a scenario and its resume, for the sweep in a store:
  - every COMPLETE Optuna trial has exactly one MLflow run, FINISHED (tag sweeps.state=COMPLETE), the run the
    trial names (attr mlflow_run_id), with identical params (the sampled point as MLflow stores it) and identical
    final metrics (the objective values Optuna holds, and every final metric Optuna's attr `metrics` holds), and
    an adapter whose files match its sha256 manifest (and the manifest the run's tag) and that loads: it is put
    on the base again and evaluated on the validation split, giving the accuracy and macro-F1 the run recorded;
  - no trial or run is left RUNNING (nor a point WAITING in the queue), no run exists without its trial, no
    trial has two runs, no FAILED/KILLED run keeps adapter files, no half-written adapter dir remains;
  - COMPLETE + PRUNED + FAIL == the trials asked for. A trial a crash interrupted is FAIL in Optuna (which
    cannot re-open a trial) with attr interrupted=True and its point queued again: it is counted as retried,
    not failed;
  - registry: one version per run at most, every version's run is a COMPLETE trial's, every alias points at an
    existing version, and `champion` at the trial the policy chooses now;
  - running the finished sweep again (and promoting again) creates no trial, run or model version.

`lost` counts results recorded in one store and missing or different in the other; `orphans` counts leftovers
(RUNNING/WAITING, runs without trials, duplicates, partial files). Both must be 0. With SWEEPS_FAULT_REPORT set,
each check appends its row to that JSON-lines file; scripts/fault_table.py prints the markdown table.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path

_CLEARED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SWEEPS_STUDY_STORAGE", "SWEEPS_RAY_ADDRESS",
            "SWEEPS_FAULT", "SWEEPS_FAULT_DIR")


@contextlib.contextmanager
def store_env(env: dict):
    """This process pointed at a scenario's store (and 1 torch thread, as the trials ran) for the duration."""
    keys = (*_CLEARED, "SWEEPS_STORE", "SWEEPS_CACHE", "OMP_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    for k in _CLEARED:
        os.environ.pop(k, None)
    os.environ.update(SWEEPS_STORE=env["SWEEPS_STORE"], SWEEPS_CACHE=env["SWEEPS_CACHE"], OMP_NUM_THREADS="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check(env: dict, spec_file: Path, fault: str | list[str], models: dict[str, str] | None = None) -> dict:
    """Assert every invariant for the sweep of `spec_file` in env's store; return (and report) the table row.

    `fault`: the row's label, or one label per fault injected into this one sweep (one row each, same counts).
    `models`: {registered model name: policy} promoted in the scenario (re-promoted here: must create nothing).
    """
    from sweeps import store
    from sweeps.driver.coordinator import budget
    from sweeps.driver.study.study import Study
    from sweeps.spec import load_spec
    from sweeps.tracking.tracker import Tracker

    models = models or {}
    with store_env(env):
        spec = load_spec(spec_file)
        tracker, study = Tracker(), Study(spec, store.study_storage())
        lost, orphans = [], []
        trials = study.trials()
        records = tracker.trial_records(spec.name)
        lost += _trials_vs_runs(spec, tracker, trials, records, orphans)
        orphans += _leftovers(spec, tracker, trials, records)
        _registry(spec, tracker, records, models, orphans)
        finished = [t for t in trials if t.state in ("COMPLETE", "PRUNED", "FAIL") and not t.attrs.get("interrupted")]
        asked = budget(spec)
        row = {"fault": fault if isinstance(fault, str) else fault[0], "sweep": spec.name, "asked": asked,
               "completed": sum(t.state == "COMPLETE" for t in trials),
               "pruned": sum(t.state == "PRUNED" for t in trials),
               "failed": sum(t.state == "FAIL" and not t.attrs.get("interrupted") for t in trials),
               "retried": sum(int(t.attrs.get("retries", 0)) for t in trials)
               + sum(bool(t.attrs.get("interrupted")) for t in trials),
               "lost": len(lost), "orphans": len(orphans)}
        assert len(finished) == asked, f"COMPLETE+PRUNED+FAIL = {len(finished)}, asked {asked}: {row}"
        assert not lost and not orphans, f"{row}\nlost: {lost}\norphans: {orphans}"
        _rerun_creates_nothing(spec, spec_file, tracker, models)
    if os.environ.get("SWEEPS_FAULT_REPORT"):
        with open(os.environ["SWEEPS_FAULT_REPORT"], "a", encoding="utf-8") as fh:
            for label in [fault] if isinstance(fault, str) else fault:
                fh.write(json.dumps({**row, "fault": label}) + "\n")
    return row


def _trials_vs_runs(spec, tracker, trials, records, orphans: list) -> list[str]:

    lost = []
    runs = defaultdict(list)
    for r in records:
        runs[r.trial_number].append(r)
    numbers = {t.number for t in trials}
    orphans += [f"MLflow run {r.run_id} of trial {r.trial_number}, which Optuna does not have"
                for r in records if r.trial_number not in numbers]
    orphans += [f"trial {n} has {len(rs)} MLflow runs" for n, rs in runs.items() if len(rs) > 1]
    status_of = {"COMPLETE": ("FINISHED", "COMPLETE"), "PRUNED": ("KILLED", "PRUNED"), "FAIL": ("FAILED", "FAILED")}
    for t in trials:
        rs = runs.get(t.number, [])
        if t.state not in status_of:
            continue  # RUNNING / WAITING: counted by _leftovers
        if not rs:
            # Only a trial interrupted before its run was created (driver killed right after the proposal).
            if not (t.state == "FAIL" and t.attrs.get("interrupted")):
                lost.append(f"trial {t.number} ({t.state}) has no MLflow run")
            continue
        run = rs[0]
        if (run.status, run.state) != status_of[t.state]:
            lost.append(f"trial {t.number} is {t.state} in Optuna, {run.status}/{run.state} in MLflow")
            continue
        if t.state != "COMPLETE":
            continue
        flat = {k: str(v) for k, v in spec.trial_params(t.params).flat().items()}
        if run.params != flat:
            lost.append(f"trial {t.number}: params differ: {sorted(set(run.params.items()) ^ set(flat.items()))}")
        if t.attrs.get("mlflow_run_id") != run.run_id:
            lost.append(f"trial {t.number} names run {t.attrs.get('mlflow_run_id')}, MLflow has {run.run_id}")
        finals = {**t.attrs.get("metrics", {}), **dict(zip(spec.metric_names(), t.values or [], strict=False))}
        differ = {k: (v, run.metrics.get(k)) for k, v in finals.items()
                  if run.metrics.get(k) is None or not math.isclose(v, run.metrics[k], rel_tol=1e-12)}
        if differ or len(t.values or []) != len(spec.metric_names()):
            lost.append(f"trial {t.number}: final metrics differ (optuna, mlflow): {differ}")
        problem = _adapter_problem(spec, tracker, run, spec.trial_params(t.params))
        if problem:
            lost.append(f"trial {t.number}: {problem}")
    complete = {t.number for t in trials if t.state == "COMPLETE"}
    lost += [f"run {r.run_id} (trial {r.trial_number}) FINISHED/COMPLETE in MLflow, not COMPLETE in Optuna"
             for r in records if (r.status, r.state) == ("FINISHED", "COMPLETE") and r.trial_number not in complete]
    return lost


def _adapter_problem(spec, tracker, run, params) -> str | None:
    from sweeps.trial.loop import evaluate_adapter

    with tempfile.TemporaryDirectory(prefix="sweeps-check-") as tmp:
        try:
            adapter = tracker.download_adapter(run.run_id, Path(tmp))  # sha256 of every file, and the manifest's
            metrics = evaluate_adapter(spec, params, adapter, split="validation")  # loads on the base, evaluates
        except Exception as exc:
            return f"adapter of run {run.run_id} does not verify or load: {type(exc).__name__}: {exc}"
    differ = {k: (metrics[k], run.metrics.get(k)) for k in ("accuracy", "macro_f1")
              if not math.isclose(metrics[k], run.metrics.get(k, math.nan), abs_tol=1e-9)}
    return f"reloaded adapter scores differently from the run's metrics: {differ}" if differ else None


def _leftovers(spec, tracker, trials, records) -> list[str]:
    from sweeps import store

    out = [f"Optuna trial {t.number} left {t.state}" for t in trials if t.state in ("RUNNING", "WAITING")]
    out += [f"MLflow run {r.run_id} (trial {r.trial_number}) left RUNNING" for r in records if r.status == "RUNNING"]
    parent = tracker.parent_run(spec.name)
    if parent and tracker.client.get_run(parent).info.status == "RUNNING":
        out.append(f"parent run {parent} left RUNNING")
    out += [f"run {r.run_id} (trial {r.trial_number}, {r.status}) keeps adapter files"
            for r in records if r.status != "FINISHED" and tracker.client.list_artifacts(r.run_id, "adapter")]
    out += [f"half-written adapter dir {p}" for p in (store.store_dir() / "trials").rglob("*.partial-*")]
    return out


def _registry(spec, tracker, records, models: dict[str, str], orphans: list) -> None:
    from sweeps.driver.promotion.front import choose_record, complete_records

    good = {r.run_id for r in records if (r.status, r.state) == ("FINISHED", "COMPLETE")}
    for name, policy in models.items():
        versions = tracker.client.search_model_versions(f"name = '{name}'")
        per_run = defaultdict(list)
        for v in versions:
            per_run[v.run_id].append(v.version)
            if v.run_id not in good:
                orphans.append(f"{name}/{v.version} comes from run {v.run_id}, not a COMPLETE trial")
        orphans += [f"{name}: run {run} has versions {vs}" for run, vs in per_run.items() if len(vs) > 1]
        aliases = tracker.client.get_registered_model(name).aliases
        existing = {str(v.version): v.run_id for v in versions}
        orphans += [f"{name}@{a} points at missing version {v}" for a, v in aliases.items() if str(v) not in existing]
        recs = complete_records(spec, tracker)
        chosen = recs[choose_record(spec, recs, policy)].run_id  # with the spec's tolerances, as promote does
        if existing.get(str(aliases.get("champion"))) != chosen:
            orphans.append(f"{name}@champion is {aliases.get('champion')}, not the chosen run {chosen}")


def _snapshot(spec, tracker, models) -> dict:
    from sweeps import store
    from sweeps.driver.study.study import Study

    exp = tracker.client.get_experiment_by_name(spec.name)
    runs = tracker.client.search_runs([exp.experiment_id], max_results=10000)
    baselines = [r for r in runs if r.data.tags.get("sweeps.role") == "baseline"]
    return {"trials": len(Study(spec, store.study_storage()).trials()), "runs": len(runs) - len(baselines),
            "baselines": len(baselines),
            "versions": {n: len(tracker.client.search_model_versions(f"name = '{n}'")) for n in models}}


def _rerun_creates_nothing(spec, spec_file: Path, tracker, models: dict[str, str]) -> None:
    """`sweep run` and `sweep promote` again, in this process (no Ray starts: nothing is left to run)."""
    from sweeps.driver.promotion.promote import promote_sweep
    from sweeps.driver.runner import run_sweep

    before = _snapshot(spec, tracker, models)
    outcome = run_sweep(spec, Path(spec_file).read_text(encoding="utf-8"))
    assert outcome.ran == 0, f"running the finished sweep again ran {outcome.ran} trial(s)"
    for name, policy in models.items():
        promoted = promote_sweep(spec.name, policy, name, tracker=tracker)
        assert not any(e["created"] for e in promoted.entries), f"promoting {name} again created a version"
    after = _snapshot(spec, tracker, models)
    if before["baselines"] == 0:  # a sweep driven without `sweep run` (a bare Coordinator) gets them now, once
        before.pop("baselines"), after.pop("baselines")
    assert after == before, f"re-running the finished sweep created something: {before} -> {after}"
