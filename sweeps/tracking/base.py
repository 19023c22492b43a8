"""What every part of the Tracker shares: the explicit MLflow client, the sweep's experiment, paged run searches,
tags, metrics.

Every call goes through an explicit `MlflowClient(tracking_uri, registry_uri)`, never the fluent global state
(mlflow.start_run), so sqlite:///x.db and an `mlflow server` URL behave alike and Trackers never leak into
each other. Only the sweep driver writes: SQLite locks the whole database per write; parallel writers fail.
"""

from __future__ import annotations

import math
import os
import re
import time
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, RunTag, ViewType
from mlflow.exceptions import MlflowException

from sweeps import store

_PAGE = 1000  # runs per search page; module-level so a test can force paging with a tiny value
_MAX_PARAMS, _MAX_TAGS, _MAX_METRICS = 100, 100, 1000  # MLflow's per-log_batch limits
_REASON_CHARS = 5000  # failure tracebacks stay under MLflow's 8000-char tag limit
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, judges); this kind is the
# model-training view (runs table, charts, compare). Values: the UI's ExperimentKind enum (server/js).
_KIND = {"mlflow.experimentKind": "custom_model_development"}
_RUN_ID = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")  # MLflow's run-id rule; keeps filters safe


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id or ""):
        raise ValueError(f"not a run id: {run_id!r}")
    return run_id


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class TrackingBase:
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
        for chunk in chunks([RunTag(k, str(v)) for k, v in tags.items()], _MAX_TAGS):
            self.client.log_batch(run_id, tags=chunk)

    def _fail(self, run_id: str, reason: str) -> None:
        self._set_tags(run_id, {"sweeps.state": "FAILED", "sweeps.failure_reason": reason[:_REASON_CHARS]})
        self.client.set_terminated(run_id, "FAILED")

    def _all_experiments(self) -> list:
        """Every active experiment of the store, following page tokens."""
        out, token = [], None
        while True:
            page = self.client.search_experiments(ViewType.ACTIVE_ONLY, max_results=_PAGE, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        # NaN/inf would poison MLflow's charts and the Pareto front; a skipped value reads as "not measured".
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for chunk in chunks(items, _MAX_METRICS):
            self.client.log_batch(run_id, metrics=chunk)

    def ui_hint(self) -> str:
        if self._is_remote():
            return f"open {self.tracking_uri} (MLflow UI of the tracking server)"
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"
