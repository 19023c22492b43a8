"""Where things live: the local store (mlruns/ by default) and safe names inside it.

Everything a sweep writes goes under one directory so a user can back it up, move it or delete it as a unit:
    <store>/mlflow.db   MLflow metadata        <store>/optuna.db   Optuna studies
    <store>/artifacts/  MLflow artifacts       <store>/trials/     per-trial working dirs (adapters before logging)
    <store>/cache/      tokenized data, converted models
"""

from __future__ import annotations

import os
import re
import shutil
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


def machine_id() -> str:
    """Host name plus boot id: a process id only means something on the machine, and boot, that recorded it."""
    import socket

    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _holder(fh, wait_s: float = 2.0) -> str:
    """The lock holder's "pid N on host" line. The holder writes it just after taking the lock, so a second driver
    started in the same instant can find the file still empty: poll briefly rather than report no name."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        fh.seek(0)
        text = fh.read().strip()
        if text or time.monotonic() > deadline:
            return text or "another process"
        time.sleep(0.05)


class SweepBusy(RuntimeError):
    """Another `sweep run` drives this sweep on a SQLite study."""


def driver_lock(study_url: str, sweep: str):
    """On a SQLite study, an exclusive lock file beside the database, held (open) for the whole run; else None.

    Two drivers on one SQLite study (and its SQLite MLflow store) fight over SQLite's single write lock, and MLflow
    writes are not retried: one of them crashed mid-sweep. PostgreSQL takes several drivers (heartbeats, live
    budget; tests/test_scaleout.py); SQLite takes one and refuses the second at once, by name. The kernel drops
    an flock when its holder dies, even by SIGKILL, so a crash never leaves a stale lock.
    """
    import fcntl
    import socket

    if not study_url.startswith("sqlite:///") or study_url.endswith(":memory:"):
        return None
    db = Path(study_url.split(":///", 1)[1])
    fh = open(db.with_name(f"{db.name}.{safe_name(sweep, 'sweep name')}.driver"), "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fh)
        fh.close()
        raise SweepBusy(f"sweep {sweep!r} is already being run by another `sweep run` ({holder}) on the SQLite "
                        f"study {study_url}: a SQLite study takes one driver at a time. Wait for it to finish (run "
                        "again to resume), or share a PostgreSQL study (infra.study_storage) for several "
                        "drivers.") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
    fh.flush()
    return fh


def publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished temp dir into place in the cache; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
