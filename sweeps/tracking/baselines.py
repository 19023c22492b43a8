"""Baseline runs: reference figures (majority class, linear probe, the untuned base) as FINISHED child runs of a
sweep's parent, tagged sweeps.role=baseline so trial listings never count them."""

from __future__ import annotations

from mlflow.entities import Param

from sweeps.tracking.base import _MAX_PARAMS, TrackingBase, chunks


class BaselineRuns(TrackingBase):
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
        for chunk in chunks([Param(k, v) for k, v in wanted.items() if k not in have], _MAX_PARAMS):
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
