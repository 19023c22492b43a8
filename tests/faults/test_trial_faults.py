"""Issue 7, faults 1, 4, 5 and 8 (allocation failure), injected into ONE `sweep run` of 6 tiny trials.

Rules for sweeps.faults (SWEEPS_FAULT), by trial number (the random sampler only varies the rank):
  trial 0: the Ray worker SIGKILLs itself before reporting epoch 1 of 2 (mid-training), once; trial 1: twice.
      budget.max_retries is 1: Ray restarts both (same Optuna trial, same MLflow run); 0 then completes, 1 is
      killed again and fails with "worker failed". Three kills in one sweep.             (fault 1)
  trial 2: at epoch 1 a tensor of 4 EiB is allocated: torch's allocator refuses it.   (fault 8, real OOM)
  trial 3: the disk is full (ENOSPC) right after the worker wrote its adapter files.    (fault 5, worker side)
  the first adapter upload to the MLflow store: ENOSPC after the files were copied.      (fault 5, driver side)
  trial 4: another process locks the study database exclusively for 3 s right after Optuna created the trial,
      before its params are stored (at propose); the first COMPLETE tell: locked for 3 s (at tell). SQLite's busy
      timeout is 1 s here (SWEEPS_SQLITE_TIMEOUT_S), so both are held "past the timeout". (fault 4)
A tmpfs variant of fault 5 (a real full file system, no injection) runs without Ray when this user can mount.
"""

from __future__ import annotations

import subprocess

import pytest
from _harness import assets, env_for, explain, fired, sweep, write_spec
from _invariants import check, store_env

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RULES = ";".join([
    "worker.epoch:kill:trial=0:epoch=1:times=1",
    "worker.epoch:kill:trial=1:epoch=1:times=2",
    "worker.epoch:oom:trial=2:epoch=1",
    "adapter.saved:enospc:dir=trial-0003",
    "track.uploaded:enospc:times=1",
    "study.created:lock=3:trial=4",
    "study.tell:lock=3:state=COMPLETE:times=1",
])


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    root = tmp_path_factory.mktemp("trial_faults")
    spec = write_spec(root / "faulty.yaml", "trial_faults", assets(root / "assets"), trials=6, epochs=2,
                      retries=1)
    env = env_for(root, SWEEPS_SQLITE_TIMEOUT_S="1")
    proc = sweep(env, "run", str(spec), "--no-live", fault=RULES)
    assert proc.returncode == 0, explain(proc)
    with store_env(env):
        from sweeps import store
        from sweeps.driver.study.study import Study
        from sweeps.spec import load_spec
        from sweeps.tracking.tracker import Tracker

        trials = {t.number: t for t in Study(load_spec(spec), store.study_storage()).trials()}
        runs = {r.trial_number: r for r in Tracker().trial_records("trial_faults")}
    return {"env": env, "spec": spec, "proc": proc, "trials": trials, "runs": runs, "fired": fired(env)}


def _reason(faulty, number: int) -> str:
    return faulty["runs"][number].tags.get("sweeps.failure_reason", "")


def test_killed_workers_are_retried_in_one_trial_and_one_run(faulty):
    kills = [f for f in faulty["fired"] if f["action"] == "kill"]
    assert sorted(int(f["trial"]) for f in kills) == [0, 1, 1], kills
    assert len({f["pid"] for f in kills}) == 3  # three different worker processes died
    for number in (0, 1):
        trial, run = faulty["trials"][number], faulty["runs"][number]
        assert trial.attrs["retries"] == 1 and run.tags["sweeps.retries"] == "1"  # max_retries=1: one restart
    assert faulty["trials"][0].state == "COMPLETE" or "adapter upload failed" in _reason(faulty, 0)
    assert faulty["trials"][1].state == "FAIL" and "worker failed" in _reason(faulty, 1)
    assert len(faulty["trials"]) == 6 and len(faulty["runs"]) == 6  # one trial and one run per trial, retries or not


def test_an_allocation_failure_is_infeasible_not_a_retried_crash(faulty):
    trial, reason = faulty["trials"][2], _reason(faulty, 2)
    assert trial.state == "FAIL" and reason.startswith("infeasible: out of memory"), reason
    assert "can't allocate memory" in reason
    assert faulty["runs"][2].tags["sweeps.infeasible"] == "True"
    assert "retries" not in trial.attrs  # the same allocation would fail again: not handed to Ray as a crash


