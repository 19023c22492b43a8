"""MLflow basic auth (issue 17.5) on a REAL tracking server: who may promote into a registered model.

`mlflow server --app-name basic-auth` (platform/start-mlflow-server.sh with MLFLOW_AUTH_CONFIG_PATH set to a copy
of platform/mlflow-auth.ini) on 127.0.0.1:<free port>, its backend store and its users/permissions store in two
databases of a private PostgreSQL cluster (the scale-out tests' fixture; the auth store gets the third database
the ini describes, `mlflow_auth`). The admin creates a registered model and two users; with the ini's
`default_permission = READ`, the user without a grant on the model cannot promote into it (create a version) nor
move its alias, and the user granted EDIT on it can. Promotions go through
`sweeps.driver.promotion.register.promote` with MLFLOW_TRACKING_USERNAME/PASSWORD set, the path `sweep promote` takes.

Needs PostgreSQL's server binaries (without them the module is skipped, like the scale-out tests) and
`mlflow[auth]` (Flask-WTF, from the `postgres` extra; without it the server refuses to start and the tests fail).
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import secrets
import shutil

import pytest
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

# The scale-out module's PostgreSQL fixture and server helpers (it skips this module too without PostgreSQL).
from test_scaleout import (
    MLFLOW,
    PG_BIN,
    ROOT,
    _as_pg_user,
    _free_port,
    _run,
    _start_mlflow_server,
    postgres,  # noqa: F401  (a fixture: pytest finds it in this module's namespace)
)

from sweeps.driver.promotion import register
from sweeps.tracking.manifest import write_manifest
from sweeps.tracking.tracker import Tracker

# Server start (~10-20 s: two Alembic migrations) plus a few dozen HTTP calls; a hung server fails here, not in CI.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "reviews"
LINEAGE = {"sweep": "auth_sweep", "trial_number": "0"}
_CREDS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module")
def auth_server(request, postgres, tmp_path_factory):  # noqa: F811
    """The tracking server with basic auth on; yields its URL and the admin's password."""
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail("mlflow[auth] is not installed (the basic-auth app needs Flask-WTF): pip install -e '.[postgres]'")
    root = tmp_path_factory.mktemp("mlflow-auth")
    psql = PG_BIN / "psql" if (PG_BIN / "psql").exists() else shutil.which("psql")
    _run(_as_pg_user([psql, "-h", postgres["dir"], "-p", postgres["port"], "-U", "postgres", "-d", "postgres",
                      "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE mlflow_auth OWNER sweeps;"]))
    ini = configparser.ConfigParser()
    ini.read(ROOT / "platform" / "mlflow-auth.ini")
    ini["mlflow"]["database_uri"] = postgres["mlflow"].rsplit("/", 1)[0] + "/mlflow_auth"
    # Each request re-checks the password (scrypt: 0.37 s of CPU, seconds on a busy 2-core box) unless the server
    # caches the check; the permission check still runs on every request, and a wrong password still fails.
    ini["mlflow"]["auth_cache_ttl_seconds"] = "300"
    config = root / "auth.ini"
    with open(config, "w") as fh:
        ini.write(fh)

    artifacts, log, port = root / "artifacts", root / "server.log", _free_port()
    artifacts.mkdir()
    admin_password = secrets.token_hex(12)
    env = {k: v for k, v in os.environ.items() if k not in _CREDS}
    env.update({"MLFLOW_BACKEND_STORE_URI": postgres["mlflow"], "MLFLOW_ARTIFACTS_DESTINATION": artifacts.as_uri(),
                "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
                "MLFLOW_BIN": str(MLFLOW), "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
                "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                # the auth app refuses to start without it (CSRF tokens of the user-creation page)
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
                # no job runner (GenAI scorers, trace archival): a third process importing mlflow, unused here
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = _start_mlflow_server(request, env, port, log, "mlflow server (basic-auth)", timeout=120)
    return {"url": url, "admin": admin_password, "log": log}


def _as(monkeypatch: pytest.MonkeyPatch, url: str, user: str, password: str) -> Tracker:
    """A Tracker that sends `user`'s credentials: MLflow reads the two variables on every request."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return Tracker()


def _trial_run(tracker: Tracker, sweep: str, tmp) -> str:
    """A finished run in the caller's own experiment with an `adapter` artifact directory and its sha256
    manifest, like a sweep trial's (a stand-in adapter: promotion never loads it)."""
    exp = tracker.client.get_experiment_by_name(sweep)
    exp_id = exp.experiment_id if exp else tracker.client.create_experiment(sweep)
    run = tracker.client.create_run(exp_id, tags={"sweeps.role": "trial"})
    adapter = tmp / run.info.run_id / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    sha = write_manifest(adapter)
    tracker.client.set_tag(run.info.run_id, "sweeps.adapter_sha256", sha)
    tracker.client.log_artifacts(run.info.run_id, str(adapter), "adapter")
    tracker.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def team(auth_server, tmp_path_factory):
    """As admin: users alice (no grant on the model) and bob (EDIT on it), the model with v1 @champion and v2.
    Each user then runs a "sweep" of their own (an experiment they create, so they MANAGE it): what they promote
    is their own trial run, and only the registered model's permission decides. default_permission = READ."""
    tmp = tmp_path_factory.mktemp("auth-team")
    users = {"alice": secrets.token_hex(8), "bob": secrets.token_hex(8)}
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEPS_STORE", str(tmp / "store"))
        admin = _as(mp, auth_server["url"], "admin", auth_server["admin"])
        auth = get_app_client("basic-auth", tracking_uri=auth_server["url"])
        for user, password in users.items():
            auth.create_user(user, password)
        first, second = (_trial_run(admin, "admin_sweep", tmp) for _ in range(2))
        v1, _ = register.promote(admin, MODEL, first, ["champion"], LINEAGE)
        v2, _ = register.promote(admin, MODEL, second, ["candidate"], LINEAGE)
        auth.grant_user_permission("bob", "registered_model", MODEL, "EDIT")
        assert auth.get_user_permission("alice", "registered_model", MODEL).permission == "READ"
        assert auth.get_user_permission("bob", "registered_model", MODEL).permission == "EDIT"
        for user, password in users.items():
            runs[user] = _trial_run(_as(mp, auth_server["url"], user, password), f"{user}_sweep", tmp)
    return {"url": auth_server["url"], "users": users, "runs": runs, "v1": v1, "v2": v2, "tmp": tmp}


@pytest.fixture
def login(team, monkeypatch):
    monkeypatch.setenv("SWEEPS_STORE", str(team["tmp"] / "store"))
    return lambda user: _as(monkeypatch, team["url"], user, team["users"][user])


def _champion(tracker: Tracker) -> str:
    return tracker.version_info(MODEL, "champion")["version"]


def test_user_without_permission_cannot_promote_or_move_the_alias(team, login):
    alice = login("alice")
    before = _champion(alice)  # READ: she sees the model and its aliases

    with pytest.raises(MlflowException) as promoted:
        register.promote(alice, MODEL, team["runs"]["alice"], ["champion"], LINEAGE)
    with pytest.raises(MlflowException) as moved:
        alice.set_alias(MODEL, "champion", team["v2"])

    for exc in (promoted.value, moved.value):
        print(f"{type(exc).__name__}: {exc}")
        assert exc.error_code == "PERMISSION_DENIED" and exc.get_http_status_code() == 403, exc
        assert "Permission denied" in str(exc), exc
    assert alice.find_version(MODEL, team["runs"]["alice"]) is None  # no version left behind
    assert _champion(alice) == before
    assert "champion" not in alice.version_info(MODEL, team["v2"])["aliases"]


def test_user_with_edit_permission_can_promote_and_move_the_alias(team, login):
    bob = login("bob")
    version, created = register.promote(bob, MODEL, team["runs"]["bob"], ["champion"], LINEAGE)
    assert created and int(version) > int(team["v2"])
    info = bob.version_info(MODEL, "champion")
    assert info["version"] == version and info["run_id"] == team["runs"]["bob"]
    assert info["tags"]["sweeps.source_run_id"] == team["runs"]["bob"] and info["tags"]["sweep"] == LINEAGE["sweep"]
    # idempotent, as `sweep promote` again: the same version, the alias only re-pointed
    assert register.promote(bob, MODEL, team["runs"]["bob"], ["champion"], LINEAGE) == (version, False)
    bob.set_alias(MODEL, "champion", team["v1"])  # moving it back (a rollback) needs EDIT too
    assert _champion(bob) == team["v1"]


def test_wrong_password_is_refused(team, login, monkeypatch):
    alice = login("alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-" + team["users"]["alice"])
    with pytest.raises(MlflowException) as refused:
        alice.version_info(MODEL, "champion")
    print(f"{type(refused.value).__name__}: {refused.value}")
    assert refused.value.get_http_status_code() == 401, refused.value
