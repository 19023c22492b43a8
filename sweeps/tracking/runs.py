"""Sweeps and trials as MLflow runs: one experiment per sweep (tagged for MLflow's model-training view), one parent
run per sweep (tag sweeps.role=parent: spec, Pareto plot and front table), one child run per trial
(sweeps.role=trial, mlflow.parentRunId; named after its point, with the data splits as dataset inputs).

Our trial state lives in the tag sweeps.state, because MLflow has no PRUNED status (PRUNED is stored as KILLED).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Param

from sweeps import faults
from sweeps.tracking.artifacts import Artifacts
from sweeps.tracking.base import _KIND, _MAX_PARAMS, _REASON_CHARS, check_run_id, chunks
from sweeps.tracking.manifest import write_manifest

STATUS_OF = {"COMPLETE": "FINISHED", "FAILED": "FAILED", "PRUNED": "KILLED"}
_TARGETS = {"attention": "attn", "ffn": "ffn", "all-linear": "all"}
_LAYERS = {"all": "", "upper-half": "upper", "lower-half": "lower"}  # a block range reads L3-5


@dataclass
class TrialRecord:
    run_id: str
    trial_number: int
    status: str  # MLflow run status: RUNNING, FINISHED, FAILED, KILLED
    state: str  # our sweeps.state tag: COMPLETE, FAILED, PRUNED, RUNNING
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int
    end_time: int | None


def trial_run_name(number: int, params: dict) -> str:
    """What the runs table shows for a trial, from its params: `t07 r2 α4 attn nf4` (rank, effective alpha,
    target group, quantization; the method and the blocks when they are not LoRA / all blocks)."""
    p = {k: str(v) for k, v in params.items() if v is not None}
    parts = [f"t{number:02d}"]
    if p.get("method", "lora") != "lora":
        parts.append(p["method"])
    if p.get("method") != "head-only":
        alpha = p.get("effective_alpha") or p.get("alpha")
        parts += [f"r{p['rank']}" if "rank" in p else "", f"α{float(alpha):g}" if alpha else "",
                  _TARGETS.get(p.get("target", ""), p.get("target", "")),
                  _LAYERS.get(p.get("layers", "all"), f"L{p.get('layers')}")]
    if "quantization" in p:
        parts.append("fp" if p["quantization"] == "none" else p["quantization"])
    return " ".join(x for x in parts if x)


def _dataset_input(d: dict):
    """A sweeps.driver.inputs descriptor -> MLflow DatasetInput (context tag train / validation / test)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    src = dict(d["source"])
    kind = src.pop("type")
    schema = {"mlflow_colspec": [{"type": "string", "name": c, "required": True} for c in d.get("columns", [])]}
    return DatasetInput(Dataset(d["name"], d["digest"], kind, json.dumps(src), json.dumps(schema),
                                json.dumps({"num_rows": d["rows"]})), [InputTag("mlflow.data.context", d["context"])])


