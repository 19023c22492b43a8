"""PEFT hyperparameter sweeps: Ray Tune x Optuna x MLflow."""

from sweeps import hub_guard

__version__ = "0.1.0"

# Before anything imports bitsandbytes (peft, transformers): no kernel is fetched from the Hugging Face Hub.
hub_guard.install()