def test_a_full_store_fails_the_trial_with_its_reason_and_leaves_no_partial_files(faulty):
    assert faulty["trials"][3].state == "FAIL"
    assert _reason(faulty, 3).startswith("store full while writing the trial's files"), _reason(faulty, 3)
    assert "No space left on device" in _reason(faulty, 3)
    uploads = [n for n, r in faulty["runs"].items() if "adapter upload failed" in _reason(faulty, n)]
    assert len(uploads) == 1, {n: _reason(faulty, n) for n in faulty["runs"]}
    assert "No space left on device" in _reason(faulty, uploads[0])
    assert faulty["trials"][uploads[0]].state == "FAIL"
    assert "sweeps.adapter_sha256" not in faulty["runs"][3].tags
    # no COMPLETE trial without its adapter, no partial files: the shared checker (listing and loading) below


def test_a_study_locked_past_the_timeout_is_retried_at_propose_and_at_tell(faulty):
    locks = {f["point"]: f for f in faulty["fired"] if f["action"].startswith("lock")}
    assert set(locks) == {"study.created", "study.tell"}, faulty["fired"]
    assert "study database locked during" in faulty["proc"].stderr  # it waited, then retried
    trial = faulty["trials"][4]
    assert set(trial.params) == {"rank"}  # its params were stored after the lock, in the same trial
    assert trial.state == "COMPLETE" or "adapter upload failed" in _reason(faulty, 4)  # (if its upload was first)
    told = int(locks["study.tell"]["trial"])
    assert faulty["trials"][told].state == "COMPLETE"
    assert sorted(faulty["trials"]) == list(range(6))  # the retried ask made no second trial


def test_nothing_is_lost_after_the_trial_side_faults(faulty):
    check(faulty["env"], faulty["spec"], [
        "1 · Ray worker SIGKILLed mid-training ×3 (trial 0 once: retried; trial 1 twice > max_retries=1)",
        "4 · study DB locked 3 s > 1 s busy timeout, at propose (mid-ask) and at tell",
        "5 · store full (ENOSPC) saving an adapter: in the worker, and uploading it to MLflow",
        "8 · allocation failure in a trial (torch refuses 4 EiB)",
    ])


# ---------------------------------------------------------------- a real full file system (no injection)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs, if this user may mount one (root in CI containers); else the test is skipped."""
    mount = tmp_path / "store" / "artifacts" / "full_store"
    mount.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}): the injected ENOSPC above covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_store_fails_the_upload_and_keeps_no_partial_files(tmp_path, tiny_tmpfs):
    """MLflow's artifact dir of the sweep on a 64 KiB tmpfs; the adapter (100 KiB of weights) cannot fit: the copy
    stops half-way with ENOSPC. The driver's bookkeeping (Coordinator, no Ray) must FAIL the trial in both stores
    with the reason, remove the copied part, and leave nothing RUNNING."""
    from sweeps import store
    from sweeps.driver.coordinator import Coordinator
    from sweeps.driver.study.study import Study
    from sweeps.spec import load_spec
    from sweeps.tracking.tracker import Tracker

    spec_file = write_spec(tmp_path / "full.yaml", "full_store", assets(tmp_path / "assets"), trials=1,
                           concurrency=1)
    env = env_for(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 100 * 1024)
    with store_env(env):
        spec = load_spec(spec_file)
        study, tracker = Study(spec, store.study_storage()), Tracker()
        parent = tracker.start_sweep(spec.name, spec_file.read_text(), "")
        coordinator = Coordinator(spec, study, tracker, parent, remaining=1)
        number = coordinator.propose()["trial_number"]
        coordinator.completed(number, {"phase": "final", "state": "COMPLETE", "macro_f1": 0.5, "peak_memory_mb": 1.0,
                                       "trainable_params": 10.0, "adapter_dir": str(adapter)}, False, None)
        tracker.finish_sweep(parent)
        [trial], [run] = study.trials(), tracker.trial_records(spec.name)
    assert trial.state == "FAIL" and run.status == "FAILED"
    assert "No space left on device" in run.tags["sweeps.failure_reason"], run.tags
    assert not [p for p in tiny_tmpfs.rglob("*") if p.is_file() and "adapter" in p.parts], list(tiny_tmpfs.rglob("*"))
    # the full checker (re-run included; the one trial failed, so there is no adapter to load)
    check(env, spec_file, "5 · store full: a real 64 KiB tmpfs under the artifact store (no injection)")
