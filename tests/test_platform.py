"""platform/ (issue 8): the deployment files are well-formed. Bringing them up for real: tests/test_scaleout.py."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ROOT / "platform"


def test_env_example_sets_the_three_variables_a_team_shares():
    exported = re.findall(r"^export (\w+)=", (PLATFORM / "env.example").read_text(), flags=re.M)
    assert exported == ["MLFLOW_TRACKING_URI", "SWEEPS_STUDY_STORAGE", "SWEEPS_RAY_ADDRESS"]


def test_postgres_init_makes_a_role_and_two_databases():
    sql = (PLATFORM / "postgres-init.sql").read_text()
    assert "CREATE ROLE sweeps LOGIN PASSWORD :'password'" in sql  # the password comes from psql -v, not git
    assert re.findall(r"^CREATE DATABASE (\w+)", sql, flags=re.M) == ["mlflow", "optuna"]


def _server_args(**env) -> list[str]:
    script = PLATFORM / "start-mlflow-server.sh"
    base = {"PATH": os.environ["PATH"], "MLFLOW_BIN": "echo", "MLFLOW_BACKEND_STORE_URI": "postgresql://u:p@db/mlflow",
            "MLFLOW_ARTIFACTS_DESTINATION": "/srv/artifacts"}
    proc = subprocess.run(["bash", str(script)], env={**base, **env}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_mlflow_server_script_binds_loopback_and_serves_artifacts():
    args = _server_args()
    assert args[:3] == ["server", "--backend-store-uri", "postgresql://u:p@db/mlflow"]
    assert "--serve-artifacts" in args and args[args.index("--artifacts-destination") + 1] == "/srv/artifacts"
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "5000"
    assert "--app-name" not in args and "--allowed-hosts" not in args


def test_mlflow_server_script_security_options():
    args = _server_args(MLFLOW_AUTH_CONFIG_PATH=str(PLATFORM / "mlflow-auth.ini"),
                        MLFLOW_ALLOWED_HOSTS="mlflow.example.com", MLFLOW_CORS_ALLOWED_ORIGINS="https://nb.example.com")
    assert args[args.index("--app-name") + 1] == "basic-auth"
    assert args[args.index("--allowed-hosts") + 1] == "mlflow.example.com"
    assert args[args.index("--cors-allowed-origins") + 1] == "https://nb.example.com"


def test_mlflow_server_script_refuses_without_a_backend():
    proc = subprocess.run(["bash", str(PLATFORM / "start-mlflow-server.sh")],
                          env={"PATH": os.environ["PATH"], "MLFLOW_BIN": "echo"}, capture_output=True, text=True)
    assert proc.returncode != 0 and "MLFLOW_BACKEND_STORE_URI" in proc.stderr


def test_mlflow_auth_ini_has_what_the_basic_auth_app_reads():
    # mlflow.server.auth.config.read_auth_config reads [mlflow] default_permission and database_uri (required),
    # admin_username/admin_password and authorization_function. (Importing it needs `mlflow[auth]`: Flask-WTF.)
    import configparser

    parser = configparser.ConfigParser()
    parser.read(PLATFORM / "mlflow-auth.ini")
    section = parser["mlflow"]
    assert section["default_permission"] in {"READ", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert section["database_uri"].startswith("postgresql+psycopg2://") and section["admin_username"]
    assert "admin_password" not in section  # no password in git
    assert section["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"


def test_ray_cluster_yaml_is_a_valid_ray_up_config():
    import yaml

    util = pytest.importorskip("ray.autoscaler._private.util")
    config = yaml.safe_load((PLATFORM / "ray-cluster.yaml").read_text())
    util.validate_config(util.prepare_config(config))
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert all("RAY_AUTH_MODE=token" in " ".join(config[k])
               for k in ("head_start_ray_commands", "worker_start_ray_commands"))


def test_postgres_extra_brings_the_mlflow_basic_auth_app():
    # `mlflow server --app-name basic-auth` refuses to start without Flask-WTF (mlflow[auth]); the bootstrap
    # installs the postgres extra, so the team server and tests/test_mlflow_auth.py have it.
    import importlib.util

    extra = re.search(r"^postgres = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert extra and '"mlflow[auth]' in extra.group(1), extra
    assert importlib.util.find_spec("flask_wtf") is not None, "pip install -e '.[postgres]' (mlflow[auth])"
