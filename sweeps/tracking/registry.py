"""The MLflow Model Registry part of the Tracker: logged (pyfunc) models, versions, aliases, race-safe writes.

Only MLflow calls: which trial to promote, with which lineage and card, is decided in sweeps/driver/promotion.
Like the other parts it calls MLflow only through the Tracker's explicit `MlflowClient`. A version's source is a
logged MLflow model (`models:/<model_id>`, a pyfunc built by pyfunc.py) that holds the trial's adapter; serve and
export still read the trial run's `adapter` artifact (sweeps/production/sources.py), which every version, older
ones included, has.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException

from sweeps import store
from sweeps.tracking.artifacts import Artifacts
from sweeps.tracking.base import check_run_id

# Promotions racing on one model name: the SQL store picks max(version)+1, so the loser hits the
# (name, version) primary key, SQLite's write lock, or the store's own 3 immediate retries running out.
_RACE_MARKERS = ("RESOURCE_ALREADY_EXISTS", "UNIQUE constraint", "IntegrityError", "database is locked",
                 "Giving up after", "duplicate key")
# The logged model's name within its run. Never the name of a run artifact folder: MLflow 3 downloads a run's
# artifact `X` merged with the files of the run's logged model named `X`, so naming it "adapter" would put the
# MLmodel files into every download of the trial's adapter (and fail its manifest check).
MODEL_NAME = "pyfunc-adapter"


class Registry(Artifacts):
    """Registered models and their versions; the adapter of a trial run as a logged MLflow pyfunc model."""

    def find_version(self, name: str, run_id: str) -> str | None:
        store.safe_name(name, "model name")
        found = self.client.search_model_versions(f"name = '{name}' AND run_id = '{check_run_id(run_id)}'")
        ours = [int(v.version) for v in found if v.tags.get("sweeps.source_run_id") == run_id]
        return str(min(ours)) if ours else None

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self.client.create_registered_model(name, tags={"sweeps.kind": "peft-adapter"})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _retry_race(self, call, attempts: int = 8, recheck=None):
        """Run a registry write, retrying with jitter when it lost a race to another promoter."""
        for attempt in range(attempts):
            try:
                return call()
            except Exception as exc:  # MlflowException or a raw SQLAlchemy error, depending on the store
                if attempt == attempts - 1 or not any(m in str(exc) for m in _RACE_MARKERS):
                    raise
            done = recheck() if recheck else None
            if done:
                return done
            time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))  # jitter spreads racing promoters apart
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the logged (pyfunc) model

    def adapter_model(self, run_id: str) -> str | None:
        """The id of the READY pyfunc model already logged for this trial run's adapter, if any."""
        run = self.client.get_run(check_run_id(run_id))
        found = self.client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'")
        sha = run.data.tags.get("sweeps.adapter_sha256")
        ready = [m for m in found if str(m.status).endswith("READY") and m.tags.get("sweeps.adapter_sha256") == sha]
        return min(ready, key=lambda m: m.creation_timestamp).model_id if ready else None

    def log_adapter_model(self, run_id: str, info: dict) -> str:
        """Log the trial's adapter as an MLflow pyfunc model (pyfunc.py), once per run; return its model id.

        `info`: the lineage the model needs to load itself (task, base_model, base_model_sha256, ...)."""
        from sweeps.tracking import pyfunc

        found = self.adapter_model(run_id)
        if found:
            return found
        run = self.client.get_run(run_id)
        sha = run.data.tags.get("sweeps.adapter_sha256", "")
        model = self._retry_race(lambda: self.client.create_logged_model(
            run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, model_type="peft-adapter",
            params={k: str(v)[:6000] for k, v in run.data.params.items()},
            tags={"sweeps.adapter_sha256": sha, "sweeps.task": str(info.get("task", ""))}))
        with tempfile.TemporaryDirectory(prefix="sweeps-model-") as tmp:
            adapter = self.download_adapter(run_id, Path(tmp) / "dl")  # verified against the manifest
            local = Path(tmp) / "model"
            pyfunc.save(local, adapter, {**info, "adapter_sha256": sha}, model_id=model.model_id, run_id=run_id,
                         artifact_path=model.artifact_location)
            self.client.log_model_artifacts(model.model_id, str(local))
        self.client.finalize_logged_model(model.model_id, "READY")
        self._retry_race(lambda: self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)]))
        return model.model_id

    def create_version(self, name: str, run_id: str, tags: dict, description: str = "",
                       model_info: dict | None = None) -> str:
        """A new model version whose source is the run's adapter logged as a pyfunc model (a LoggedModel, so
        `mlflow.pyfunc.load_model("models:/NAME@alias")` works). `model_info` defaults to `tags` (the lineage)."""
        store.safe_name(name, "model name")
        model_id = self.log_adapter_model(check_run_id(run_id), model_info if model_info is not None else tags)
        # The model's storage location, not `models:/<id>`: the SQL registry store resolves that URI through the
        # *global* tracking URI (an MLflow TODO), which is not this client's. model_id links the two anyway.
        source = self.client.get_logged_model(model_id).artifact_location
        # The SQL registry store drops model_id: the tag keeps the version -> logged model link readable.
        tags = {**{k: str(v) for k, v in tags.items()}, "sweeps.source_run_id": run_id, "sweeps.model_id": model_id}

        def create() -> str:
            self._ensure_registered_model(name)
            return str(self.client.create_model_version(
                name, source, run_id=run_id, tags=tags, description=description,
                await_creation_for=0, model_id=model_id,
            ).version)

        # The failed call may have committed anyway (say, a lost HTTP response): recheck, never duplicate.
        return self._retry_race(create, recheck=lambda: self.find_version(name, run_id))

    def settle_version(self, name: str, run_id: str, mine: str) -> str:
        """After creating `mine` for a run: if a racing promoter registered the same run too (both looked, found
        nothing, both created), keep the lowest version and delete ours. Every racer sees the lowest one (it was
        committed first) and keeps it, so they converge on one version per run."""
        found = self.client.search_model_versions(f"name = '{name}' AND run_id = '{check_run_id(run_id)}'")
        ours = sorted(int(v.version) for v in found if v.tags.get("sweeps.source_run_id") == run_id)
        keep = str(ours[0]) if ours else mine
        if keep != str(mine):
            self._retry_race(lambda: self.client.delete_model_version(name, str(mine)))
        return keep

    def set_alias(self, name: str, alias: str, version: str) -> None:
        # MLflow reads the alias, then inserts or updates it: two promoters setting "champion" at once collide.
        self._retry_race(lambda: self.client.set_registered_model_alias(name, alias, str(version)))

    def describe_version(self, name: str, version: str, text: str) -> None:
        self.client.update_model_version(name, str(version), description=text)

    def set_version_tags(self, name: str, version: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def version_info(self, name: str, version_or_alias: str) -> dict:
        """Raises LookupError for an unknown model, version or alias (callers cannot catch MlflowException)."""
        ref = str(version_or_alias)
        try:
            mv = (self.client.get_model_version(name, ref) if ref.isdigit()
                  else self.client.get_model_version_by_alias(name, ref))
        except MlflowException as exc:
            # A missing alias comes back as INVALID_PARAMETER_VALUE, a missing version as RESOURCE_DOES_NOT_EXIST.
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in exc.message:
                raise LookupError(f"no model version {name}{'/' if ref.isdigit() else '@'}{ref}") from None
            raise
        return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id, "source": mv.source,
                "model_id": getattr(mv, "model_id", None) or mv.tags.get("sweeps.model_id"),
                "tags": dict(mv.tags), "aliases": list(mv.aliases), "description": mv.description or "",
                "creation_time": mv.creation_timestamp}

