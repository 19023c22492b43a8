"""Spec -> Optuna: distributions, samplers, persistence, reconciliation helpers, lock retries."""

import sqlite3
import threading
import time

import pytest

from sweeps import store
from sweeps.driver.study import space, storage
from sweeps.driver.study.study import Study
from sweeps.spec import parse_yaml, validate_dict

SPEC = """
name: s
model: {base: bundled:all-minilm-l6-v2}
data: {source: bundled:drug-reviews}
search:
  sampler: SAMPLER
  space:
    rank: [4, 8, 16]
    learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}
    epochs: {type: int, low: 1, high: 3}
objectives:
  - {metric: macro_f1, direction: maximize}
  - {metric: peak_memory_mb, direction: minimize}
budget: {trials: 6, concurrency: 2}
"""


def _spec(sampler="tpe", text=SPEC):
    return validate_dict(parse_yaml(text.replace("SAMPLER", sampler)))


def test_distributions_follow_the_axes():
    d = space.distributions(_spec())
    assert d["rank"].choices == (4, 8, 16)
    assert d["learning_rate"].log and d["learning_rate"].low == 1e-4
    assert (d["epochs"].low, d["epochs"].high) == (1, 3)


@pytest.mark.parametrize("sampler", ["auto", "gp", "tpe", "nsga2", "random"])
def test_ask_tell_persists_and_resumes(tmp_path, sampler):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = Study(_spec(sampler), url)
    n, params = study.ask()
    assert set(params) == {"rank", "learning_rate", "epochs"} and 1e-4 <= params["learning_rate"] <= 1e-2
    study.tell(n, "COMPLETE", [0.5, 100.0], attrs={"metrics": {"macro_f1": 0.5}})
    n2, _ = study.ask()
    study.tell(n2, "PRUNED")
    n3, _ = study.ask()  # left RUNNING, as a crashed driver would
    study.set_attr(n3, "driver", "gone")  # a driver that tagged its trial (untagged ones have a grace period)
    again = Study(_spec(sampler), url)
    assert again.counts() == {"COMPLETE": 1, "PRUNED": 1, "RUNNING": 1}
    assert again.finished() == 2
    assert [t.number for t in again.stale_running()] == [n3]
    assert again.trials()[0].attrs["metrics"] == {"macro_f1": 0.5}


def test_an_untagged_running_trial_is_not_stale_until_its_grace_has_passed(tmp_path, monkeypatch):
    """Between a driver's ask and its tagging the trial, another driver starting must not fail it."""
    from sweeps.driver.study import study as study_mod

    study = Study(_spec(), f"sqlite:///{tmp_path / 'o.db'}")
    n, _ = study.ask()
    assert study.stale_running() == []
    monkeypatch.setattr(study_mod, "UNCLAIMED_GRACE_S", 0.0)  # long after: a driver crashed inside the window
    assert [t.number for t in study.stale_running()] == [n]


def test_enqueued_point_is_asked_next(tmp_path):
    study = Study(_spec(), f"sqlite:///{tmp_path / 'o.db'}")
    n, params = study.ask()
    study.tell(n, "FAIL")
    study.enqueue(params)
    assert study.waiting() == 1
    n2, params2 = study.ask()
    assert params2 == params and n2 == n + 1


def test_grid_covers_every_point(tmp_path):
    text = SPEC.replace("learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}",
                        "learning_rate: [1e-3, 1e-2]")
    spec = _spec("grid", text)
    assert space.grid_size(spec) == 3 * 2 * 3
    study = Study(spec, f"sqlite:///{tmp_path / 'o.db'}")
    seen = set()
    for _ in range(18):
        n, p = study.ask()
        seen.add((p["rank"], p["learning_rate"], p["epochs"]))
        study.tell(n, "COMPLETE", [0.1, 1.0])
    assert len(seen) == 18


def test_changed_directions_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    Study(_spec(), url)
    flipped = SPEC.replace("metric: peak_memory_mb, direction: minimize", "metric: peak_memory_mb, direction: maximize")
    with pytest.raises(ValueError, match="directions"):
        Study(_spec(text=flipped), url)


def test_locked_database_is_retried(tmp_path):
    """Another process holds the write lock past SQLite's timeout: the call waits and succeeds afterwards."""
    path = tmp_path / "o.db"
    study = Study(_spec(), f"sqlite:///{path}")
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    calls = []
    real = storage.retry

    def release_later():
        time.sleep(1.5)
        locker.execute("COMMIT")

    threading.Thread(target=release_later, daemon=True).start()
    n, _ = real(lambda: (calls.append(1), study.ask())[1], "ask")
    assert n == 0
    locker.close()


def test_retry_gives_up_on_other_errors():
    def boom():
        raise RuntimeError("disk I/O error")

    with pytest.raises(RuntimeError, match="disk"):
        storage.retry(boom, "x")


def test_retry_retries_locked_errors(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert storage.retry(flaky, "x") == "ok" and len(calls) == 3


def test_optunas_wrapped_lock_error_is_recognised():
    """Optuna re-raises OperationalError("database is locked") as StorageInternalError with a generic message:
    _retry looked at str(exc) only and gave up at once (tests/faults/test_trial_faults.py, study locked)."""
    import optuna

    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as inner:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from inner
    except optuna.exceptions.StorageInternalError as exc:
        assert storage.is_locked(exc)
    assert not storage.is_locked(RuntimeError("disk I/O error"))


def test_a_lock_past_the_timeout_in_the_middle_of_ask_makes_no_second_trial(tmp_path, monkeypatch):
    """Another process locks the study right after Optuna created the trial, before its params are stored, for
    longer than SQLite's busy timeout. Retrying the whole ask created a second trial and left the first RUNNING
    with no params; each storage call now retries alone."""
    monkeypatch.setattr(storage, "SQLITE_TIMEOUT_S", 0.3)
    study = Study(_spec("random"), f"sqlite:///{tmp_path / 'o.db'}")
    monkeypatch.setenv("SWEEPS_FAULT", "study.created:lock=1.5")
    number, params = study.ask()
    monkeypatch.delenv("SWEEPS_FAULT")
    [trial] = study.trials()
    assert (trial.number, trial.state) == (number, "RUNNING") and set(trial.params) == set(params) == {
        "rank", "learning_rate", "epochs"}


def test_a_driver_that_died_on_this_machine_is_not_live(tmp_path):
    """A SIGKILLed driver's heartbeat stays fresh for 45 s; `sweep run` restarted within them took its RUNNING
    trials for a live driver's and never reconciled them. Its process is gone: it is not live."""
    import os
    import subprocess
    import sys

    study = Study(_spec(), f"sqlite:///{tmp_path / 'o.db'}")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study.heartbeat("alive")
    study.study.set_user_attr("driver.dead", {"time": time.time(), "machine": store.machine_id(),
                                              "pid": int(gone.stdout)})
    study.study.set_user_attr("driver.elsewhere", {"time": time.time(), "machine": "other-host/boot", "pid": 1})
    study.study.set_user_attr("driver.legacy", time.time())  # a bare timestamp, as older drivers wrote
    assert study.live_drivers() == {"alive", "elsewhere", "legacy"}
    assert os.getpid() == study.study.user_attrs["driver.alive"]["pid"]


def test_auto_sampler_is_the_gp_for_small_budgets_and_tpe_above():
    small = _spec("auto")
    assert type(space.make_sampler(small)).__name__ == "GPSampler"
    big = validate_dict({**small.model_dump(mode="json", exclude_none=True),
                         "budget": {"trials": space.GP_MAX_TRIALS + 1}})
    assert type(space.make_sampler(big)).__name__ == "TPESampler"
