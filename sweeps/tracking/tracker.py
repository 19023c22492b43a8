"""Experiment tracking: MLflow experiments, parent/child runs, artifacts, manifests. With its registry half
(sweeps.track_registry, a mixin of Tracker) and the pyfunc model (sweeps.mlmodel), the only code importing mlflow.

Layout: one experiment per sweep (tagged for MLflow's model-training view), one parent run per sweep (tag
sweeps.role=parent: spec, Pareto plot and front table), one child run per trial (sweeps.role=trial,
mlflow.parentRunId; named after its point, with the data splits as dataset inputs) and one per baseline
(sweeps.role=baseline). Our trial state lives in the tag sweeps.state, because MLflow has no PRUNED status
(PRUNED is stored as KILLED).

Every call goes through an explicit `MlflowClient(tracking_uri, registry_uri)`, never the fluent global state
(mlflow.start_run), so sqlite:///x.db and an `mlflow server` URL behave alike and Trackers never leak into
each other. Only the sweep driver writes: SQLite locks the whole database per write; parallel writers fail.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

# Before importing mlflow: its progress bar writes to stderr on every artifact upload and floods sweep logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from sweeps import faults, store  # noqa: E402
from sweeps.tracking.manifest import verify_tree, write_manifest  # noqa: E402,F401
from sweeps.tracking.registry import RegistryMixin, _check_run_id  # noqa: E402

# MLflow logs every alembic migration step of a fresh database, and every registry retry, at INFO.
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_PAGE = 1000  # runs per search page; module-level so a test can force paging with a tiny value
_MAX_PARAMS, _MAX_TAGS, _MAX_METRICS = 100, 100, 1000  # MLflow's per-log_batch limits
_REASON_CHARS = 5000  # failure tracebacks stay under MLflow's 8000-char tag limit
STATUS_OF = {"COMPLETE": "FINISHED", "FAILED": "FAILED", "PRUNED": "KILLED"}
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, judges); this kind is the
# model-training view (runs table, charts, compare). Values: the UI's ExperimentKind enum (server/js).
_KIND = {"mlflow.experimentKind": "custom_model_development"}
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


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _dataset_input(d: dict):
    """A sweeps.inputs descriptor -> MLflow DatasetInput (context tag train / validation / test)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    src = dict(d["source"])
    kind = src.pop("type")
    schema = {"mlflow_colspec": [{"type": "string", "name": c, "required": True} for c in d.get("columns", [])]}
    return DatasetInput(Dataset(d["name"], d["digest"], kind, json.dumps(src), json.dumps(schema),
                                json.dumps({"num_rows": d["rows"]})), [InputTag("mlflow.data.context", d["context"])])


# ---------------------------------------------------------------------- the tracker


