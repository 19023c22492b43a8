"""Where things live: the local store (mlruns/ by default) and safe names inside it.

Everything a sweep writes goes under one directory so a user can back it up, move it or delete it as a unit:
    <store>/mlflow.db   MLflow metadata        <store>/optuna.db   Optuna studies
    <store>/artifacts/  MLflow artifacts       <store>/trials/     per-trial working dirs (adapters before logging)
    <store>/cache/      tokenized data, converted models
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def store_dir() -> Path:
    """The store root: $SWEEPS_STORE, else ./mlruns (relative to the working directory, like MLflow's default)."""
    return Path(os.environ.get("SWEEPS_STORE", "mlruns")).expanduser().resolve()


def tracking_uri(explicit: str | None = None) -> str:
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{_made(store_dir()) / 'mlflow.db'}"


def study_storage(explicit: str | None = None) -> str:
    url = explicit or os.environ.get("SWEEPS_STUDY_STORAGE")
    return url or f"sqlite:///{_made(store_dir()) / 'optuna.db'}"


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)  # only when a database is about to be opened: validate creates nothing
    return path


def ray_address(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("SWEEPS_RAY_ADDRESS") or None


def artifacts_dir() -> Path:
    return store_dir() / "artifacts"


def cache_dir() -> Path:
    path = Path(os.environ.get("SWEEPS_CACHE", store_dir() / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_name(name: str, what: str = "name") -> str:
    """Refuse names that could escape a directory (`../x`, `/abs`, `a\\b`, `%2e%2e%2f`, `a#b`)."""
    if not _SAFE.match(name) or ".." in name:
        raise ValueError(f"unsafe {what} {name!r}: use letters, digits, '_', '.', '-' (no path separators, no '..')")
    return name


def trial_dir(sweep: str, trial_number: int) -> Path:
    path = store_dir() / "trials" / safe_name(sweep, "sweep name") / f"trial-{trial_number:04d}"
    path.mkdir(parents=True, exist_ok=True)
    return path
