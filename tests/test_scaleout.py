"""Scale-out (issue 8): a team's platform of REAL servers, each bound to 127.0.0.1 and stopped by its fixture.

A private PostgreSQL cluster (role + databases `mlflow` and `optuna` from platform/postgres-init.sql), an MLflow
tracking server on it with artifact serving (platform/start-mlflow-server.sh), and a two-node Ray cluster
(`ray start --head` + `ray start --address`, token auth on). `sweep run --address` then runs trials on both nodes,
records them in PostgreSQL through Optuna and in MLflow through the server, and uploads adapters through it.

Needs the PostgreSQL server binaries (`apt-get install postgresql`; .ci/run installs them): without them the
module is skipped. Ray's GCS and raylets listen on the machine's address as well as loopback (Ray has no bind
option); the cluster is protected by a per-test token instead (RAY_AUTH_MODE=token).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from _tiny import tiny_bert, tiny_sweep_yaml, toy_reviews

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SWEEP, MLFLOW, RAY = BIN / "sweep", BIN / "mlflow", BIN / "ray"
OBJECTIVES = ("macro_f1", "peak_memory_mb", "trainable_params")


def _pg_bin() -> Path | None:
    """The directory of initdb/pg_ctl: PATH first, then Debian/Ubuntu's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent  # resolve: /usr/local/bin/pg_ctl may be a link into the real bin dir
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name.split(".")[0]))
    dirs = [Path(d) for d in dirs if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()]
    return dirs[-1] if dirs else None


PG_BIN = _pg_bin()
if PG_BIN is None:
    pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin: "
                "apt-get install postgresql (.ci/run does)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: as root, run its tools as the `postgres` OS user the package creates.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server started with start_new_session=True and everything it spawned (its process group)."""
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:
        children = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for child in children:  # anything that left the group (a daemon that called setsid)
        try:
            child.kill()
        except Exception:
            pass


