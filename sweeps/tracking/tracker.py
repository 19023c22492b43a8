"""The Tracker: everything the platform records in MLflow, through one object.

It is composed of one class per section, each in its own module, all over one explicit `MlflowClient`
(base.py): the sweep and trial runs (runs.py), the baseline runs (baselines.py), artifacts and adapter downloads
(artifacts.py) and the model registry with the logged pyfunc models (registry.py). The pyfunc model itself is
pyfunc.py; registry references (`reviews@champion`) are refs.py.
"""

from __future__ import annotations

from sweeps.tracking.baselines import BaselineRuns
from sweeps.tracking.registry import Registry
from sweeps.tracking.runs import RunLog


class Tracker(RunLog, BaselineRuns, Registry):
    """`Tracker(tracking_uri=None)`: the store of $MLFLOW_TRACKING_URI, else sqlite:///<store>/mlflow.db."""
