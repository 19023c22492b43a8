"""The Ray pieces that hold our logic, exercised without a cluster: the Pareto-halving scheduler and the searcher."""

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from sweeps.driver.cluster import tune
from sweeps.spec import parse_yaml, validate_dict

SPEC = """
name: es
model: {base: bundled:all-minilm-l6-v2}
data: {source: bundled:drug-reviews}
search:
  space: {rank: [2, 4]}
  early_stopping: {rungs: [1], min_trials: 2}
objectives:
  - {metric: macro_f1, direction: maximize}
  - {metric: trainable_params, direction: minimize}
"""


class FakeCoordinator:
    def __init__(self, n):
        self.left, self.events = n, []

    def stopping(self):
        return False

    def propose(self):
        if not self.left:
            return None
        self.left -= 1
        return {"trial_number": 10 - self.left}

    def epoch(self, number, result):
        self.events.append(("epoch", number, result["epoch"]))

    def completed(self, number, result, pruned, error):
        self.events.append(("done", number, pruned, error))


def _result(epoch, f1, params):
    return {"phase": "epoch", "epoch": epoch, "macro_f1": f1, "trainable_params": params}


def test_pareto_halving_stops_only_dominated_trials_at_a_rung():
    spec = validate_dict(parse_yaml(SPEC))
    tune._LIVE["k"] = {"coordinator": None, "trials": {}, "pruned": set()}
    try:
        sched = tune.build_scheduler(spec, "k")
        trial = lambda i: SimpleNamespace(trial_id=f"t{i}")  # noqa: E731
        # two peers at rung 1: (0.5, 100) and (0.3, 50) - both on the front
        assert sched.on_trial_result(None, trial(1), _result(1, 0.5, 100)) == TrialScheduler.CONTINUE
        assert sched.on_trial_result(None, trial(2), _result(1, 0.3, 50)) == TrialScheduler.CONTINUE
        # less accurate AND larger than trial 1: dominated -> stopped
        assert sched.on_trial_result(None, trial(3), _result(1, 0.4, 200)) == TrialScheduler.STOP
        # least accurate but smallest: on the front -> kept
        assert sched.on_trial_result(None, trial(4), _result(1, 0.1, 10)) == TrialScheduler.CONTINUE
        # not a rung epoch -> never stopped
        assert sched.on_trial_result(None, trial(5), _result(2, 0.0, 999)) == TrialScheduler.CONTINUE
        assert tune._LIVE["k"]["pruned"] == {"t3"}
    finally:
        tune._LIVE.pop("k")


def test_pareto_halving_counts_dominance_only_beyond_the_reported_standard_error():
    spec = validate_dict(parse_yaml(SPEC))
    tune._LIVE["se"] = {"coordinator": None, "trials": {}, "pruned": set()}
    try:
        sched = tune.build_scheduler(spec, "se")
        trial = lambda i: SimpleNamespace(trial_id=f"t{i}")  # noqa: E731
        se = lambda r, x: {**r, "macro_f1_se": x}  # noqa: E731
        for i, (f1, size) in enumerate([(0.5, 100), (0.3, 50)], start=1):
            assert sched.on_trial_result(None, trial(i), se(_result(1, f1, size), 0.05)) == TrialScheduler.CONTINUE
        # .04 below trial 1 at the same size: strictly dominated, but within one SE on F1 -> a tie -> kept
        assert sched.on_trial_result(None, trial(3), se(_result(1, 0.46, 100), 0.05)) == TrialScheduler.CONTINUE
        # the same report without an SE: a pair is compared with the larger tolerance, trial 1's SE -> kept
        assert sched.on_trial_result(None, trial(4), _result(1, 0.46, 100)) == TrialScheduler.CONTINUE
        # clearly below (beyond one SE) and larger -> stopped
        assert sched.on_trial_result(None, trial(5), se(_result(1, 0.40, 200), 0.05)) == TrialScheduler.STOP
        assert tune._LIVE["se"]["pruned"] == {"t5"}
    finally:
        tune._LIVE.pop("se")


def test_a_restarted_trial_is_not_pruned_by_its_own_first_attempt():
    """Ray restarts a trial whose worker died (tests/faults/test_trial_faults.py): it reports the rung again, with
    another measured peak. Its first attempt is not a peer: before the fix it dominated the retry, which stopped."""
    spec = validate_dict(parse_yaml(SPEC))
    tune._LIVE["r"] = {"coordinator": None, "trials": {}, "pruned": set()}
    try:
        sched = tune.build_scheduler(spec, "r")
        again = SimpleNamespace(trial_id="t1")
        assert sched.on_trial_result(None, again, _result(1, 0.5, 100)) == TrialScheduler.CONTINUE
        for i, (f1, size) in enumerate([(0.3, 150), (0.2, 300)], start=2):  # peers that do not dominate the retry
            sched.on_trial_result(None, SimpleNamespace(trial_id=f"t{i}"), _result(1, f1, size))
        # the restart scores lower than the first attempt did: only the first attempt would dominate it
        assert sched.on_trial_result(None, again, _result(1, 0.4, 100)) == TrialScheduler.CONTINUE
        assert "t1" not in tune._LIVE["r"]["pruned"]
    finally:
        tune._LIVE.pop("r")


def test_no_early_stopping_means_fifo():
    spec = validate_dict(parse_yaml(SPEC.replace("  early_stopping: {rungs: [1], min_trials: 2}\n", "")))
    assert type(tune.build_scheduler(spec, "k")).__name__ == "FIFOScheduler"


def test_searcher_forwards_events_and_finishes_when_the_budget_is_spent():
    coord = FakeCoordinator(2)
    tune._LIVE["s"] = {"coordinator": coord, "trials": {}, "pruned": {"b"}}
    try:
        searcher = tune._DriverSearcher("s")
        assert searcher.suggest("a")["trial_number"] == 9
        assert searcher.suggest("b")["trial_number"] == 10
        assert searcher.suggest("c") == tune.Searcher.FINISHED
        searcher.on_trial_result("a", {"phase": "epoch", "epoch": 1})
        searcher.on_trial_complete("a", {"phase": "final"})
        searcher.on_trial_complete("b", {"phase": "epoch", "epoch": 1})
        searcher.on_trial_complete("zzz", {})  # unknown trial: ignored
    finally:
        tune._LIVE.pop("s")
    assert coord.events == [("epoch", 9, 1), ("done", 9, False, None), ("done", 10, True, None)]