def _wait_for(what: str, ready, proc: subprocess.Popen | None, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    text = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise AssertionError(f"{what} did not come up (exit {proc.poll() if proc else None})\n{text}")


# ------------------------------------------------------------------------------------------------ servers


@pytest.fixture(scope="module")
def postgres(request):
    """A private PostgreSQL cluster on 127.0.0.1:<free port>; yields the SQLAlchemy URLs of both databases."""
    # Not under pytest's tmp_path: its parent is mode 0700 root, which the `postgres` user cannot traverse.
    base = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    data, log, port, password = base / "data", base / "server.log", _free_port(), secrets.token_hex(12)
    # Local (unix-socket) connections by the superuser are trusted; TCP connections need a scram-sha-256 password.
    _run(_as_pg_user([PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "--encoding=UTF8"]), timeout=120)
    pg_ctl = _as_pg_user([PG_BIN / "pg_ctl", "-D", data])

    def stop():
        subprocess.run([str(c) for c in [*pg_ctl, "-w", "-t", "30", "stop", "-m", "fast"]], capture_output=True,
                       timeout=60)
        pid_file = data / "postmaster.pid"
        if pid_file.exists():  # pg_ctl failed: kill the postmaster itself
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    request.addfinalizer(stop)  # before the start: a start that times out may still leave a postmaster behind
    _run([*pg_ctl, "-l", log, "-w", "-t", "60", "-o",
          f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"], timeout=90)
    psql = PG_BIN / "psql" if (PG_BIN / "psql").exists() else shutil.which("psql")
    _run(_as_pg_user([psql, "-h", base, "-p", port, "-U", "postgres", "-d", "postgres",
                      "-v", "ON_ERROR_STOP=1", "-v", f"password={password}",
                      "-f", ROOT / "platform" / "postgres-init.sql"]))
    url = f"postgresql+psycopg2://sweeps:{password}@127.0.0.1:{port}"
    return {"mlflow": f"{url}/mlflow", "optuna": f"{url}/optuna", "port": port, "dir": base}


@pytest.fixture(scope="module")
def mlflow_server(request, postgres, tmp_path_factory):
    """`mlflow server` (platform/start-mlflow-server.sh) on the PostgreSQL `mlflow` database, serving artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log, port = root / "artifacts", root / "server.log", _free_port()
    artifacts.mkdir()
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": postgres["mlflow"],
           "MLFLOW_ARTIFACTS_DESTINATION": artifacts.as_uri(), "MLFLOW_HOST": "127.0.0.1",
           "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1", "MLFLOW_BIN": str(MLFLOW),
           "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}"}
    url = _start_mlflow_server(request, env, port, log, "mlflow server", timeout=180)
    return {"url": url, "artifacts": artifacts, "log": log}


def _start_mlflow_server(request, env: dict, port: int, log: Path, what: str, timeout: float) -> str:
    """platform/start-mlflow-server.sh in its own process group (stopped with the fixture); its URL once /health
    answers (the one route basic auth leaves open)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(ROOT / "platform" / "start-mlflow-server.sh")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    request.addfinalizer(lambda: _stop_group(proc))
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    _wait_for(what, healthy, proc, log, timeout=timeout)
    return url


@pytest.fixture(scope="module")
def ray_cluster(request, tmp_path_factory):
    """A head node and a second node, one CPU each, both on 127.0.0.1, token auth on."""
    root = Path(tempfile.mkdtemp(prefix="sweeps-ray-"))  # short: Ray's unix socket paths must fit in 107 bytes
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
              f"--object-store-memory={300 * 2**20}", f"--dashboard-agent-listen-port={_free_port()}",
              f"--metrics-export-port={_free_port()}"]
    nodes = []
    for name, args in (("head", ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={root}"]),
                       ("worker", [f"--address=127.0.0.1:{port}"])):
        log = root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(RAY), "start", *args, *common], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        nodes.append(proc)
        request.addfinalizer(lambda p=proc: _stop_group(p, grace=5.0))
        _wait_for(f"ray {name}", lambda log=log: b"block forever" in log.read_bytes(), proc, log, timeout=120)
    return {"address": f"127.0.0.1:{port}", "env": {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}}


# ------------------------------------------------------------------------------------------------ sweeps


def _spec(root: Path, name: str, trials: int, concurrency: int) -> Path:
    model = root / "tiny-bert"
    if not model.exists():
        tiny_bert(model)
        toy_reviews(root / "train.csv", n=90, seed=1)
        toy_reviews(root / "test.csv", n=45, seed=2)
    spec = root / f"{name}.yaml"
    spec.write_text(tiny_sweep_yaml(name, model, root / "train.csv", root / "test.csv", epochs=1, trials=trials,
                                    concurrency=concurrency))
    return spec


@pytest.fixture(scope="module")
def team(tmp_path_factory, postgres, mlflow_server, ray_cluster):
    root = tmp_path_factory.mktemp("team")
    env = {**os.environ, **ray_cluster["env"], "SWEEPS_STORE": str(root / "store"),
           "SWEEPS_CACHE": str(root / "cache"), "MLFLOW_TRACKING_URI": mlflow_server["url"],
           "SWEEPS_STUDY_STORAGE": postgres["optuna"]}
    env.pop("SWEEPS_RAY_ADDRESS", None)
    return {"root": root, "env": env, "address": ray_cluster["address"], "mlflow": mlflow_server}


def _state(env: dict, sweep: str, download_to: Path | None = None) -> dict:
    """Optuna's view (PostgreSQL) and MLflow's view (the server) of a sweep, read in a fresh process."""
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from sweeps import store
        from sweeps.driver.promotion.front import sweep_spec
        from sweeps.driver.study.study import Study
        from sweeps.tracking.tracker import Tracker
        tracker = Tracker()
        spec = sweep_spec(tracker, {sweep!r})
        study = Study(spec, store.study_storage())
        runs = tracker.trial_records({sweep!r})
        out = {{
          "tracking_uri": tracker.tracking_uri, "storage": store.study_storage(),
          "optuna": [{{"number": t.number, "state": t.state, "values": t.values,
                      "run": t.attrs.get("mlflow_run_id")}} for t in study.trials()],
          "mlflow": [{{"number": r.trial_number, "state": r.state, "status": r.status, "run": r.run_id,
                      "metrics": r.metrics, "adapter_sha": r.tags.get("sweeps.adapter_sha256")}} for r in runs],
          "downloaded": {{}},
        }}
        dst = {str(download_to) if download_to else None!r}
        if dst:
            for r in runs:
                if r.state == "COMPLETE":  # download_adapter checks every file against the sha256 manifest
                    local = tracker.download_adapter(r.run_id, Path(dst) / r.run_id)
                    out["downloaded"][r.run_id] = sorted(p.name for p in local.iterdir())
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sweep_cmd(team: dict, spec: Path) -> list[str]:
    return [str(SWEEP), "run", str(spec), "--no-live", "--address", team["address"]]


def _nodes(env: dict, sweep: str) -> dict[int, str]:
    """Which Ray node ran each trial: sweeps/driver/cluster/trainable.py writes
    <store>/trials/<sweep>/trial-NNNN/node.json."""
    out = {}
    for path in sorted((Path(env["SWEEPS_STORE"]) / "trials" / sweep).glob("trial-*/node.json")):
        out[int(path.parent.name.split("-")[1])] = json.loads(path.read_text())["node_id"]
    return out


def test_sweep_on_the_team_platform_records_in_postgres_and_the_mlflow_server(team, tmp_path):
    spec = _spec(team["root"], "team_tiny", trials=4, concurrency=2)
    env = team["env"]
    proc = subprocess.run(_sweep_cmd(team, spec), env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    state = _state(env, "team_tiny", download_to=tmp_path / "downloads")
    print(json.dumps({"optuna": [(t["number"], t["state"]) for t in state["optuna"]],
                      "mlflow": [(r["number"], r["state"], r["status"]) for r in state["mlflow"]],
                      "nodes": _nodes(env, "team_tiny")}))
    assert state["tracking_uri"].startswith("http://127.0.0.1:")
    assert state["storage"].startswith("postgresql+psycopg2://")
    optuna_trials, runs = state["optuna"], {r["number"]: r for r in state["mlflow"]}
    assert len(optuna_trials) == 4 and len(state["mlflow"]) == 4, state
    for t in optuna_trials:
        run = runs[t["number"]]
        assert t["state"] == "COMPLETE" and run["state"] == "COMPLETE" and run["status"] == "FINISHED", (t, run)
        assert t["run"] == run["run"]
        assert t["values"] == pytest.approx([run["metrics"][m] for m in OBJECTIVES])
        assert run["adapter_sha"]
    # adapters went through the server into its --artifacts-destination, and come back verified
    uploaded = list(team["mlflow"]["artifacts"].rglob("adapter_model.safetensors"))
    assert len(uploaded) == 4, uploaded
    assert set(state["downloaded"]) == {r["run"] for r in state["mlflow"]}
    assert all({"adapter_model.safetensors", "manifest.json"} <= set(f) for f in state["downloaded"].values())
    # both Ray nodes ran trials (one CPU each, two trials at a time)
    nodes = _nodes(env, "team_tiny")
    assert sorted(nodes) == sorted(t["number"] for t in optuna_trials), nodes
    assert len(set(nodes.values())) == 2, nodes


def test_two_drivers_on_one_study_share_it_without_duplicates(team):
    """Two `sweep run` drivers started together on one spec, one PostgreSQL study and one Ray cluster."""
    spec = _spec(team["root"], "team_two_drivers", trials=4, concurrency=1)
    env = team["env"]
    procs = [subprocess.Popen(_sweep_cmd(team, spec), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for _ in range(2)]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=400)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                _stop_group(p)
    for rc, out, err in outputs:
        assert rc == 0, f"{out[-3000:]}\n{err[-3000:]}"

    state = _state(env, "team_two_drivers")
    ran = [next((line.strip() for line in out.splitlines() if "ran " in line and "trial(s)" in line), "?")
           for _, out, _ in outputs]
    print(json.dumps({"drivers": ran, "optuna": [(t["number"], t["state"]) for t in state["optuna"]],
                      "mlflow": [(r["number"], r["state"], r["status"]) for r in state["mlflow"]]}))
    numbers = [t["number"] for t in state["optuna"]]
    assert len(numbers) == len(set(numbers)), numbers
    by_number: dict[int, list] = {}
    for r in state["mlflow"]:
        by_number.setdefault(r["number"], []).append(r)
    assert sorted(by_number) == sorted(numbers), (numbers, sorted(by_number))
    assert all(len(v) == 1 for v in by_number.values()), {k: len(v) for k, v in by_number.items()}
    for t in state["optuna"]:
        assert t["run"] in (None, by_number[t["number"]][0]["run"]), t
    # the shared budget: 4 finished trials, every one COMPLETE (no driver failed the other's live trials)
    states = {t["number"]: t["state"] for t in state["optuna"]}
    assert sorted(states.values()).count("COMPLETE") == 4 and len(states) == 4, states
