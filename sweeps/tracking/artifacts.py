"""Artifacts of runs: files and tables logged, the sweep's spec read back, adapters downloaded and verified against
their sha256 manifest (manifest.py), partial uploads removed."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from sweeps.tracking.base import TrackingBase, check_run_id
from sweeps.tracking.manifest import verify_tree


class Artifacts(TrackingBase):
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
        if not rows:
            return
        from mlflow.exceptions import MlflowException

        data = {k: [r.get(k) for r in rows] for k in rows[0]}
        for attempt in range(3):
            try:
                self.client.log_table(run_id, data=data, artifact_file=artifact_file)
                return
            except MlflowException as exc:
                # Two drivers of one sweep log the front to the same parent run at once: MLflow reads, extends and
                # inserts the run's mlflow.loggedArtifacts tag, and the slower insert hits the tag's unique key
                # (seen on PostgreSQL). The tag exists by then, so the retry updates it.
                text = str(exc)
                if attempt == 2 or not ("UniqueViolation" in text or "UNIQUE constraint" in text):
                    raise
                time.sleep(0.2 * (attempt + 1))

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

    def discard_adapter(self, run_id: str) -> bool:
        """Delete a run's `adapter` artifacts (a partial upload, or the upload of a run that did not finish)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            repo = get_artifact_repository(self.client.get_run(check_run_id(run_id)).info.artifact_uri)
            if not repo.list_artifacts("adapter"):
                return False
            repo.delete_artifacts("adapter")
            return True
        except Exception:  # a store that cannot delete (or is still full): the FAILED state says enough
            logging.getLogger(__name__).warning("could not delete the partial adapter of run %s", run_id)
            return False
