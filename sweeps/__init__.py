"""PEFT hyperparameter sweeps: Ray Tune x Optuna x MLflow."""

__version__ = "0.1.0"
