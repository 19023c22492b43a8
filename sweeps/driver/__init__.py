"""The driver side: one process per `sweep run` that proposes points, runs them as trials on Ray, records every
trial in MLflow before telling Optuna, then selects and promotes. It imports ray, optuna and mlflow only through
their folders (cluster/, study/, sweeps/tracking/)."""
