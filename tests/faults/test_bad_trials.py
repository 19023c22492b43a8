"""Issue 7, faults 7 and 8: trials that cannot succeed fail alone, with their reason, and the sweep goes on.

One `sweep run` over a 2 x 2 grid on the tiny BERT (every point runs exactly once):
  head_lr_ratio 1000 with learning_rate 0.99 and weight_decay 0.99: AdamW multiplies the head's weights by
      (1 - 990 * 0.99) each step, they overflow within ~15 steps and the loss becomes inf or NaN (which one depends
      on the data) -> FAIL "loss became inf|nan";
  max_memory_mb 0.001: the measured peak exceeds the spec's limit -> FAIL "infeasible" (tag sweeps.infeasible);
  head_lr_ratio 1 without a limit: completes (the NaN and OOM trials do not stop it, nor the front).
A real allocation failure (torch's allocator refusing 4 EiB) is injected in tests/faults/test_trial_faults.py.
"""

from __future__ import annotations

import re

import pytest
from _harness import assets, env_for, explain, sweep, write_spec
from _invariants import check, store_env

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_trials")
    spec = write_spec(root / "bad.yaml", "bad_trials", assets(root / "assets"), sampler="grid", trials=4,
                      space="{head_lr_ratio: [1, 1000], max_memory_mb: [null, 0.001]}",
                      params={"learning_rate": 0.99, "weight_decay": 0.99, "batch_size": 2})
    env = env_for(root)
    proc = sweep(env, "run", str(spec), "--no-live")
    assert proc.returncode == 0, explain(proc)  # failed trials are not a failed sweep
    with store_env(env):
        from sweeps import store
        from sweeps.driver.study.study import Study
        from sweeps.spec import load_spec
        from sweeps.tracking.tracker import Tracker

        loaded = load_spec(spec)
        trials = Study(loaded, store.study_storage()).trials()
        runs = {r.trial_number: r for r in Tracker().trial_records("bad_trials")}
    return {"env": env, "spec": spec, "proc": proc, "trials": trials, "runs": runs}


def _by_params(bad, head_lr_ratio, max_memory_mb):
    [t] = [t for t in bad["trials"] if t.params == {"head_lr_ratio": head_lr_ratio, "max_memory_mb": max_memory_mb}]
    return t, bad["runs"][t.number]


def test_nan_loss_fails_the_trial_with_its_reason_and_leaves_the_front(bad):
    trial, run = _by_params(bad, 1000, None)
    assert trial.state == "FAIL" and run.status == "FAILED"
    assert re.match(r"loss became (nan|inf) at epoch \d+ step \d+", run.tags["sweeps.failure_reason"]), run.tags
    assert trial.attrs["reason"] == run.tags["sweeps.failure_reason"]
    with store_env(bad["env"]):
        from sweeps.driver.promotion.front import pareto_report

        report = pareto_report("bad_trials", plot=False)
    assert trial.number not in {r.trial_number for r in report.front_records()}
    assert [t.state for t in bad["trials"]].count("COMPLETE") == 1  # the sweep went on past it


def test_a_trial_over_the_memory_limit_is_infeasible_not_a_crash(bad):
    for ratio in (1, 1000):
        trial, run = _by_params(bad, ratio, 0.001)
        assert trial.state == "FAIL" and run.status == "FAILED"
        assert run.tags["sweeps.failure_reason"].startswith("infeasible: measured peak memory"), run.tags
        assert run.tags["sweeps.infeasible"] == "True"
    assert "Traceback" not in bad["proc"].stderr


def test_nothing_is_lost_after_the_bad_trials(bad):
    check(bad["env"], bad["spec"], ["7 · NaN loss (lr 0.99, head lr x1000, weight decay 0.99)",
                                    "8 · over the spec's max_memory_mb (measured peak > 0.001 MB)"])
