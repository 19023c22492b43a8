"""The one function Ray ships to its workers: run one trial there and report it back through Ray Tune.

It imports the trial side (sweeps.trial.worker) only when it runs, on the worker: the driver never loads torch for
it. The trial code never sees ray; it gets a `report(metrics)` callable.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ray
from ray import tune

from sweeps import faults, store


def trainable(config: dict[str, Any]) -> None:
    """Runs on a Ray worker: one trial, reported back through ray.tune.report (the trial code never sees ray)."""
    os.environ["SWEEPS_STORE"] = config["store"]
    threads = max(1, int(config["cpus"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from sweeps.trial.worker import run_one  # heavy imports (torch, transformers) only in the worker

    def report(metrics: dict[str, Any]) -> None:
        faults.point("worker.epoch", trial=config["trial_number"], epoch=metrics.get("epoch"))  # mid-training
        tune.report({**metrics, "phase": "epoch"})

    final = run_one(config["spec"], config["trial_number"], config["trial_params"], report, threads)
    # Which Ray node ran the trial: a string, so the coordinator's numeric-only metrics skip it; also written next
    # to the adapter (<store>/trials/<sweep>/trial-NNNN/node.json) where an operator or a test can read it.
    node_id = ray.get_runtime_context().get_node_id()
    _write_node(config["spec"]["name"], config["trial_number"], node_id)
    tune.report({**final, "info.node_id": node_id, "phase": "final"})


def _write_node(sweep: str, number: int, node_id: str) -> None:
    try:
        (store.trial_dir(sweep, number) / "node.json").write_text(
            json.dumps({"node_id": node_id, "hostname": os.uname().nodename, "pid": os.getpid()}))
    except OSError:  # a node without the shared store keeps its trial; only the record is lost
        pass
