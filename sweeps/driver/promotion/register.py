"""Promotion of a trial's adapter into the MLflow Model Registry, with aliases and lineage tags.

This module never imports mlflow: every registry call goes through `sweeps.track.Tracker`. A model version's
source is an MLflow pyfunc model (sweeps.mlmodel) holding the trial's adapter, so `mlflow.pyfunc.load_model` and
`mlflow models serve` work on it; `sweep serve` and `sweep export` read the trial run's `adapter` artifact
(PEFT safetensors + manifest.json) directly, which versions made before the pyfunc models have too.

References accepted everywhere (`sweep serve --adapter`, `sweep export`):
    reviews@champion    models:/reviews@champion    reviews/3    models:/reviews/3
"""

from __future__ import annotations

import re

from sweeps import faults
from sweeps.store import safe_name
from sweeps.tracking.tracker import Tracker

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
        faults.point("registry.create", name=name)
        mine = tracker.create_version(name, run_id, tags, _describe(lineage, run_id))
        # find-then-create is not atomic: two `sweep promote` of one run both found nothing and both created a
        # version (tests/faults/test_driver_faults.py). Settle on the lowest; a racer that lost deletes its own.
        version = tracker.settle_version(name, run_id, mine)
        created = version == mine
        faults.point("registry.created", name=name)  # a version without its aliases yet
    elif test_tags:  # the test split was evaluated after the first promotion: record it on the same version
        tracker.set_version_tags(name, version, test_tags)
    if created or test_tags:  # the model card, now that the version number and the test figures are known
        tracker.describe_version(name, version, model_card(name, version, lineage, run_id, test_metrics or {},
                                                           tracker.run_datasets(run_id)))
    for alias in aliases:
        tracker.set_alias(name, alias, version)
    return version, created


def _describe(lineage: dict, run_id: str) -> str:
    sweep, trial = lineage.get("sweep"), lineage.get("trial_number")
    where = f"sweep {sweep}, trial {trial}" if sweep is not None else "a sweep trial"
    return f"PEFT adapter from {where} (run {run_id}), an MLflow pyfunc model."


def _figures(prefix: str, lineage: dict) -> str:
    return ", ".join(f"{k[len(prefix):]} {v}" for k, v in sorted(lineage.items()) if k.startswith(prefix)
                     and k[len(prefix):] in _CARD_METRICS)


_CARD_METRICS = ("accuracy", "macro_f1", "loss", "perplexity", "routing_accuracy", "peak_memory_mb",
                 "trainable_params", "validation.accuracy", "validation.macro_f1", "test.accuracy", "test.macro_f1")


def model_card(name: str, version: str, lineage: dict, run_id: str, test_metrics: dict, datasets: list[dict]) -> str:
    """The version's description (Markdown, shown on its registry page): task, base, data digests, figures,
    baselines, lineage and how to use it. Validation figures chose the trial; test figures are held out."""
    sha = str(lineage.get("base_model_sha256", ""))
    lines = [f"**{lineage.get('task', 'PEFT')} adapter** on `{lineage.get('base_model', '?')}`"
             + (f" (sha256 `{sha[:12]}`)" if len(sha) == 64 else ""),
             "", f"- lineage: {_describe(lineage, run_id)}"
             + (f" Chosen by policy `{lineage['policy']}`." if lineage.get("policy") else "")]
    if lineage.get("peft"):
        lines.append(f"- adapter: `{lineage['peft']}`, quantization `{lineage.get('quantization', '?')}`")
    if datasets:
        lines.append("- data: " + "; ".join(f"{d['name']} {d['rows']} rows, digest `{d['digest']}`"
                                            for d in datasets))
    lines.append(f"- validation (selection): {_figures('val.', lineage) or 'not recorded'}")
    held = ", ".join(f"{k} {v:.4g}" for k, v in sorted(test_metrics.items()) if k in _CARD_METRICS)
    lines.append(f"- test (held out, evaluated once): {held or 'not evaluated'}")
    baselines = sorted({k.split(".")[1] for k in lineage if k.startswith("baseline.")})
    for b in baselines:
        lines.append(f"- baseline {b}: {_figures(f'baseline.{b}.', lineage)}")
    if lineage.get("versus_baselines"):
        lines.append(f"- versus baselines: {lineage['versus_baselines']}")
    lines += ["", f"Use: `mlflow.pyfunc.load_model(\"models:/{name}/{version}\").predict(pd.DataFrame("
              '{"text": [...]}))`, ' f"`mlflow models serve -m models:/{name}/{version} --env-manager local`, "
              f"`sweep serve --adapter {name}/{version}`, `sweep export {name}/{version}`."]
    return "\n".join(lines)[:5000]  # MLflow's description limit


def resolve(tracker: Tracker, ref: str) -> dict:
    """version_info (name, version, run_id, source, tags, aliases) for a reference."""
    name, target = parse_ref(ref)
    return tracker.version_info(name, target)
