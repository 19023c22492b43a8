"""Tests of sweeps/driver/selection (Pareto front, hypervolume, policies, aliases, early stopping) and the plot."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sweeps.driver.promotion.plot import pareto_plot
from sweeps.driver.selection import pareto, policies
from sweeps.driver.selection.pareto import (
    dominates,
    hypervolume,
    normalized_hypervolume,
    pareto_mask,
    reference_point,
    rung_should_stop,
)
from sweeps.driver.selection.policies import (
    DEFAULT_POLICY,
    Constraint,
    Policy,
    choose,
    objective_aliases,
    parse_policy,
)
from sweeps.driver.selection.tolerance import describe_tolerances, tolerance_matrix
from sweeps.spec.tolerance import parse_tolerance

OBJ2 = [("macro_f1", "maximize"), ("peak_memory_mb", "minimize")]
OBJ3 = [*OBJ2, ("trainable_params", "minimize")]
# Front on OBJ2: 0, 1, 2, 4 (trial 3 is dominated by trial 1: higher F1 and less memory).
TRIALS = [
    {"macro_f1": 0.50, "peak_memory_mb": 300.0, "trainable_params": 100_000, "epochs": 3},
    {"macro_f1": 0.60, "peak_memory_mb": 400.0, "trainable_params": 150_000, "epochs": 3},
    {"macro_f1": 0.70, "peak_memory_mb": 600.0, "trainable_params": 300_000, "epochs": 3},
    {"macro_f1": 0.55, "peak_memory_mb": 500.0, "trainable_params": 50_000, "epochs": 3},
    {"macro_f1": 0.40, "peak_memory_mb": 200.0, "trainable_params": 20_000, "epochs": 3},
]
PNG = b"\x89PNG\r\n\x1a\n"


def _flip(d: str) -> str:
    return "minimize" if d == "maximize" else "maximize"


# ------------------------------------------------------------------------------- dominance / front
def test_dominates():
    mm = ["minimize", "minimize"]
    assert dominates([1, 1], [2, 2], mm)
    assert dominates([1, 2], [2, 2], mm)
    assert not dominates([2, 2], [2, 2], mm)  # equal: not strictly better anywhere
    assert not dominates([1, 3], [2, 2], mm)
    assert dominates([0.7, 300], [0.6, 300], ["maximize", "minimize"])
    assert not dominates([0.5, 300], [0.6, 300], ["maximize", "minimize"])
    assert dominates([1, 1], [math.nan, 1], mm)  # NaN is the worst value


def test_pareto_mask_hand_example_and_duplicates():
    v = np.array([[t["macro_f1"], t["peak_memory_mb"]] for t in TRIALS])
    assert pareto_mask(v, ["maximize", "minimize"]).tolist() == [True, True, True, False, True]
    dup = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0]])
    assert pareto_mask(dup, ["minimize", "minimize"]).tolist() == [True, True, True, False]


def test_pareto_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown direction"):
        pareto_mask(np.ones((2, 2)), ["maximize", "up"])
    with pytest.raises(ValueError, match="direction"):
        pareto_mask(np.ones((2, 3)), ["maximize", "minimize"])
    with pytest.raises(ValueError, match="2-D"):
        pareto_mask(np.ones(3), ["maximize"])


@pytest.mark.parametrize("m", [2, 3, 4])
def test_front_invariant_under_direction_flips(m):
    rng = np.random.default_rng(m)
    v = rng.integers(0, 6, size=(60, m)).astype(float)  # small integers -> many ties and duplicates
    for dirs in itertools.product(["minimize", "maximize"], repeat=m):
        mask = pareto_mask(v, dirs)
        assert (pareto_mask(-v, [_flip(d) for d in dirs]) == mask).all()


@pytest.mark.parametrize("m", [2, 3, 4])
def test_front_property_random(m):
    rng = np.random.default_rng(100 + m)
    dirs = ["maximize", "minimize", "maximize", "minimize"][:m]
    for v in (rng.normal(size=(80, m)), rng.integers(0, 4, size=(80, m)).astype(float)):
        mask = pareto_mask(v, dirs)
        front, rest = v[mask], v[~mask]
        assert mask.any()
        for p in rest:  # every non-front point is dominated by some front point
            assert any(dominates(f, p, dirs) for f in front)
        for f in front:  # no front point is dominated by anything
            assert not any(dominates(q, f, dirs) for q in v)


# ------------------------------------------------------------------------------------- hypervolume
def test_hypervolume_2d_hand_computed():
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    # staircase to (4, 4): widths 1, 1, 1 x heights 1, 2, 3 = 6
    assert hypervolume(pts, ["minimize", "minimize"], [4, 4]) == pytest.approx(6.0)
    assert hypervolume(-pts, ["maximize", "maximize"], [-4, -4]) == pytest.approx(6.0)
    mixed = pts * np.array([1, -1])
    assert hypervolume(mixed, ["minimize", "maximize"], [4, -4]) == pytest.approx(6.0)
    # a dominated point, a duplicate and a point beyond the reference change nothing
    extra = np.vstack([pts, [[3.0, 3.0], [2.0, 2.0], [5.0, 0.0]]])
    assert hypervolume(extra, ["minimize", "minimize"], [4, 4]) == pytest.approx(6.0)
    assert hypervolume(np.empty((0, 2)), ["minimize", "minimize"], [4, 4]) == 0.0


def test_hypervolume_3d_unit_cubes():
    mmm = ["minimize"] * 3
    assert hypervolume(np.zeros((1, 3)), mmm, [1, 1, 1]) == pytest.approx(1.0)
    # box 2x2x1 = 4 plus box 1x1x2 = 2, overlapping in a unit cube [1,2]^3 -> 5
    pts = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert hypervolume(pts, mmm, [2, 2, 2]) == pytest.approx(5.0)
    # three unit-thick slabs of the 2x2x2 cube sharing the corner cube: 2^3 - 1 (only [0,1]^3 is uncovered)
    slabs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert hypervolume(slabs, mmm, [2, 2, 2]) == pytest.approx(7.0)
    assert hypervolume(2 - slabs, ["maximize"] * 3, [0, 0, 0]) == pytest.approx(7.0)


def _grid_hv(p: np.ndarray, ref: int) -> int:
    """Brute force for integer points (minimise): count unit cells [c, c+1) covered by some point <= c."""
    m = p.shape[1]
    cells = np.array(list(itertools.product(range(ref), repeat=m)))
    return int(np.any(np.all(p[None, :, :] <= cells[:, None, :], axis=2), axis=1).sum())


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_brute_force(m):
    rng = np.random.default_rng(7 + m)
    for _ in range(5):
        p = rng.integers(0, 6, size=(12, m)).astype(float)
        assert hypervolume(p, ["minimize"] * m, [6] * m) == pytest.approx(_grid_hv(p, 6))


def test_reference_point_and_normalized_hypervolume():
    v = np.array([[1.0, 10.0], [3.0, 10.0]])
    # obj0 (min): worst 3 + 0.1 * range 2 = 3.2; obj1 (max): range 0 -> 10 - 0.1 * |10| = 9
    assert reference_point(v, ["minimize", "maximize"]).tolist() == pytest.approx([3.2, 9.0])
    assert reference_point(np.zeros((2, 1)), ["minimize"]).tolist() == pytest.approx([0.1])
    mm = ["minimize", "minimize"]
    assert normalized_hypervolume([[0.0, 0.0]], mm, [10, 100], [0, 0]) == pytest.approx(1.0)
    assert normalized_hypervolume([[5.0, 50.0]], mm, [10, 100], [0, 0]) == pytest.approx(0.25)
    # units do not matter: the same trade-off in MB vs GB gives the same value
    a = normalized_hypervolume([[0.6, 300.0]], ["maximize", "minimize"], [0.0, 1000.0], [1.0, 0.0])
    b = normalized_hypervolume([[0.6, 0.3]], ["maximize", "minimize"], [0.0, 1.0], [1.0, 0.0])
    assert a == pytest.approx(b) == pytest.approx(0.6 * 0.7)
    with pytest.raises(ValueError, match="strictly worse"):
        normalized_hypervolume([[1.0, 1.0]], mm, [0, 1], [0, 0])


# ---------------------------------------------------------------------------------------- policies
def test_parse_policy():
    assert parse_policy("knee") == Policy("knee")
    assert parse_policy(" max : macro_f1 ") == Policy("max", metric="macro_f1")
    p = parse_policy("max:macro_f1;peak_memory_mb<=300;trainable_params<200000")
    assert p.kind == "max" and p.metric == "macro_f1"
    assert p.constraints == (
        Constraint("peak_memory_mb", "<=", 300.0),
        Constraint("trainable_params", "<", 2e5),
    )
    w = parse_policy("weights:macro_f1=2, peak_memory_mb=0.5;accuracy>=0.6;")
    assert w.weights == {"macro_f1": 2.0, "peak_memory_mb": 0.5}
    assert w.constraints == (Constraint("accuracy", ">=", 0.6),)
    ops = parse_policy("knee;a>1;b==2;c<3").constraints
    assert [c.op for c in ops] == [">", "==", "<"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("best", "unknown selector"),
        ("knee:x", "unknown selector"),
        ("max", "unknown selector"),
        ("max:", "needs a metric"),
        ("min:macro f1", "needs a metric"),
        ("weights:", "is not '<metric>=<number>'"),
        ("weights:a", "is not '<metric>=<number>'"),
        ("weights:a=x", "not a finite number"),
        ("weights:a=1,a=2", "weighted twice"),
        ("weights:a=0", "non-zero"),
        ("max:f1;mem<<3", "constraint"),
        ("max:f1;mem=>3", "constraint"),
        ("max:f1;mem<=abc", "not a finite number"),
        ("max:f1;mem<=inf", "not a finite number"),
    ],
)
def test_parse_policy_errors(text, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        parse_policy(text)
    assert "Grammar" in str(err.value) and "knee" in str(err.value)


def test_choose_knee():
    # scaled (0 = best): f1 (0.7 - f1) / 0.3, mem (mem - 200) / 400 -> distances 0.71, 0.60, 1, -, 1
    assert choose(TRIALS, OBJ2, "knee") == 1
    assert choose([TRIALS[0], TRIALS[0]], OBJ2, "knee") == 0  # tie -> lowest index
    assert choose(TRIALS, OBJ2, Policy("knee")) == 1


def test_choose_max_min():
    assert choose(TRIALS, OBJ2, "max:macro_f1") == 2
    assert choose(TRIALS, OBJ2, "min:peak_memory_mb") == 4
    # not an objective: best *on the front* (trial 3 has 50k params but is dominated)
    assert choose(TRIALS, OBJ2, "min:trainable_params") == 4
    assert choose(TRIALS, OBJ2, "max:trainable_params") == 2
    # all tied on epochs -> objectives in order: best macro_f1
    assert choose(TRIALS, OBJ2, "max:epochs") == 2
    assert choose(TRIALS, list(reversed(OBJ2)), "max:epochs") == 4


def test_choose_constraints():
    assert choose(TRIALS, OBJ2, "max:macro_f1;peak_memory_mb<=400") == 1
    assert choose(TRIALS, OBJ2, "max:macro_f1;peak_memory_mb<400") == 0
    assert choose(TRIALS, OBJ2, "max:macro_f1;peak_memory_mb==300") == 0
    assert choose(TRIALS, OBJ2, "min:peak_memory_mb;macro_f1>=0.55") == 1
    assert choose(TRIALS, OBJ2, "min:peak_memory_mb;macro_f1>0.6") == 2
    # the front is taken over the feasible trials: trial 3's dominator (1) is excluded, so 3 can win
    assert choose(TRIALS, OBJ2, "max:macro_f1;peak_memory_mb<=500;trainable_params<100000") == 3


def test_choose_infeasible_and_empty():
    assert choose(TRIALS, OBJ2, "knee;macro_f1>0.9") is None
    assert choose(TRIALS, OBJ2, "weights:macro_f1=1;peak_memory_mb<100") is None
    assert choose([], OBJ2, "knee") is None


def test_choose_weights():
    # s_f1 = 1/3, 2/3, 1, -, 0 ; s_mem = 0.75, 0.5, 0, -, 1
    assert choose(TRIALS, OBJ2, "weights:macro_f1=1,peak_memory_mb=1") == 1  # 1.08, 1.17, 1, 1
    assert choose(TRIALS, OBJ2, "weights:macro_f1=3,peak_memory_mb=1") == 2
    assert choose(TRIALS, OBJ2, "weights:peak_memory_mb=1") == 4
    # a non-objective metric is treated as "maximize"; a negative weight prefers low values
    assert choose(TRIALS, OBJ2, "weights:trainable_params=1") == 2
    assert choose(TRIALS, OBJ2, "weights:trainable_params=-1") == 4
    assert choose(TRIALS, OBJ2, "weights:macro_f1=1,peak_memory_mb=1;peak_memory_mb<=350") == 0


def test_choose_missing_metric():
    for policy in ["max:f1", "knee;memory<=3", "weights:macro_f1=1,acc=2"]:
        with pytest.raises(ValueError, match="not found in any trial") as err:
            choose(TRIALS, OBJ2, policy)
        assert "macro_f1" in str(err.value) and "peak_memory_mb" in str(err.value)
    with pytest.raises(ValueError, match="latency"):
        choose(TRIALS, [*OBJ2, ("latency", "minimize")], "knee")


def test_choose_skips_trials_missing_a_metric():
    trials = [{"macro_f1": 0.9}, *TRIALS, {"macro_f1": math.nan, "peak_memory_mb": 1.0}]
    assert choose(trials, OBJ2, "max:macro_f1") == 3  # TRIALS[2], shifted by one
    assert choose(trials, OBJ2, "min:peak_memory_mb") == 5


def test_objective_aliases():
    assert objective_aliases(TRIALS, OBJ2) == {
        "pareto-best-macro-f1": 2,
        "pareto-accurate": 2,
        "pareto-best-peak-memory-mb": 4,
        "pareto-lowmem": 4,
    }
    al = objective_aliases(TRIALS, OBJ3)
    assert al["pareto-best-trainable-params"] == 4 and al["pareto-small"] == 4
    # short names only where the direction matches their meaning
    odd = objective_aliases(TRIALS, [("macro_f1", "maximize"), ("peak_memory_mb", "maximize")])
    assert "pareto-lowmem" not in odd and odd["pareto-best-peak-memory-mb"] == 2
    assert objective_aliases([], OBJ2) == {}


# ---------------------------------------------------------------------------------- early stopping
def test_rung_should_stop():
    d = ["maximize", "minimize"]
    cand = [0.5, 300.0]
    better = [0.6, 200.0]
    assert rung_should_stop(cand, [better], d, min_peers=1) is True  # dominated
    assert rung_should_stop(cand, [better], d, min_peers=2) is False  # too few peers
    assert rung_should_stop(cand, [], d, min_peers=0) is False
    # trades off against every peer -> on the front -> never stopped
    assert rung_should_stop(cand, [[0.6, 400.0], [0.4, 200.0]], d, min_peers=2) is False
    assert rung_should_stop(cand, [cand, cand], d, min_peers=2) is False  # ties do not dominate
    assert rung_should_stop([math.nan, 300.0], [better], d, min_peers=1) is True  # diverged trial


# ------------------------------------------------------------------------------------------- plots
@pytest.mark.parametrize("objectives", [OBJ2, OBJ3, [*OBJ3, ("epochs", "maximize")]])
def test_pareto_plot_writes_png(tmp_path, objectives):
    v = np.array([[t[k] for k, _ in objectives] for t in TRIALS], dtype=float)
    front = pareto_mask(v, [d for _, d in objectives])
    chosen = choose(TRIALS, objectives, "knee")
    out = pareto_plot(TRIALS, objectives, front, chosen, tmp_path / "sub" / "front.png", title="test sweep")
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 5_000


def test_pareto_plot_without_choice_and_with_missing_values(tmp_path):
    trials = [*TRIALS, {"macro_f1": 0.3}]
    out = pareto_plot(trials, OBJ2, [True, True, True, False, True, False], None, tmp_path / "p.png")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="front"):
        pareto_plot(trials, OBJ2, [True], None, tmp_path / "q.png")


# ------------------------------------------------------------------------------- noise-aware selection
# Two trials on a 120-row validation split: B's F1 is .084 better (about two SEs), A uses 0.3 MB less memory.
# Strictly both are on the front; with tolerances (1 SE on F1, 5% on memory, params exact) B dominates A.
A_B = [
    {"macro_f1": 0.439, "macro_f1_se": 0.04, "peak_memory_mb": 300.0, "trainable_params": 100_000},
    {"macro_f1": 0.523, "macro_f1_se": 0.04, "peak_memory_mb": 300.3, "trainable_params": 100_000},
]


def _values(trials, objectives):
    return np.array([[t[k] for k, _ in objectives] for t in trials], dtype=float)


def test_parse_tolerance():
    assert parse_tolerance(None) is None
    assert parse_tolerance(0) == ("abs", 0.0)
    assert parse_tolerance(0.02) == ("abs", 0.02)
    assert parse_tolerance("5%") == ("rel", 0.05)
    assert parse_tolerance(" 2.5 % ") == ("rel", 0.025)
    for bad, fragment in [(-1, ">= 0"), (math.inf, "finite"), ("abc", "percentage"), ("0.02", "percentage"),
                          ("150%", "at most 100%"), (True, "boolean"), ([1], "number")]:
        with pytest.raises(ValueError, match=fragment):
            parse_tolerance(bad)


def test_tolerance_matrix_defaults_stated_and_missing_values():
    trials = [
        {"macro_f1": 0.5, "macro_f1_se": 0.04, "peak_memory_mb": 200.0, "trainable_params": 1000},
        {"macro_f1": 0.6, "peak_memory_mb": 400.0, "trainable_params": 2000},  # no SE: falls back to exact
        {"macro_f1": math.nan, "macro_f1_se": math.nan, "trainable_params": 10},  # NaN / missing values -> 0
    ]
    t = tolerance_matrix(trials, OBJ3)
    assert t.shape == (3, 3)
    np.testing.assert_allclose(t, [[0.04, 10.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 0.0]])
    stated = tolerance_matrix(trials, OBJ3, [0.02, "10%", 5])  # a stated tolerance wins over the SE
    np.testing.assert_allclose(stated, [[0.02, 20.0, 5.0], [0.02, 40.0, 5.0], [0.02, 0.0, 5.0]])
    assert tolerance_matrix(trials, OBJ3, ["50%", None, None])[:2, 0].tolist() == pytest.approx([0.25, 0.3])
    # peak_memory_bytes defaults to 5% too; anything else without an SE is exact
    obj = [("peak_memory_bytes", "minimize"), ("accuracy", "maximize")]
    np.testing.assert_allclose(tolerance_matrix([{"peak_memory_bytes": 2e9, "accuracy": 0.9}], obj), [[1e8, 0.0]])
    with pytest.raises(ValueError, match="2 tolerance"):
        tolerance_matrix(trials, OBJ3, [None, None])
    with pytest.raises(ValueError, match=r"tolerance of peak_memory_mb: .*percentage.*got .five."):
        tolerance_matrix(trials, OBJ3, [None, "five", None])  # names the objective and the value


def test_describe_tolerances():
    trials = [{**t, "peak_memory_mb": 284.0} for t in A_B]
    assert describe_tolerances(trials, OBJ3) == [
        "macro_f1: 1 SE (macro_f1_se, median 0.04)",
        "peak_memory_mb: 5% (median 14.2 MB)",
        "trainable_params: exact",
    ]
    lines = describe_tolerances([*trials, {"macro_f1": 0.3}], OBJ3, [None, 8, "1%"])
    assert lines[0] == "macro_f1: 1 SE (macro_f1_se, median 0.04; 1 trial(s) without it: exact)"
    assert lines[1:] == ["peak_memory_mb: 8 MB (absolute)", "trainable_params: 1% (median 1,000)"]


def test_tolerant_dominance_disagrees_with_strict_on_noise():
    v, dirs = _values(A_B, OBJ3), [d for _, d in OBJ3]
    tol = tolerance_matrix(A_B, OBJ3)
    assert pareto_mask(v, dirs).tolist() == [True, True]  # strict: A's 0.3 MB less memory keeps it
    assert pareto_mask(v, dirs, tol).tolist() == [False, True]
    assert not dominates(v[1], v[0], dirs) and dominates(v[1], v[0], dirs, tol)
    assert not dominates(v[0], v[1], dirs, tol)
    # per-point rows (B's, A's): the pair is compared with the larger of the two rows
    assert dominates(v[1], v[0], dirs, [[0.0, 15.0, 0.0], [0.0, 0.0, 0.0]])
    assert not dominates(v[1], v[0], dirs, [[0.0, 0.1, 0.0], [0.0, 0.0, 0.0]])  # 0.3 MB > 0.1 MB: a trade-off
    assert not dominates(v[1], v[0], dirs, [[0.1, 15.0, 0.0], [0.0, 0.0, 0.0]])  # F1 gap .084 within .1
    with pytest.raises(ValueError, match="shape"):
        pareto_mask(v, dirs, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        pareto_mask(v, dirs, -np.ones((2, 3)))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_zero_tolerances_are_the_strict_rule(m):
    rng = np.random.default_rng(200 + m)
    dirs = ["maximize", "minimize", "maximize", "minimize"][:m]
    for v in (rng.normal(size=(60, m)), rng.integers(0, 4, size=(60, m)).astype(float)):
        v[0, 0] = math.nan
        zero = np.zeros_like(v)
        assert (pareto_mask(v, dirs, zero) == pareto_mask(v, dirs)).all()
        for a, b in itertools.islice(itertools.permutations(range(20), 2), 100):
            assert dominates(v[a], v[b], dirs, zero[:2]) == dominates(v[a], v[b], dirs)
        ref = reference_point(v, dirs)
        assert hypervolume(v, dirs, ref, zero) == pytest.approx(hypervolume(v, dirs, ref))


@pytest.mark.parametrize("m", [2, 3])
def test_tolerant_front_property_random(m):
    rng = np.random.default_rng(300 + m)
    dirs = ["maximize", "minimize", "minimize"][:m]
    v = rng.normal(size=(50, m))
    tol = rng.uniform(0, 0.3, size=v.shape)
    mask = pareto_mask(v, dirs, tol)
    assert (mask != pareto_mask(v, dirs)).any()  # not vacuous: the tolerances change the front
    for i in range(len(v)):
        beaten = any(dominates(v[j], v[i], dirs, tol[[j, i]]) for j in range(len(v)))
        assert beaten != mask[i]  # on the front iff nothing dominates it beyond the tolerances


def test_dominance_cycle_falls_back_to_the_strict_front():
    # Uniform tolerance 1.1, three objectives: A beats B by 2 on x (B is only 1 better elsewhere), B beats C on y,
    # C beats A on z -- a cycle, so no point is undominated; D is strictly dominated by all three.
    v = np.array([[0.0, 0.0, 0.0], [2.0, -1.0, -1.0], [1.0, 1.0, -2.0], [5.0, 5.0, 5.0]])
    mmm = ["minimize"] * 3
    tol = np.full(v.shape, 1.1)
    a, b, c, d = v
    assert dominates(a, b, mmm, tol[:2]) and dominates(b, c, mmm, tol[:2]) and dominates(c, a, mmm, tol[:2])
    assert pareto._tolerant_front(v, None).tolist() == [True, True, True, False]  # the strict front
    assert pareto_mask(v, mmm, tol).tolist() == [True, True, True, False]  # empty tolerant front -> strict
    assert choose([dict(zip("xyz", p, strict=True)) for p in v], [(k, "minimize") for k in "xyz"], "knee", tol) != 3
    # early stopping: A is dominated (by C) but on the fallback front -> kept
    assert rung_should_stop(a, [b, c], mmm, min_peers=2, tolerances=1.1) is False
    assert rung_should_stop(d, [a, b, c], mmm, min_peers=2, tolerances=1.1) is True


def test_hypervolume_counts_only_the_tolerant_front():
    objectives = OBJ2
    v, dirs = _values(A_B, objectives), ["maximize", "minimize"]
    tol = tolerance_matrix(A_B, objectives)
    ref = [0.4, 301.0]
    # strict: B's box 0.084 x 0.7 plus A's 0.039 x 1.0; tolerant: B alone, 0.123 x 0.7
    assert hypervolume(v, dirs, ref) == pytest.approx(0.084 * 0.7 + 0.039 * 1.0)
    assert hypervolume(v, dirs, ref, tol) == pytest.approx(0.123 * 0.7)
    ideal = [0.6, 299.0]
    assert normalized_hypervolume(v, dirs, ref, ideal, tol) == pytest.approx(
        normalized_hypervolume(v[1:], dirs, ref, ideal))
    assert normalized_hypervolume(v, dirs, ref, ideal, tol) < normalized_hypervolume(v, dirs, ref, ideal)


def test_policies_and_aliases_use_the_tolerant_front():
    tol = tolerance_matrix(A_B, OBJ3)
    assert choose(A_B, OBJ3, "min:peak_memory_mb") == 0
    assert choose(A_B, OBJ3, "min:peak_memory_mb", tol) == 1  # A is off the tolerant front
    assert objective_aliases(A_B, OBJ3)["pareto-lowmem"] == 0
    assert objective_aliases(A_B, OBJ3, tol) == {
        "pareto-best-macro-f1": 1, "pareto-accurate": 1, "pareto-best-peak-memory-mb": 1, "pareto-lowmem": 1,
        "pareto-best-trainable-params": 1, "pareto-small": 1,
    }


# b: best F1; c: within one SE of it, less than half the memory but 3x the parameters; d: cheap and poor.
ONE_SE = [
    {"macro_f1": 0.52, "macro_f1_se": 0.04, "peak_memory_mb": 900.0, "trainable_params": 100_000, "acc": 0.7},
    {"macro_f1": 0.50, "macro_f1_se": 0.04, "peak_memory_mb": 400.0, "trainable_params": 300_000, "acc": 0.8},
    {"macro_f1": 0.30, "macro_f1_se": 0.04, "peak_memory_mb": 200.0, "trainable_params": 20_000, "acc": 0.6},
]


def test_parse_policy_1se():
    assert parse_policy("1se") == Policy("1se") == parse_policy(" one-se ")
    p = parse_policy("1se:accuracy;peak_memory_mb<=300")
    assert p == Policy("1se", metric="accuracy", constraints=(Constraint("peak_memory_mb", "<=", 300.0),))
    assert parse_policy("one-se:macro_f1").metric == "macro_f1"
    with pytest.raises(ValueError, match="needs a metric"):
        parse_policy("1se:")
    with pytest.raises(ValueError, match="unknown selector"):
        parse_policy("2se")
    assert DEFAULT_POLICY == "1se" and "1se" in policies.POLICY_GRAMMAR


def test_1se_picks_the_cheaper_trial_within_one_se():
    tol = tolerance_matrix(ONE_SE, OBJ3)
    assert pareto_mask(_values(ONE_SE, OBJ3), ["maximize", "minimize", "minimize"], tol).all()
    assert choose(ONE_SE, OBJ3, "max:macro_f1", tol) == 0
    # knee distances (scaled, 0 = best): b 1.039, c 1.044, d 1.0
    assert choose(ONE_SE, OBJ3, "knee", tol) == 2
    assert choose(ONE_SE, OBJ3, "1se", tol) == 1  # .50 >= .52 - .04, and 400 MB is clearly below 900 MB
    assert choose(ONE_SE, OBJ3, "one-se") == 1  # the SE is read from the trials even without tolerances
    assert choose(ONE_SE, OBJ3, DEFAULT_POLICY, tol) == 1
    # a smaller SE of the best trial: c is no longer within one SE
    tight = [{**ONE_SE[0], "macro_f1_se": 0.01}, *ONE_SE[1:]]
    assert choose(tight, OBJ3, "1se", tolerance_matrix(tight, OBJ3)) == 0
    # constraints first: among b and d only b is within one SE of the feasible best (b)
    assert choose(ONE_SE, OBJ3, "1se;trainable_params<=150000", tol) == 0
    assert choose(ONE_SE, OBJ3, "1se;peak_memory_mb<=300", tol) == 2
    assert choose(ONE_SE, OBJ3, "1se;peak_memory_mb<100", tol) is None
    # a metric that is not an objective: acc's best is c (no acc_se -> exact), then costs decide nothing
    assert choose(ONE_SE, OBJ3, "1se:acc", tol) == 1


def test_1se_without_an_se_falls_back_to_the_objective_tolerance_or_exact():
    plain = [{k: v for k, v in t.items() if k != "macro_f1_se"} for t in ONE_SE]
    assert choose(plain, OBJ3, "1se") == 0  # exact: only the best F1 is in the band
    assert choose(plain, OBJ3, "1se", tolerance_matrix(plain, OBJ3, [0.03, None, None])) == 1
    assert choose(plain, OBJ3, "1se", tolerance_matrix(plain, OBJ3, [0.01, None, None])) == 0


def test_1se_cost_ties_within_tolerance_go_to_the_next_objective():
    # b: best, SE .10 (band >= .50); t1 and t2 in the band with small SEs (t1 beats t2 on F1 beyond noise, so
    # both are on the tolerant front); their memory differs by 5 MB (within 5%) -> params decide -> t2.
    trials = [
        {"macro_f1": 0.60, "macro_f1_se": 0.10, "peak_memory_mb": 900.0, "trainable_params": 900_000},
        {"macro_f1": 0.58, "macro_f1_se": 0.01, "peak_memory_mb": 400.0, "trainable_params": 300_000},
        {"macro_f1": 0.51, "macro_f1_se": 0.01, "peak_memory_mb": 405.0, "trainable_params": 100_000},
    ]
    tol = tolerance_matrix(trials, OBJ3)
    assert pareto_mask(_values(trials, OBJ3), ["maximize", "minimize", "minimize"], tol).tolist() == [
        False, True, True]
    assert choose(trials, OBJ3, "1se", tol) == 2
    assert choose(trials, OBJ3, "1se") == 1  # exact costs: 400 MB < 405 MB
    # full tie on every cost -> the higher metric, then the lowest index (F1s within their SE: all on the front)
    same = [{**trials[1], "macro_f1": f, "macro_f1_se": 0.02} for f in (0.57, 0.58, 0.58)]
    tol = tolerance_matrix(same, OBJ3)
    assert pareto_mask(_values(same, OBJ3), ["maximize", "minimize", "minimize"], tol).all()
    assert choose(same, OBJ3, "1se", tol) == 1


def test_1se_metric_defaults_and_a_named_metric():
    obj = [("peak_memory_mb", "minimize"), ("trainable_params", "minimize")]
    # no maximised objective (e.g. loss, memory): the first objective is the metric, in its direction
    loss = [{"loss": x, "loss_se": 0.1, "peak_memory_mb": m} for x, m in [(1.0, 900.0), (1.05, 400.0), (1.3, 200.0)]]
    assert choose(loss, [("loss", "minimize"), ("peak_memory_mb", "minimize")], "1se") == 1
    assert choose(loss, [("loss", "minimize"), ("peak_memory_mb", "minimize")], "min:loss") == 0
    with pytest.raises(ValueError, match="1se:macro_f1"):
        choose(TRIALS, [], "1se")
    # maximised when not an objective.  Trial 4 strictly dominates all others on (memory, params), so no front
    # trial is within 0 of the best F1 (.70, trial 2): the band is anchored on the best front trial instead.
    assert choose(TRIALS, obj, "1se:macro_f1") == 4
    assert choose(TRIALS, OBJ2, "1se") == choose(TRIALS, OBJ2, "max:macro_f1") == 2  # no SE, no tolerance


def test_rung_should_stop_with_tolerances():
    d = ["maximize", "minimize"]
    cand, peer = [0.50, 300.0], [0.52, 299.0]
    assert rung_should_stop(cand, [peer], d, min_peers=1) is True  # strictly dominated by noise
    assert rung_should_stop(cand, [peer], d, min_peers=1, tolerances=[0.04, 15.0]) is False
    # per-point rows (candidate first): the peer's SE alone is enough to make it a tie
    assert rung_should_stop(cand, [peer], d, 1, tolerances=[[0.0, 15.0], [0.04, 0.0]]) is False
    assert rung_should_stop(cand, [peer, [0.60, 200.0]], d, 1, tolerances=[0.04, 15.0]) is True  # clearly beaten
    with pytest.raises(ValueError, match="shape"):
        rung_should_stop(cand, [peer], d, 1, tolerances=np.zeros((3, 2)))


def test_1se_pick_is_on_the_tolerant_front_random():
    rng = np.random.default_rng(5)
    dirs = [d for _, d in OBJ3]
    for _ in range(30):
        n = int(rng.integers(2, 25))
        trials = [{"macro_f1": f, "macro_f1_se": s, "peak_memory_mb": m, "trainable_params": p}
                  for f, s, m, p in zip(rng.uniform(0.2, 0.6, n), rng.uniform(0.0, 0.06, n),
                                        rng.uniform(200, 400, n), rng.choice([1e4, 2e4, 4e4], n), strict=True)]
        tol = tolerance_matrix(trials, OBJ3)
        front = pareto_mask(_values(trials, OBJ3), dirs, tol)
        pick = choose(trials, OBJ3, "1se", tol)
        assert front[pick]
        f1 = np.array([t["macro_f1"] for t in trials])
        band = [i for i in np.flatnonzero(front) if f1[i] >= f1.max() - trials[int(np.argmax(f1))]["macro_f1_se"]]
        if band:  # the pick is within one SE of the best and no band member is cheaper beyond tolerance
            assert pick in band
            mem = min(trials[i]["peak_memory_mb"] for i in band)
            assert trials[pick]["peak_memory_mb"] <= mem + max(tol[pick, 1], tol[band, 1].max())
