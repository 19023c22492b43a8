"""Promotion of a trial's adapter into the MLflow Model Registry, with aliases and lineage tags.

This module never imports mlflow: every registry call goes through `sweeps.track.Tracker`, so the whole MLflow
surface stays in one file. A model version's source is the trial run's `adapter` artifact directory (PEFT
safetensors + manifest.json), not an MLmodel: serving and export load it with PEFT, never with mlflow.pyfunc.

References accepted everywhere (`sweep serve --adapter`, `sweep export`):
    reviews@champion    models:/reviews@champion    reviews/3    models:/reviews/3
"""

from __future__ import annotations

import re

from sweeps import faults
from sweeps.store import safe_name
from sweeps.track import Tracker

_PREFIX = "models:/"
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")  # MLflow's alias rule: alphanumerics, '_' and '-'
_RESERVED = re.compile(r"^(latest|[vV]\d+)$")  # MLflow reserves these: they would shadow version lookups


def parse_ref(ref: str) -> tuple[str, str]:
    """`name@alias` or `name/version`, optionally prefixed with models:/ -> (name, alias-or-version).

    The name is checked with safe_name because serve and export turn it into a local directory name.
    """
    rest = ref[len(_PREFIX):] if ref.startswith(_PREFIX) else ref
    if "@" in rest:
        name, _, target = rest.partition("@")
        if not _ALIAS.match(target):
            raise ValueError(f"bad alias {target!r} in {ref!r}: use letters, digits, '_' or '-'")
    elif "/" in rest:
        name, _, target = rest.rpartition("/")
        if not target.isdigit() or int(target) < 1:
            raise ValueError(f"bad version {target!r} in {ref!r}: expected a positive integer")
    else:
        raise ValueError(f"model reference {ref!r} needs an alias or a version: name@alias or name/version")
    return safe_name(name, "model name"), target


def _check_aliases(aliases: list[str]) -> None:
    for alias in aliases:
        if not _ALIAS.match(alias) or _RESERVED.match(alias):
            raise ValueError(f"bad alias {alias!r}: letters, digits, '_' or '-', not 'latest' or 'v<N>'")


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
    _check_aliases(aliases)  # before any write: a bad alias must not leave a version without its aliases
    test_tags = {f"test.{k}": repr(float(v)) for k, v in (test_metrics or {}).items()}
    version = tracker.find_version(name, run_id)
    created = version is None
    if created:
        tags = {**{k: str(v) for k, v in lineage.items()}, **test_tags}
        description = _describe(lineage, run_id)
        faults.point("registry.create", name=name)
        mine = tracker.create_version(name, run_id, tags, description)
        # find-then-create is not atomic: two `sweep promote` of one run both found nothing and both created a
        # version (tests/faults/test_driver_faults.py). Settle on the lowest; a racer that lost deletes its own.
        version = tracker.settle_version(name, run_id, mine)
        created = version == mine
        faults.point("registry.created", name=name)  # a version without its aliases yet
    elif test_tags:  # the test split was evaluated after the first promotion: record it on the same version
        tracker.set_version_tags(name, version, test_tags)
    for alias in aliases:
        tracker.set_alias(name, alias, version)
    return version, created


def _describe(lineage: dict, run_id: str) -> str:
    sweep, trial = lineage.get("sweep"), lineage.get("trial_number")
    where = f"sweep {sweep}, trial {trial}" if sweep is not None else "a sweep trial"
    return f"PEFT adapter from {where} (run {run_id}); load with PEFT from the `adapter` artifact directory."


def resolve(tracker: Tracker, ref: str) -> dict:
    """version_info (name, version, run_id, source, tags, aliases) for a reference."""
    name, target = parse_ref(ref)
    return tracker.version_info(name, target)
