"""Shared set-up of the fault scenarios: tiny assets, a spec, a store, and `sweep` subprocesses to break.

Each `sweep` runs in its own session (start_new_session) so that whatever it started -- Ray's GCS, raylet and
workers -- can be stopped as a group after it exits or is killed: a SIGKILLed driver cannot stop them itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _tiny import tiny_bert, toy_reviews  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SWEEP = Path(sys.executable).parent / "sweep"
KILLED = -signal.SIGKILL  # Popen's return code of a process killed by SIGKILL


def assets(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {"model": tiny_bert(root / "tiny-bert"), "train": toy_reviews(root / "train.csv", n=60, seed=1),
            "test": toy_reviews(root / "test.csv", n=30, seed=2)}


def write_spec(path: Path, name: str, files: dict[str, Path], *, space: str = "{rank: [2, 4, 8]}",
               params: dict | None = None, trials: int = 4, concurrency: int = 2, retries: int = 1,
               sampler: str = "random", epochs: int = 1) -> Path:
    fixed = json.dumps({"epochs": epochs, "batch_size": 8, "learning_rate": 1e-2, "bf16": "off", **(params or {})})
    path.write_text(f"""# Run: sweep run {path.name}
name: {name}
task: classification
seed: 3
model: {{base: {files['model']}}}
data: {{source: {files['train']}, test: {files['test']}, validation_fraction: 0.3, max_length: 16}}
params: {fixed}
search: {{sampler: {sampler}, space: {space}}}
objectives:
  - {{metric: macro_f1, direction: maximize}}
  - {{metric: peak_memory_mb, direction: minimize}}
  - {{metric: trainable_params, direction: minimize}}
budget: {{trials: {trials}, concurrency: {concurrency}, cpus_per_trial: 1, max_retries: {retries}}}
""")
    return path


def env_for(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (
        "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SWEEPS_STUDY_STORAGE", "SWEEPS_RAY_ADDRESS", "SWEEPS_FAULT")}
    env.update(SWEEPS_STORE=str(root / "store"), SWEEPS_CACHE=str(root / "cache"),
               SWEEPS_FAULT_DIR=str(root / "faults"), COLUMNS="200", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def start(env: dict, *args: str, fault: str | None = None) -> subprocess.Popen:
    env = {**env, **({"SWEEPS_FAULT": fault} if fault else {})}
    return subprocess.Popen([str(SWEEP), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def sweep(env: dict, *args: str, fault: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return finish(start(env, *args, fault=fault), timeout)


def stop_group(pgid: int) -> None:
    """SIGKILL what is left of a `sweep` session (Ray's processes outlive a killed driver for a while)."""
    for _ in range(50):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:  # only zombies left in the group
            return
        time.sleep(0.1)


def fired(env: dict) -> list[dict]:
    """The faults that fired in a scenario (sweeps.faults writes one JSON line per fired fault)."""
    log = Path(env["SWEEPS_FAULT_DIR"]) / "fired.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
