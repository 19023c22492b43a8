"""Tracker and registry against a real SQLite-backed MLflow (the same store `sweep run` uses).

One database for the module: MLflow runs its alembic migrations on every fresh database (~4 s), so each test
gets its own sweep / model name instead of its own database.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from sweeps.driver.promotion import register
from sweeps.tracking import base, refs
from sweeps.tracking.runs import trial_run_name
from sweeps.tracking.tracker import Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEPS_STORE", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield root


@pytest.fixture(scope="module")
def tracker(store):
    return Tracker(f"sqlite:///{store / 'mlflow.db'}")


def _adapter(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"\x00weights" * 64)
    (path / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text("{}")
    for name, data in (extra or {}).items():
        (path / name).write_bytes(data)
    return path


def _completed_trial(tracker: Tracker, tmp_path: Path, sweep: str, n: int = 0) -> str:
    parent = tracker.start_sweep(sweep, f"name: {sweep}\n")
    run_id = tracker.start_trial(sweep, parent, n, {"rank": 8 * (n + 1)})
    tracker.finish_trial(run_id, "COMPLETE", {"macro_f1": 0.4 + n / 10}, adapter_dir=_adapter(tmp_path / f"a{n}"))
    return run_id


def test_default_uri_and_ui_hint(store):
    t = Tracker()
    assert t.tracking_uri == f"sqlite:///{store / 'mlflow.db'}"
    assert t.ui_hint() == f"mlflow ui --backend-store-uri sqlite:///{store / 'mlflow.db'}"
    assert Tracker("http://mlflow.internal:5000").ui_hint().startswith("open http://mlflow.internal:5000")


def test_start_sweep_twice_reuses_parent(tracker, store, tmp_path):
    parent = tracker.start_sweep("resume", "name: resume\n", "first try", {"sweeps.spec_sha256": "abc"})
    tracker.finish_sweep(parent, "FAILED", metrics={"trials_done": 1}, tags={"sweeps.stopped": "crash"})
    again = tracker.start_sweep("resume", "name: resume  # edited\n", "second try")
    assert again == parent == tracker.parent_run("resume")
    run = tracker.client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.tags["sweeps.role"] == "parent" and run.data.tags["mlflow.note.content"] == "second try"
    spec = Path(tracker.client.download_artifacts(parent, "spec.yaml", str(tmp_path)))
    assert spec.read_text() == "name: resume  # edited\n"
    exp = tracker.client.get_experiment(run.info.experiment_id)
    assert exp.name == "resume" and exp.artifact_location == (store / "artifacts" / "resume").as_uri()
    assert tracker.parent_run("never-started") is None


def test_start_trial_idempotent(tracker):
    parent = tracker.start_sweep("idem", "name: idem\n")
    many = {f"p{i:03d}": i for i in range(150)}  # more than one log_batch (100 params per call)
    first = tracker.start_trial("idem", parent, 3, {"rank": 8, "lr": 1e-3, **many})
    again = tracker.start_trial("idem", parent, 3, {"rank": 8, "dropout": 0.1})
    assert again == first
    run = tracker.client.get_run(first)
    assert run.data.params["lr"] == "0.001" and run.data.params["dropout"] == "0.1"
    assert len(run.data.params) == 153
    assert run.info.run_name == "t03 r8" and run.data.tags["mlflow.parentRunId"] == parent
    with pytest.raises(ValueError, match="rank"):
        tracker.start_trial("idem", parent, 3, {"rank": 16})
    assert [r.trial_number for r in tracker.trial_records("idem")] == [3]


def test_complete_trial_uploads_adapter_and_download_verifies(tracker, tmp_path):
    run_id = _completed_trial(tracker, tmp_path, "adapters")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sweeps.state"] == "COMPLETE"
    local = tracker.download_adapter(run_id, tmp_path / "dl")
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["algorithm"] == "sha256"
    assert set(manifest["files"]) == {"adapter_model.safetensors", "adapter_config.json", "tokenizer/tokenizer.json"}
    assert manifest["files"]["adapter_model.safetensors"]["bytes"] == 8 * 64
    assert len(run.data.tags["sweeps.adapter_sha256"]) == 64

    # Tamper with the stored artifact: the next download must name the file.
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "adapter"
    (stored / "adapter_config.json").write_text(json.dumps({"r": 64}))
    with pytest.raises(ValueError, match="adapter_config.json"):
        tracker.download_adapter(run_id, tmp_path / "dl2")
    (stored / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    tracker.download_adapter(run_id, tmp_path / "dl3")  # restored: verifies again
    (stored / "smuggled.json").write_text("{}")
    with pytest.raises(ValueError, match="smuggled.json"):
        tracker.download_adapter(run_id, tmp_path / "dl4")


def test_pickle_in_adapter_is_refused(tracker, tmp_path):
    parent = tracker.start_sweep("pickles", "name: pickles\n")
    run_id = tracker.start_trial("pickles", parent, 0, {"rank": 8})
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        tracker.finish_trial(run_id, "COMPLETE", adapter_dir=_adapter(tmp_path / "a", {"pytorch_model.bin": b"x"}))
    run = tracker.client.get_run(run_id)
    # Never FINISHED without its adapter: the refused trial is closed as FAILED, nothing uploaded.
    assert run.info.status == "FAILED" and run.data.tags["sweeps.state"] == "FAILED"
    assert "pytorch_model.bin" in run.data.tags["sweeps.failure_reason"]
    assert tracker.client.list_artifacts(run_id) == []


def test_reconcile_running_fails_leftover_trials(tracker):
    parent = tracker.start_sweep("crashed", "name: crashed\n")
    done = tracker.start_trial("crashed", parent, 0, {"rank": 4})
    tracker.finish_trial(done, "PRUNED", {"macro_f1": 0.1})
    tracker.start_trial("crashed", parent, 1, {"rank": 8})
    tracker.start_trial("crashed", parent, 2, {"rank": 16})
    assert tracker.reconcile_running("crashed", reason="driver killed") == [1, 2]
    assert tracker.reconcile_running("crashed") == []
    recs = {r.trial_number: r for r in tracker.trial_records("crashed")}
    assert (recs[0].status, recs[0].state) == ("KILLED", "PRUNED")
    assert (recs[1].status, recs[1].state) == ("FAILED", "FAILED")
    assert recs[2].tags["sweeps.failure_reason"] == "driver killed" and recs[2].end_time is not None


def test_trial_records_pages_params_and_metrics(tracker, monkeypatch):
    parent = tracker.start_sweep("records", "name: records\n")
    for n in (4, 0, 2, 1, 3):
        run_id = tracker.start_trial("records", parent, n, {"rank": 2 ** n, "target": "ffn"})
        tracker.log_metrics(run_id, {"loss": 1.0 / (n + 1), "diverged": float("nan")}, step=1)
        tracker.finish_trial(run_id, "COMPLETE" if n % 2 == 0 else "FAILED", {"macro_f1": n / 10, "inf": 1e999},
                             reason=None if n % 2 == 0 else "x" * 6000)
    monkeypatch.setattr(base, "_PAGE", 2)  # five runs over three pages: the page-token loop is exercised
    recs = tracker.trial_records("records")
    assert [r.trial_number for r in recs] == [0, 1, 2, 3, 4]
    assert recs[4].params == {"rank": "16", "target": "ffn"}
    assert recs[4].metrics == {"loss": 0.2, "macro_f1": 0.4}  # NaN and inf skipped
    assert recs[1].state == "FAILED" and len(recs[1].tags["sweeps.failure_reason"]) == 5000
    row = next(r for r in tracker.sweeps() if r["name"] == "records")
    assert (row["parent_run_id"], row["trials"], row["complete"], row["failed"]) == (parent, 5, 3, 2)


def test_promote_reuses_version_and_moves_champion(tracker, tmp_path):
    first = _completed_trial(tracker, tmp_path, "promo", 0)
    lineage = {"sweep": "promo", "trial_number": "0", "base_model": "bundled:all-minilm-l6-v2",
               "base_sha256": "f" * 64, "quantization": "nf4", "val.macro_f1": "0.4"}
    assert register.promote(tracker, "promo-model", first, ["champion", "pareto-lowmem"], lineage,
                            {"macro_f1": 0.38}) == ("1", True)
    assert register.promote(tracker, "promo-model", first, ["champion"], lineage) == ("1", False)
    info = refs.resolve(tracker, "promo-model@champion")
    assert info["version"] == "1" and info["run_id"] == first
    assert sorted(info["aliases"]) == ["champion", "pareto-lowmem"]
    assert info["tags"]["test.macro_f1"] == "0.38" and info["tags"]["quantization"] == "nf4"
    model = tracker.client.get_logged_model(info["model_id"])  # a logged MLflow model holding the run's adapter
    assert info["source"] == model.artifact_location and model.source_run_id == first
    assert model.tags["sweeps.adapter_sha256"] == tracker.client.get_run(first).data.tags["sweeps.adapter_sha256"]
    assert str(model.status).endswith("READY") and tracker.adapter_model(first) == model.model_id
    # MLflow merges a logged model's files into downloads of the run artifact of the same name: the run's
    # adapter must still download alone (and verify) where the default tracking URI finds the model too
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)
        local = tracker.download_adapter(first, tmp_path / "after-promotion")
    assert not (local / "MLmodel").exists() and (local / "manifest.json").is_file()

    second = _completed_trial(tracker, tmp_path, "promo", 1)
    assert register.promote(tracker, "promo-model", second, ["champion"], {"sweep": "promo"}) == ("2", True)
    assert refs.resolve(tracker, "models:/promo-model@champion")["run_id"] == second
    assert refs.resolve(tracker, "models:/promo-model@pareto-lowmem")["version"] == "1"
    assert refs.resolve(tracker, "promo-model/1")["aliases"] == ["pareto-lowmem"]
    for missing in ("promo-model@nobody", "promo-model/9", "no-such-model/1"):
        with pytest.raises(LookupError):
            refs.resolve(tracker, missing)
    with pytest.raises(ValueError, match="latest"):
        register.promote(tracker, "promo-model", second, ["latest"], {})


@pytest.mark.parametrize("ref, expected", [
    ("reviews@champion", ("reviews", "champion")),
    ("models:/reviews@champion", ("reviews", "champion")),
    ("reviews/3", ("reviews", "3")),
    ("models:/reviews/3", ("reviews", "3")),
])
def test_parse_ref_forms(ref, expected):
    assert refs.parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["../x", "/abs", "a\\b", "%2e%2e%2f", "a#b", "../x@champion", "/abs/1",
                                 "models:/../x/1", "reviews", "reviews@", "reviews/v3", "reviews@a.b"])
def test_parse_ref_refuses_unsafe(ref):
    with pytest.raises(ValueError):
        refs.parse_ref(ref)


def test_concurrent_promotions_get_unique_versions(tracker, store, tmp_path):
    runs = [_completed_trial(tracker, tmp_path, "race", n) for n in range(6)]
    results, errors = {}, []

    def promote(run_id: str) -> None:
        try:  # a Tracker per thread, like separate `sweep promote` processes
            t = Tracker(tracker.tracking_uri)
            results[run_id] = register.promote(t, "race-model", run_id, ["champion"], {})
        except Exception as exc:  # surfaced below: an exception in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(int(v) for v, created in results.values()) == [1, 2, 3, 4, 5, 6]
    assert all(created for _, created in results.values())
    for run_id, (version, _) in results.items():
        assert tracker.find_version("race-model", run_id) == version
    assert refs.resolve(tracker, "race-model@champion")["version"] in {"1", "2", "3", "4", "5", "6"}


def test_create_version_retries_lost_race(tracker, tmp_path, monkeypatch):
    # SQLite serialises writers, so real collisions rarely reach us; Postgres and a tracking server let the
    # loser of max(version)+1 see the unique-constraint error. Simulate two lost races, then success.
    run_id = _completed_trial(tracker, tmp_path, "retry")
    real, calls = tracker.client.create_model_version, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: model_versions.version")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "create_model_version", flaky)
    assert tracker.create_version("retry-model", run_id, {"sweep": "retry"}) == "1"
    assert len(calls) == 3

    def broken(*args, **kwargs):
        raise RuntimeError("permission denied")

    monkeypatch.setattr(tracker.client, "create_model_version", broken)
    with pytest.raises(RuntimeError, match="permission denied"):  # not a race: no retry
        tracker.create_version("other-model", run_id, {})


def test_finish_trial_rejects_unknown_state(tracker):
    parent = tracker.start_sweep("states", "name: states\n")
    run_id = tracker.start_trial("states", parent, 0, {})
    with pytest.raises(ValueError, match="COMPLETE"):
        tracker.finish_trial(run_id, "DONE")


def test_baselines_are_idempotent_child_runs_that_trial_listings_ignore(tracker):
    parent = tracker.start_sweep("based", "name: based\n")
    trial = tracker.start_trial("based", parent, 0, {"rank": 4})
    majority = tracker.log_baseline("based", parent, "majority", {"accuracy": 0.654, "macro_f1": 0.264},
                                    {"method": "majority"}, {"sweeps.split": "validation"})
    probe = tracker.log_baseline("based", parent, "linear probe", {"macro_f1": 0.47}, {"method": "lbfgs"})
    run = tracker.client.get_run(majority)
    assert run.info.status == "FINISHED" and run.info.run_name == "baseline: majority"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["sweeps.kind"] == "baseline"
    assert run.data.tags["sweeps.baseline"] == "majority" and run.data.tags["sweeps.split"] == "validation"
    assert run.data.params == {"method": "majority"}
    # a re-run sweep updates the same runs: same id for the same params, a fresh run when a param changed
    assert tracker.log_baseline("based", parent, "majority", {"macro_f1": 0.3}, {"method": "majority"}) == majority
    changed = tracker.log_baseline("based", parent, "linear probe", {"macro_f1": 0.5}, {"method": "sgd"})
    assert changed != probe and tracker.client.get_run(probe).info.lifecycle_stage == "deleted"
    assert tracker.baselines("based") == {"linear probe": {"macro_f1": 0.5},
                                          "majority": {"accuracy": 0.654, "macro_f1": 0.3}}
    assert tracker.baselines("never-started") == {}
    # trial listings, counts and the crash reconciler see the one trial only
    assert [r.run_id for r in tracker.trial_records("based")] == [trial]
    row = next(r for r in tracker.sweeps() if r["name"] == "based")
    assert (row["trials"], row["running"]) == (1, 1)
    tracker.client.update_run(majority, status="RUNNING")  # even a baseline a crash left RUNNING is not a trial
    assert tracker.reconcile_running("based") == [0]
    assert tracker.client.get_run(majority).data.tags.get("sweeps.state") is None


@pytest.mark.parametrize("number, params, name", [
    (7, {"rank": 2, "effective_alpha": 4.0, "target": "attention", "quantization": "nf4", "method": "lora",
         "layers": "all"}, "t07 r2 α4 attn nf4"),
    (12, {"rank": 16, "alpha_ratio": 2, "effective_alpha": 32.0, "target": "all-linear", "quantization": "none",
          "method": "dora", "layers": "upper-half"}, "t12 dora r16 α32 all upper fp"),
    (5, {"rank": 4, "effective_alpha": 8.0, "target": "ffn", "layers": "3-5"}, "t05 r4 α8 ffn L3-5"),
    (3, {"method": "head-only", "rank": 8, "quantization": "int8"}, "t03 head-only int8"),
    (0, {}, "t00"),
])
def test_trial_run_names_say_what_the_trial_is(number, params, name):
    assert trial_run_name(number, params) == name


def test_experiment_kind_datasets_and_tables(tracker, tmp_path):
    from _tiny import toy_reviews

    from sweeps.driver import inputs
    from sweeps.spec import validate_dict

    train, test = toy_reviews(tmp_path / "train.csv"), toy_reviews(tmp_path / "test.csv", n=30, seed=1)
    (tmp_path / "m").mkdir()  # the spec checks the base exists; describing the data never loads it
    spec = validate_dict({"name": "shown", "task": "classification", "model": {"base": str(tmp_path / "m")},
                          "data": {"source": str(train), "test": str(test), "validation_fraction": 0.3},
                          "search": {"sampler": "random", "space": {"rank": [2, 4]}},
                          "objectives": [{"metric": "macro_f1", "direction": "maximize"}]}, "shown")
    described = inputs.describe(spec)
    assert [(d["context"], d["rows"]) for d in described] == [("train", 62), ("validation", 28), ("test", 30)]
    assert described[0]["source"] == {"type": "local", "uri": train.resolve().as_uri()}
    assert described[2]["source"]["uri"] == test.resolve().as_uri() and len({d["digest"] for d in described}) == 3
    assert inputs.describe(spec) == described  # seeded split: the same digests every time

    parent = tracker.start_sweep("shown", "name: shown\n", datasets=described)
    exp = tracker.client.get_experiment_by_name("shown")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run_id = tracker.start_trial("shown", parent, 7, {"rank": 2, "effective_alpha": 4.0, "target": "attention",
                                                      "quantization": "nf4"})
    assert tracker.client.get_run(run_id).info.run_name == "t07 r2 α4 attn nf4"
    for step, f1 in enumerate((0.3, 0.5), 1):  # per-epoch metrics at their epoch: MLflow draws them as curves
        tracker.log_metrics(run_id, {"macro_f1": f1}, step=step)
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, "macro_f1")] == [(1, .3), (2, .5)]
    tracker.start_trial("shown", parent, 7, {"rank": 2})  # resumed: the inputs are not logged twice
    for rid in (parent, run_id):
        got = tracker.run_datasets(rid)
        assert [(d["context"], d["digest"], d["rows"]) for d in got] == sorted(
            [(d["context"], d["digest"], d["rows"]) for d in described], key=lambda x: ("test", "train",
                                                                                        "validation").index(x[0]))
    ds = tracker.client.get_run(run_id).inputs.dataset_inputs[0].dataset
    assert ds.source_type == "local" and json.loads(ds.schema)["mlflow_colspec"][0]["name"] == "text"

    tracker.log_rows(parent, "pareto_front.json", [{"trial": 7, "rank": "2", "macro_f1": 0.5}])
    table = json.loads(Path(tracker.client.download_artifacts(parent, "pareto_front.json", str(tmp_path))).read_text())
    assert table["columns"] == ["trial", "rank", "macro_f1"] and table["data"] == [[7, "2", 0.5]]


def test_logging_the_front_retries_when_another_driver_inserted_the_same_tag_first():
    """Two drivers of one sweep finishing together both log pareto_front.json to the parent run; MLflow's
    log_table read-extend-inserts the mlflow.loggedArtifacts tag, and the slower insert hit the unique key on
    PostgreSQL (seen in test_scaleout's two-driver test). One retry updates the tag instead."""
    from mlflow.exceptions import MlflowException

    from sweeps.tracking.artifacts import Artifacts

    calls = []

    class Client:
        def log_table(self, run_id, data, artifact_file):
            calls.append((run_id, artifact_file, data))
            if len(calls) == 1:
                raise MlflowException("BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value "
                                      'violates unique constraint "tag_pk"')

    art = object.__new__(Artifacts)
    art.client = Client()
    art.log_rows("r1", "pareto_front.json", [{"trial": 0, "macro_f1": 0.5}])
    assert len(calls) == 2 and calls[1] == ("r1", "pareto_front.json", {"trial": [0], "macro_f1": [0.5]})

    class Broken:
        def log_table(self, run_id, data, artifact_file):
            raise MlflowException("RESOURCE_DOES_NOT_EXIST: run r1 not found")

    art.client = Broken()
    with pytest.raises(MlflowException, match="not found"):  # any other failure is not retried
        art.log_rows("r1", "pareto_front.json", [{"trial": 0}])