class Tracker(RegistryMixin):
    def __init__(self, tracking_uri: str | None = None):
        self.tracking_uri = store.tracking_uri(tracking_uri)
        self.registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or self.tracking_uri
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        self._experiments: dict[str, str] = {}
        self._datasets: dict[str, list] = {}  # sweep -> MLflow DatasetInputs its trials record (start_sweep)

    def _is_remote(self) -> bool:
        return urlparse(self.tracking_uri).scheme in {"http", "https", "databricks"}

    def _experiment_id(self, sweep: str, create: bool = False) -> str | None:
        if sweep in self._experiments:
            return self._experiments[sweep]
        store.safe_name(sweep, "sweep name")
        exp = self.client.get_experiment_by_name(sweep)
        if not create and (exp is None or exp.lifecycle_stage == "deleted"):
            return None
        if exp is None:
            # A server manages its own artifact root; locally artifacts go under <store>/artifacts/<sweep>.
            location = None if self._is_remote() else (store.artifacts_dir() / sweep).as_uri()
            try:
                exp_id = self.client.create_experiment(sweep, location, tags={"sweeps.sweep": sweep, **_KIND})
            except MlflowException as exc:  # another process created it between our get and create
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp_id = self.client.get_experiment_by_name(sweep).experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp_id)  # a deleted experiment's name cannot be reused
        self._experiments[sweep] = exp_id
        return exp_id

    def _search(self, sweep: str, filter_string: str) -> list:
        """All active runs of a sweep matching a filter, following page tokens."""
        exp_id = self._experiment_id(sweep)
        if exp_id is None:
            return []
        runs, token = [], None
        while True:
            page = self.client.search_runs([exp_id], filter_string, ViewType.ACTIVE_ONLY, max_results=_PAGE,
                                           order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _trial_runs(self, sweep: str, extra: str = "") -> list:
        return self._search(sweep, "tags.`sweeps.role` = 'trial'" + extra)

    def _set_tags(self, run_id: str, tags: dict) -> None:
        for chunk in _chunks([RunTag(k, str(v)) for k, v in tags.items()], _MAX_TAGS):
            self.client.log_batch(run_id, tags=chunk)

    def _fail(self, run_id: str, reason: str) -> None:
        self._set_tags(run_id, {"sweeps.state": "FAILED", "sweeps.failure_reason": reason[:_REASON_CHARS]})
        self.client.set_terminated(run_id, "FAILED")

    # ------------------------------------------------------------------ sweeps and trials

    def parent_run(self, sweep: str) -> str | None:
        runs = self._search(sweep, "tags.`sweeps.role` = 'parent'")
        return runs[0].info.run_id if runs else None

    def start_sweep(self, name: str, spec_yaml: str, description: str = "",
                    extra_tags: dict | None = None, datasets: list[dict] | None = None) -> str:
        """The sweep's parent run (created once, resumed after). `datasets`: sweeps.inputs descriptors, logged as
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
        inputs = self.client.get_run(_check_run_id(run_id)).inputs
        out = []
        for d in (inputs.dataset_inputs if inputs else []):
            rows = json.loads(d.dataset.profile or "{}").get("num_rows")
            ctx = next((t.value for t in d.tags if t.key == "mlflow.data.context"), None)
            out.append({"name": d.dataset.name, "digest": d.dataset.digest, "rows": rows, "context": ctx})
        return sorted(out, key=lambda d: d["name"])

    def log_datasets(self, run_id: str, inputs: list) -> None:
        # Logging the same (name, digest) again adds nothing: the store reuses the dataset and the input edge.
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

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
        for chunk in _chunks([Param(k, v) for k, v in missing.items()], _MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)
        self._set_tags(run_id, {"sweeps.state": "RUNNING", **(tags or {})})
        self.log_datasets(run_id, self._datasets.get(sweep, []))
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        # NaN/inf would poison MLflow's charts and the Pareto front; a skipped value reads as "not measured".
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for chunk in _chunks(items, _MAX_METRICS):
            self.client.log_batch(run_id, metrics=chunk)

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

    def discard_adapter(self, run_id: str) -> bool:
        """Delete a run's `adapter` artifacts (a partial upload, or the upload of a run that did not finish)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            repo = get_artifact_repository(self.client.get_run(_check_run_id(run_id)).info.artifact_uri)
            if not repo.list_artifacts("adapter"):
                return False
            repo.delete_artifacts("adapter")
            return True
        except Exception:  # a store that cannot delete (or is still full): the FAILED state says enough
            logging.getLogger(__name__).warning("could not delete the partial adapter of run %s", run_id)
            return False

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
        rows, token = [], None
        while True:
            page = self.client.search_experiments(ViewType.ACTIVE_ONLY, max_results=_PAGE, page_token=token)
            rows += [self._sweep_row(exp) for exp in page if "sweeps.sweep" in exp.tags]
            token = page.token
            if not token:
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

    # ------------------------------------------------------------------ baselines

    def log_baseline(self, sweep: str, parent_run_id: str, name: str, metrics: dict[str, float], params: dict,
                     tags: dict | None = None) -> str:
        """A FINISHED child run of the sweep's parent holding a reference figure (majority class, linear probe,
        the untuned base): one run per name, updated in place when the sweep runs again. Its sweeps.role is
        `baseline`, so trial listings (role `trial`) never count it."""
        wanted = {k: str(v) for k, v in params.items()}
        run = self._baseline_runs(sweep).get(name)
        if run is not None and any(run.data.params.get(k, v) != v for k, v in wanted.items()):
            self.client.delete_run(run.info.run_id)  # MLflow cannot change a logged param: start the run afresh
            run = None
        mine = {**{k: str(v) for k, v in (tags or {}).items()}, "sweeps.role": "baseline", "sweeps.kind": "baseline",
                "sweeps.baseline": name, "sweeps.sweep": sweep, "mlflow.parentRunId": parent_run_id}
        if run is None:
            run_id = self.client.create_run(self._experiment_id(sweep, create=True), run_name=f"baseline: {name}",
                                            tags=mine).info.run_id
        else:
            run_id = run.info.run_id
            self.client.update_run(run_id, status="RUNNING")
        have = run.data.params if run is not None else {}
        for chunk in _chunks([Param(k, v) for k, v in wanted.items() if k not in have], _MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)
        self.log_metrics(run_id, metrics)
        self._set_tags(run_id, mine)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def _baseline_runs(self, sweep: str) -> dict:
        runs = self._search(sweep, "tags.`sweeps.role` = 'baseline'")
        return {r.data.tags["sweeps.baseline"]: r for r in runs if "sweeps.baseline" in r.data.tags}

    def baselines(self, sweep: str) -> dict[str, dict[str, float]]:
        """name -> metrics of the sweep's baseline runs ({} when none were logged)."""
        return {name: dict(r.data.metrics) for name, r in sorted(self._baseline_runs(sweep).items())}

    # ------------------------------------------------------------------ artifacts

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_tables(self, run_id: str, folder: Path) -> None:
        """Each `name.json` ({"columns": [...], "data": [[...]]}) of folder becomes an MLflow table of the run,
        shown in the UI's artifact view and in its evaluation / table comparison."""
        for path in sorted(Path(folder).glob("*.json")):
            table = json.loads(path.read_text(encoding="utf-8"))
            columns = {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}
            self.client.log_table(run_id, data=columns, artifact_file=path.name)

    def log_rows(self, run_id: str, artifact_file: str, rows: list[dict]) -> None:
        """rows (dicts with the same keys) as an MLflow table artifact of the run, e.g. the Pareto front."""
        if rows:
            self.client.log_table(run_id, data={k: [r.get(k) for r in rows] for k in rows[0]},
                                  artifact_file=artifact_file)

    def sweep_spec_text(self, sweep: str) -> str | None:
        """The spec YAML the sweep was last started with (artifact spec.yaml of its parent run)."""
        run_id = self.parent_run(sweep)
        if run_id is None:
            return None
        with tempfile.TemporaryDirectory(prefix="sweeps-spec-") as tmp:
            return Path(self.client.download_artifacts(run_id, "spec.yaml", tmp)).read_text(encoding="utf-8")

    def download_adapter(self, run_id: str, dst: Path) -> Path:
        """Fetch artifact "adapter" and check every file against manifest.json, and the manifest itself
        against the run's sweeps.adapter_sha256 tag (so a rewritten manifest is caught too)."""
        Path(dst).mkdir(parents=True, exist_ok=True)
        local = Path(self.client.download_artifacts(run_id, "adapter", str(dst)))
        verify_tree(local, self.client.get_run(run_id).data.tags.get("sweeps.adapter_sha256"))
        return local

    def ui_hint(self) -> str:
        if self._is_remote():
            return f"open {self.tracking_uri} (MLflow UI of the tracking server)"
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"
