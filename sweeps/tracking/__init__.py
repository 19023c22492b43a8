"""MLflow: experiments, runs, artifacts, the model registry and the pyfunc model. The only folder importing mlflow.

tracker.py composes the `Tracker` from one class per section: base.py (the client, experiments, paged searches),
runs.py (sweep and trial runs), baselines.py (baseline runs), artifacts.py (files, tables, adapter downloads),
registry.py (versions, aliases, logged models). refs.py parses registry references; manifest.py checks adapter
files against their sha256 manifest; pyfunc.py is the MLflow model a registered version loads as.
"""

import logging
import os

# Before mlflow is imported (every module here imports this package first): its progress bar writes to stderr on
# every artifact upload and floods sweep logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow logs every alembic migration step of a fresh database, and every registry retry, at INFO.
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
