"""What one Ray worker does for one trial, free of ray and mlflow so it runs the same in `sweep trial`.

Failures the trial understands (NaN loss, over the memory limit) come back as a FAILED result with a reason;
only a crash of the process itself reaches Ray as an error (and may be retried there).
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable
from typing import Any

from sweeps import store
from sweeps.spec import SweepSpec
from sweeps.spec.params import TrialParams


def release_memory() -> None:
    """Give freed heap pages back to the OS so this process's next measured peak starts from a clean base.

    Ray reuses one worker process for many trials; glibc otherwise keeps freed pages mapped and a trial would
    reuse them without its resident memory growing. The base model the worker keeps for its next trial
    (sweeps/trial/memory/reuse.py) stays; it is charged to each trial that uses it.
    """
    from sweeps.trial.memory.meter import trim

    trim()


def run_one(spec_dict: dict, number: int, params_dict: dict[str, Any], report: Callable[[dict], None],
            threads: int | None = None) -> dict[str, Any]:
    """Trial `number` of the sweep `spec_dict` with the parameters the driver built for it (`TrialParams`, dumped:
    the merge of the spec's fixed params with the sampled point happened once, in the driver)."""
    import torch

    from sweeps.trial.loop import run_trial
    from sweeps.trial.train import TrialFailed, TrialInfeasible

    if threads:
        torch.set_num_threads(threads)
    release_memory()
    spec = SweepSpec.model_validate(spec_dict)
    params = TrialParams.model_validate(params_dict)
    out_dir = store.trial_dir(spec.name, number)
    started = time.time()
    try:
        result = run_trial(spec, params, out_dir, report=report)
    except TrialInfeasible as exc:
        return {"state": "FAILED", "reason": f"infeasible: {exc.reason}", "infeasible": True,
                "wall_seconds": time.time() - started}
    except TrialFailed as exc:
        return {"state": "FAILED", "reason": exc.reason, "wall_seconds": time.time() - started}
    except Exception as exc:
        # Deterministic failures of this configuration end the trial here, with the reason. Raised on, they
        # reached Ray as a worker crash: retried budget.max_retries times (the same allocation failing again),
        # then FAILED as "worker failed" and not marked infeasible (tests/faults, OOM and store full).
        if _out_of_memory(exc):
            return {"state": "FAILED", "reason": f"infeasible: out of memory: {str(exc).strip()[:300]}",
                    "infeasible": True, "wall_seconds": time.time() - started}
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return {"state": "FAILED", "reason": f"store full while writing the trial's files: {exc}",
                    "wall_seconds": time.time() - started}
        raise
    tables = None
    if result.tables:
        tables = out_dir / "tables"
        tables.mkdir(parents=True, exist_ok=True)
        for name, table in result.tables.items():
            (tables / name).write_text(json.dumps(table), encoding="utf-8")
    return {**result.metrics, "state": "COMPLETE", "adapter_dir": str(result.adapter_dir),
            "wall_seconds": time.time() - started, "tables_dir": str(tables) if tables else None,
            **{f"info.{k}": v for k, v in result.info.items() if isinstance(v, (str, int, float, bool))}}


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; torch's CPU allocator a RuntimeError; Python a MemoryError."""
    text = str(exc).lower()
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)))
