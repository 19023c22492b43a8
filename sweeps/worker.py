"""What one Ray worker does for one trial, free of ray and mlflow so it runs the same in `sweep trial`.

Failures the trial understands (NaN loss, over the memory limit) come back as a FAILED result with a reason;
only a crash of the process itself reaches Ray as an error (and may be retried there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sweeps import store
from sweeps.params import TrialParams
from sweeps.spec import SweepSpec


def trial_params(spec: SweepSpec, sampled: dict[str, Any]) -> TrialParams:
    """The spec's fixed params overridden by the sampled point, validated again as one object."""
    return TrialParams(**{**spec.params.model_dump(), **sampled})


def run_one(spec_dict: dict, number: int, sampled: dict[str, Any], report: Callable[[dict], None],
            threads: int | None = None) -> dict[str, Any]:
    import torch

    from sweeps.trial import TrialFailed, TrialInfeasible, run_trial

    if threads:
        torch.set_num_threads(threads)
    spec = SweepSpec.model_validate(spec_dict)
    out_dir = store.trial_dir(spec.name, number)
    started = time.time()
    try:
        result = run_trial(spec, trial_params(spec, sampled), out_dir, report=report)
    except TrialInfeasible as exc:
        return {"state": "FAILED", "reason": f"infeasible: {exc.reason}", "infeasible": True,
                "wall_seconds": time.time() - started}
    except TrialFailed as exc:
        return {"state": "FAILED", "reason": exc.reason, "wall_seconds": time.time() - started}
    return {**result.metrics, "state": "COMPLETE", "adapter_dir": str(result.adapter_dir),
            "wall_seconds": time.time() - started,
            **{f"info.{k}": v for k, v in result.info.items() if isinstance(v, (str, int, float, bool))}}
