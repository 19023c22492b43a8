"""Issue 7, injected faults: bad sweep specs and unsafe names are refused fast, by name, and create nothing.

Every case runs the real `sweep` CLI in a subprocess with SWEEPS_STORE / SWEEPS_CACHE in tmp dirs:
`sweep validate` where the YAML alone shows the problem, `sweep run --no-live` where it takes the model or the
data to see it. Each must exit 2, name the problem (field path or offending column/value) on stderr, finish in
seconds, and leave no mlflow.db, optuna.db or artifacts/ behind (validate: no store directory at all).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _tiny import tiny_bert, toy_reviews  # noqa: E402

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
SWEEP = Path(sys.executable).parent / "sweep"
MAX_SECONDS = 180  # catches a run that starts training; a refusal takes seconds (103 s seen at load 12)

GOOD = """\
name: faulty
model: {base: MODEL}
data: {source: DATA, validation_fraction: 0.3, max_length: 16}
params: {epochs: 1, batch_size: 8, bf16: "off"}
search: {space: {rank: [2, 4]}}
objectives: [{metric: macro_f1, direction: maximize}]
budget: {trials: 2, concurrency: 1}
"""


def _sweep(*args: str, store: Path, cache: Path) -> tuple[subprocess.CompletedProcess, float, str]:
    env = {k: v for k, v in os.environ.items()  # nothing may point the store elsewhere
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SWEEPS_STUDY_STORAGE", "SWEEPS_RAY_ADDRESS")}
    env.update(SWEEPS_STORE=str(store), SWEEPS_CACHE=str(cache), COLUMNS="400")
    started = time.monotonic()
    proc = subprocess.run([str(SWEEP), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=10 * MAX_SECONDS)
    # rich wraps long lines at the console width: compare with whitespace collapsed.
    return proc, time.monotonic() - started, " ".join(proc.stderr.split())


def _assert_nothing_created(store: Path) -> None:
    for name in ("mlflow.db", "optuna.db", "artifacts"):
        assert not (store / name).exists(), f"{name} was created: {sorted(p.name for p in store.iterdir())}"


# (id, how to break the good spec, strings stderr must contain)
VALIDATE_CASES = [
    ("yaml-syntax-error", lambda s: s.replace("search: {space:", "search: [space:"),
     ["YAML syntax error", "line 5"]),
    ("unknown-key", lambda s: s.replace("budget: {trials: 2,", "budget: {trials: 2, trails: 3,"),
     ["budget.trails", "Extra inputs are not permitted"]),
    ("wrong-type-trials-many", lambda s: s.replace("budget: {trials: 2, concurrency: 1}", "budget: {trials: many}"),
     ["budget.trials", "'many'"]),
    ("rank-0-in-params", lambda s: s.replace("epochs: 1,", "epochs: 1, rank: 0,"),
     ["params.rank", "greater than or equal to 1", "got 0"]),
    ("rank-0-in-search-choice", lambda s: s.replace("rank: [2, 4]", "rank: [0, 4]"),
     ["search.space.rank.choices[0]", "greater than or equal to 1"]),
    ("empty-search-space", lambda s: s.replace("{space: {rank: [2, 4]}}", "{space: {}}"),
     ["search.space", "at least 1 item"]),
    ("int8-and-nf4-together", lambda s: s.replace("epochs: 1,", "epochs: 1, quantization: [int8, nf4],"),
     ["params.quantization", "'none', 'int8', 'nf4' or 'fp4'", "['int8', 'nf4']"]),
    ("unknown-quant-int4", lambda s: s.replace("epochs: 1,", "epochs: 1, quantization: int4,"),
     ["params.quantization", "'int4'", "'nf4'"]),
    ("trust-remote-code", lambda s: s.replace("{base: MODEL}", "{base: MODEL, trust_remote_code: true}"),
     ["model.trust_remote_code", "True"]),
    ("data-file-missing", lambda s: s.replace("source: DATA", "source: DATA_DIR/nope.csv"),
     ["data.source", "file not found", "nope.csv"]),
    ("objective-no-trial-reports", lambda s: s.replace("metric: macro_f1", "metric: bleu"),
     ["objectives[0].metric", "unknown metric", "'bleu'", "macro_f1"]),
]

RUN_CASES = [
    ("layers-the-model-lacks", lambda s: s.replace("epochs: 1,", 'epochs: 1, layers: "5-9",'),
     ["'5-9'", "2 blocks"]),
    ("label-column-missing", lambda s: s.replace("max_length: 16", "max_length: 16, label_column: stars"),
     ["'stars'", "columns: text, label"]),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault_assets")
    return {"model": tiny_bert(root / "tiny-bert"), "data": toy_reviews(root / "train.csv"), "dir": root}


def _write(tmp_path: Path, assets: dict[str, Path], breaks) -> Path:
    text = breaks(GOOD).replace("DATA_DIR", str(assets["dir"]))
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("MODEL", str(assets["model"])).replace("DATA", str(assets["data"])))
    return spec


def test_the_unbroken_spec_is_valid(tmp_path, assets):
    """Control: each case below breaks exactly one thing of a spec that validates."""
    spec = _write(tmp_path, assets, lambda s: s)
    proc, _, _ = _sweep("validate", str(spec), store=tmp_path / "store", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("breaks", "expected"), [c[1:] for c in VALIDATE_CASES], ids=[c[0] for c in VALIDATE_CASES])
def test_validate_refuses(tmp_path, assets, breaks, expected):
    spec = _write(tmp_path, assets, breaks)
    store = tmp_path / "store"
    proc, elapsed, stderr = _sweep("validate", str(spec), store=store, cache=tmp_path / "cache")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    for text in expected:
        assert text in stderr, f"{text!r} not in stderr:\n{proc.stderr}"
    assert elapsed < MAX_SECONDS
    assert not store.exists(), f"validate created {sorted(p.name for p in store.iterdir())}"


@pytest.mark.parametrize(("breaks", "expected"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_refuses_before_creating_anything(tmp_path, assets, breaks, expected):
    spec = _write(tmp_path, assets, breaks)
    store = tmp_path / "store"
    proc, elapsed, stderr = _sweep("run", str(spec), "--no-live", store=store, cache=tmp_path / "cache")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "cannot run faulty" in stderr, proc.stderr
    for text in expected:
        assert text in stderr, f"{text!r} not in stderr:\n{proc.stderr}"
    assert elapsed < MAX_SECONDS
    if store.exists():
        _assert_nothing_created(store)


# ---------------------------------------------------------------- unsafe names (issue 7 item 10)

UNSAFE = ["../x", "%2e%2e%2f", "/abs", "a\\b", "a#b"]


@pytest.mark.parametrize("name", UNSAFE)
def test_safe_name_refuses(name):
    from sweeps.store import safe_name

    with pytest.raises(ValueError, match="unsafe"):
        safe_name(name)


@pytest.mark.parametrize("suffix", ["@champion", "/1"], ids=["alias", "version"])
@pytest.mark.parametrize("name", UNSAFE)
def test_parse_ref_refuses(name, suffix):
    from sweeps.tracking.refs import parse_ref

    for ref in (f"{name}{suffix}", f"models:/{name}{suffix}"):
        with pytest.raises(ValueError):
            parse_ref(ref)


def test_safe_names_still_pass():
    from sweeps.store import safe_name
    from sweeps.tracking.refs import parse_ref

    assert safe_name("rank_study-v1.2") == "rank_study-v1.2"
    assert parse_ref("models:/reviews@champion") == ("reviews", "champion")
    assert parse_ref("reviews/3") == ("reviews", "3")


def test_promote_refuses_an_unsafe_model_name_before_touching_the_store(tmp_path):
    store = tmp_path / "store"
    proc, elapsed, stderr = _sweep("promote", "nope", "--name", "../x", store=store, cache=tmp_path / "cache")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "unsafe model name '../x'" in stderr, proc.stderr
    assert elapsed < MAX_SECONDS
    assert not store.exists(), f"promote created {sorted(p.name for p in store.iterdir())}"
