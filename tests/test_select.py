"""Tests of sweeps.select (Pareto front, hypervolume, policies, aliases, early stopping) and sweeps.plot."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sweeps.plot import pareto_plot
from sweeps.select import (
    Constraint,
    Policy,
    choose,
    dominates,
    hypervolume,
    normalized_hypervolume,
    objective_aliases,
    pareto_mask,
    parse_policy,
    reference_point,
    rung_should_stop,
)

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
