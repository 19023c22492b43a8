"""The study database under contention: every Optuna storage call retries a locked database by itself.

Several processes write one study (the driver, a second driver on PostgreSQL, `sweep promote` reading it), and a
SQLite study locked by another process past the busy timeout raises OperationalError. `open_storage` returns an
RDBStorage whose every call backs off and retries on a lock.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import optuna

from sweeps import faults

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long SQLite waits for another process's lock before raising "database is locked" (then `retry` backs off
# and tries again). An environment variable so the fault tests can hold a lock "past the timeout" in seconds.
SQLITE_TIMEOUT_S = float(os.environ.get("SWEEPS_SQLITE_TIMEOUT_S", "30"))


def is_locked(exc: BaseException | None) -> bool:
    # Optuna re-raises sqlalchemy's OperationalError("database is locked") as StorageInternalError with a generic
    # message and the original as __cause__: look down the whole chain, not at str(exc) alone (which missed it).
    seen = 0
    while exc is not None and seen < 10:
        if "locked" in str(exc).lower() or "busy" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def is_schema_race(exc: BaseException | None) -> bool:
    """Two processes creating the tables of a fresh PostgreSQL study database at once: the loser's
    `CREATE TYPE studydirection` (or CREATE TABLE) violates a catalog unique index. The winner's schema is
    complete a moment later, so opening the storage again succeeds (tests/test_scaleout.py, two drivers)."""
    seen = 0
    while exc is not None and seen < 10:
        text = str(exc).lower()
        if "pg_type_typname_nsp_index" in text or ("already exists" in text and "create " in text):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def retry(fn: Callable[[], T], what: str, attempts: int = 8,
          transient: Callable[[BaseException], bool] = is_locked) -> T:
    """Retry a storage call that hit a locked database; back off with jitter so two drivers interleave."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # sqlalchemy's OperationalError arrives wrapped in several optuna types
            if not transient(exc) or attempt == attempts - 1:
                raise
            log.warning("study database locked during %s; retry %d/%d (a lock, or another driver creating the "
                        "schema)", what, attempt + 1, attempts)
            time.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class PatientStorage(optuna.storages.RDBStorage):
    """RDBStorage whose every database call retries a locked database by itself (methods wrapped below).

    Retrying one storage call, not a whole Study operation, matters for `ask`: it creates the trial, then stores
    each sampled param in its own transaction. Retrying the whole `ask` after a param write hit the lock created
    a second trial and left the first RUNNING with no driver, counted against the budget until a later
    `sweep run` reconciled it (tests/faults/test_trial_faults.py, study locked at propose).
    """

    def _create_new_trial(self, study_id, template_trial=None):
        frozen = super()._create_new_trial(study_id, template_trial)
        faults.point("study.created", storage=self.url, trial=frozen.number)
        return frozen


_IN_CALL = threading.local()  # public methods call private ones: only the outermost call retries


def _patient(name: str):
    base = getattr(PatientStorage, name)

    @functools.wraps(base)
    def call(self, *args, **kwargs):
        if getattr(_IN_CALL, "active", False):
            return base(self, *args, **kwargs)
        _IN_CALL.active = True
        try:
            return retry(lambda: base(self, *args, **kwargs), name)
        finally:
            _IN_CALL.active = False

    return call


for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
              "_create_new_trial", "_set_trial_param", "get_trial_param", "set_trial_state_values",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "get_trial_id_from_study_id_trial_number", "get_trial", "_get_trials", "_get_best_trial_id"):
    setattr(PatientStorage, _name, _patient(_name))


def open_storage(url: str) -> PatientStorage:
    """The study database at `url` (SQLAlchemy), every call retried on a lock; SQLite waits SQLITE_TIMEOUT_S."""
    sqlite = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return retry(lambda: PatientStorage(url, engine_kwargs=sqlite if url.startswith("sqlite") else {}),
                 "open storage", transient=lambda exc: is_locked(exc) or is_schema_race(exc))
