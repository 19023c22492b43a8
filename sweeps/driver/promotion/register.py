"""Registering a trial's adapter as a version of a registered model, with aliases and lineage tags.

This module never imports mlflow: every registry call goes through `sweeps.tracking.tracker.Tracker`. A model
version's source is an MLflow pyfunc model (sweeps/tracking/pyfunc.py) holding the trial's adapter, so
`mlflow.pyfunc.load_model` and `mlflow models serve` work on it; `sweep serve` and `sweep export` read the trial
run's `adapter` artifact (PEFT safetensors + manifest.json) directly, which versions made before the pyfunc models
have too. The version's description is its model card (card.py).
"""

from __future__ import annotations

from sweeps import faults
from sweeps.driver.promotion import card
from sweeps.store import safe_name
from sweeps.tracking.refs import check_aliases
from sweeps.tracking.tracker import Tracker


def promote(tracker: Tracker, name: str, run_id: str, aliases: list[str], lineage: dict[str, str],
            test_metrics: dict[str, float] | None = None) -> tuple[str, bool]:
    """Register a trial's adapter as a version of `name`, point `aliases` at it; return (version, created).

    Idempotent per (name, run): promoting the same trial again reuses its version (the registry would happily
    make a duplicate) and only re-points the aliases, so re-running `sweep promote` is safe.
    `lineage` holds the caller's provenance tags (sweep, trial number, base model and its content hash,
    quantization, "val.<metric>"); test metrics are added as "test.<metric>", kept apart from the validation
    metrics that chose the trial.
    """
    safe_name(name, "model name")
    check_aliases(aliases)  # before any write: a bad alias must not leave a version without its aliases
    test_tags = {f"test.{k}": repr(float(v)) for k, v in (test_metrics or {}).items()}
    version = tracker.find_version(name, run_id)
    created = version is None
    if created:
        tags = {**{k: str(v) for k, v in lineage.items()}, **test_tags}
        faults.point("registry.create", name=name)
        mine = tracker.create_version(name, run_id, tags, card.describe(lineage, run_id))
        # find-then-create is not atomic: two `sweep promote` of one run both found nothing and both created a
        # version (tests/faults/test_driver_faults.py). Settle on the lowest; a racer that lost deletes its own.
        version = tracker.settle_version(name, run_id, mine)
        created = version == mine
        faults.point("registry.created", name=name)  # a version without its aliases yet
    elif test_tags:  # the test split was evaluated after the first promotion: record it on the same version
        tracker.set_version_tags(name, version, test_tags)
    if created or test_tags:  # the model card, now that the version number and the test figures are known
        tracker.describe_version(name, version, card.model_card(name, version, lineage, run_id, test_metrics or {},
                                                           tracker.run_datasets(run_id)))
    for alias in aliases:
        tracker.set_alias(name, alias, version)
    return version, created