class RunLog(Artifacts):
    """The parent run of a sweep and the runs of its trials: start, log, finish, list, reconcile."""

    def parent_run(self, sweep: str) -> str | None:
        runs = self._search(sweep, "tags.`sweeps.role` = 'parent'")
        return runs[0].info.run_id if runs else None

    def start_sweep(self, name: str, spec_yaml: str, description: str = "",
                    extra_tags: dict | None = None, datasets: list[dict] | None = None) -> str:
        """The sweep's parent run (created once, resumed after). `datasets`: sweeps.driver.inputs descriptors, logged as
        MLflow dataset inputs on the parent and on every trial this Tracker starts for the sweep."""
        exp_id = self._experiment_id(name, create=True)
        self.client.set_experiment_tag(exp_id, *next(iter(_KIND.items())))  # sweeps made before the tag had none
        run_id = self.parent_run(name)
        if run_id is None:
            tags = {"sweeps.role": "parent", "sweeps.sweep": name}
            run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        else:  # resume: one parent per sweep however often the driver restarts
            self.client.update_run(run_id, status="RUNNING")
        self._set_tags(run_id, {"mlflow.note.content": description, **(extra_tags or {})})
        self.client.log_text(run_id, spec_yaml, "spec.yaml")
        if datasets:
            self._datasets[name] = [_dataset_input(d) for d in datasets]
            self.log_datasets(run_id, self._datasets[name])
        return run_id

    def run_datasets(self, run_id: str) -> list[dict]:
        """The dataset inputs of a run: name, digest, rows, context."""
        inputs = self.client.get_run(check_run_id(run_id)).inputs
        out = []
        for d in (inputs.dataset_inputs if inputs else []):
            rows = json.loads(d.dataset.profile or "{}").get("num_rows")
            ctx = next((t.value for t in d.tags if t.key == "mlflow.data.context"), None)
            out.append({"name": d.dataset.name, "digest": d.dataset.digest, "rows": rows, "context": ctx})
        return sorted(out, key=lambda d: d["name"])

    def log_datasets(self, run_id: str, inputs: list) -> None:
        # Logging the same (name, digest) again adds nothing: the store reuses the dataset and the input edge.
        # Two drivers of one sweep (scale-out) log the same new dataset at once: the loser's INSERT violates the
        # dataset's unique key, and a second try finds the winner's row and only adds the edge.
        for attempt in range(3):
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except Exception as exc:  # sqlalchemy IntegrityError, raw or wrapped in MlflowException
                if attempt == 2 or not any(s in str(exc).lower() for s in ("unique", "duplicate key", "integrity")):
                    raise
                time.sleep(0.2 * (attempt + 1))

    def finish_sweep(self, parent_run_id: str, status: str = "FINISHED", metrics: dict | None = None,
                     tags: dict | None = None) -> None:
        self.log_metrics(parent_run_id, metrics or {})
        self._set_tags(parent_run_id, tags or {})
        self.client.set_terminated(parent_run_id, status)

    def start_trial(self, sweep: str, parent_run_id: str, trial_number: int, params: dict,
                    tags: dict | None = None) -> str:
        exp_id = self._experiment_id(sweep, create=True)
        wanted = {k: str(v) for k, v in params.items()}  # MLflow stores str(value): compare like with like
        found = self._trial_runs(sweep, f" AND tags.`sweeps.trial_number` = '{int(trial_number)}'")
        have = found[0].data.params if found else {}
        name = trial_run_name(trial_number, {**have, **wanted})  # a resumed run keeps the name of its full params
        if not found:
            run = self.client.create_run(exp_id, run_name=name, tags={
                "mlflow.parentRunId": parent_run_id, "sweeps.role": "trial", "sweeps.sweep": sweep,
                "sweeps.trial_number": str(trial_number), "sweeps.state": "RUNNING"})
            missing = wanted
        else:
            run, have = found[0], found[0].data.params
            clash = [f"{k}: {have[k]!r} != {v!r}" for k, v in wanted.items() if k in have and have[k] != v]
            if clash:  # MLflow refuses to change a logged param; name the keys instead of its generic error
                raise ValueError(f"trial {trial_number} of {sweep} was logged with other params: {clash}")
            missing = {k: v for k, v in wanted.items() if k not in have}
            self.client.update_run(run.info.run_id, status="RUNNING", name=name)
        run_id = run.info.run_id
        for chunk in chunks([Param(k, v) for k, v in missing.items()], _MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)
        self._set_tags(run_id, {"sweeps.state": "RUNNING", **(tags or {})})
        self.log_datasets(run_id, self._datasets.get(sweep, []))
        return run_id

    def finish_trial(self, run_id: str, state: str, metrics: dict | None = None,
                     adapter_dir: Path | None = None, reason: str | None = None,
                     extra_tags: dict | None = None) -> None:
        """Close a trial. Everything is written before the status flips, so a FINISHED run always has its
        adapter; if the adapter is refused or its upload fails, the run becomes FAILED and the error is
        re-raised."""
        if state not in STATUS_OF:
            raise ValueError(f"state must be one of {sorted(STATUS_OF)}, got {state!r}")
        tags = {"sweeps.state": state, **(extra_tags or {})}
        if adapter_dir is not None:
            try:
                tags["sweeps.adapter_sha256"] = write_manifest(Path(adapter_dir))
                self.client.log_artifacts(run_id, str(adapter_dir), artifact_path="adapter")
                faults.point("track.uploaded", run=run_id)
            except Exception as exc:
                # A full store stops the copy half-way: remove what was copied, so a FAILED run never carries
                # a partial adapter that a later reader could take for the trial's (tests/faults, store full).
                self.discard_adapter(run_id)
                self._fail(run_id, f"adapter upload failed: {exc}")
                raise
        self.log_metrics(run_id, metrics or {})
        if reason:
            tags["sweeps.failure_reason"] = reason[:_REASON_CHARS]
        self._set_tags(run_id, tags)
        self.client.set_terminated(run_id, STATUS_OF[state])

    def set_trial_tags(self, run_id: str, tags: dict) -> None:
        self._set_tags(run_id, tags)

    def reconcile_running(self, sweep: str, reason: str = "driver stopped before the trial finished",
                          keep: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """Trials left RUNNING by a crashed driver become FAILED (not KILLED: KILLED means pruned here).
        `keep`: trial numbers a live driver is still running (another `sweep run` on the same study)."""
        stale = [r for r in self._trial_runs(sweep, " AND attributes.status = 'RUNNING'")
                 if int(r.data.tags["sweeps.trial_number"]) not in keep]
        for run in stale:
            self.discard_adapter(run.info.run_id)  # the driver may have died between the upload and FINISHED
            self._fail(run.info.run_id, reason)
        return sorted(int(r.data.tags["sweeps.trial_number"]) for r in stale)

    def trial_records(self, sweep: str) -> list[TrialRecord]:
        records = [TrialRecord(
            run_id=r.info.run_id, trial_number=int(r.data.tags["sweeps.trial_number"]), status=r.info.status,
            state=r.data.tags.get("sweeps.state", ""), params=dict(r.data.params),
            metrics=dict(r.data.metrics), tags=dict(r.data.tags), start_time=r.info.start_time,
            end_time=r.info.end_time,
        ) for r in self._trial_runs(sweep)]
        return sorted(records, key=lambda rec: rec.trial_number)

    def sweeps(self) -> list[dict]:
        rows = [self._sweep_row(exp) for exp in self._all_experiments() if "sweeps.sweep" in exp.tags]
        return sorted(rows, key=lambda r: r["name"])

    def _sweep_row(self, exp) -> dict:
        self._experiments[exp.name] = exp.experiment_id
        parent = self._search(exp.name, "tags.`sweeps.role` = 'parent'")
        info = parent[0].info if parent else None
        states = [r.data.tags.get("sweeps.state", "") for r in self._trial_runs(exp.name)]
        return {"name": exp.name, "experiment_id": exp.experiment_id, "parent_run_id": info and info.run_id,
                "status": info and info.status, "start_time": info and info.start_time, "trials": len(states),
                **{s.lower(): states.count(s) for s in ("COMPLETE", "FAILED", "PRUNED", "RUNNING")},
                "description": parent[0].data.tags.get("mlflow.note.content", "") if parent else ""}
