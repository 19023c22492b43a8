"""Sweep spec loading: YAML -> validated, frozen `SweepSpec` (sweeps/spec/schema.py).

Every error carries its field path, the bad value and what is allowed, and `load_spec` reports all of them at
once (pydantic collects per-field errors; the cross-field checks in `_semantic_issues` collect their own).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sweeps.spec.params import CLASSIFICATION_METRICS, INSTRUCTION_METRICS, TrialParams
from sweeps.spec.schema import CategoricalAxis, FloatAxis, SweepSpec


@dataclass(frozen=True)
class SpecIssue:
    path: str
    message: str
    value: Any = None

    def __str__(self) -> str:
        shown = "" if self.value is None else f" (got {self.value!r})"
        return f"{self.path or '<root>'}: {self.message}{shown}"


class SpecError(Exception):
    """All problems found in a spec, each with its field path."""

    def __init__(self, source: str, issues: list[SpecIssue]):
        self.source, self.issues = source, issues
        super().__init__(f"{source}: {len(issues)} problem(s)\n" + "\n".join(f"  - {i}" for i in issues))


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats (`1e-5` is a float, not the string YAML 1.1 makes of it) and no duplicate keys."""


_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a bad dict key: the key itself is the last part already
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_yaml(text: str, source: str = "<string>") -> dict:
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(source, [SpecIssue("", f"YAML syntax error: {where}{getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(raw, dict):
        raise SpecError(source, [SpecIssue("", "the file must hold a mapping of sweep fields", type(raw).__name__)])
    return raw


def _trial_param_issues(path: str, values: dict) -> list[SpecIssue]:
    try:
        TrialParams(**values)
    except ValidationError as exc:
        return [SpecIssue(path, e["msg"], e.get("input")) for e in exc.errors()]
    return []


def _semantic_issues(spec: SweepSpec) -> list[SpecIssue]:
    """Cross-field checks pydantic's per-field validation cannot express."""
    issues: list[SpecIssue] = []
    for name, axis in spec.search.space.items():
        where = f"search.space.{name}"
        if isinstance(axis, CategoricalAxis):
            for i, choice in enumerate(axis.choices):
                issues += _trial_param_issues(f"{where}.choices[{i}]", {name: choice})
            if len(set(map(repr, axis.choices))) != len(axis.choices):
                issues.append(SpecIssue(f"{where}.choices", "choices must be distinct", axis.choices))
            continue
        if axis.low > axis.high:
            issues.append(SpecIssue(f"{where}.low", f"low must be <= high ({axis.high})", axis.low))
        if axis.log and axis.low <= 0:
            issues.append(SpecIssue(f"{where}.low", "a log axis needs low > 0", axis.low))
        for bound in ("low", "high"):
            issues += _trial_param_issues(f"{where}.{bound}", {name: getattr(axis, bound)})
    if spec.search.sampler == "grid":
        for name, axis in spec.search.space.items():
            if not isinstance(axis, CategoricalAxis) and isinstance(axis, FloatAxis) and axis.step is None:
                issues.append(SpecIssue(f"search.space.{name}", "the grid sampler needs categorical or stepped axes"))
    issues += _objective_issues(spec.task, [o.model_dump() for o in spec.objectives])
    if (spec.data.prompt_column is None) != (spec.data.response_column is None):
        issues.append(SpecIssue("data.response_column" if spec.data.response_column is None else "data.prompt_column",
                                "prompt_column and response_column go together (or leave both unset to read "
                                f"chats from messages_column {spec.data.messages_column!r})"))
    if (spec.task == "instruction" and "routing_accuracy" in spec.metric_names()
            and spec.data.category_column is None):
        issues.append(SpecIssue("data.category_column", "objective routing_accuracy needs a category column"))
    if len(set(spec.metric_names())) != len(spec.objectives):
        issues.append(SpecIssue("objectives", "each metric may appear once", spec.metric_names()))
    if spec.budget.concurrency > spec.budget.trials:
        issues.append(SpecIssue("budget.concurrency", f"more than budget.trials ({spec.budget.trials})",
                                spec.budget.concurrency))
    return issues


def _objective_issues(task: Any, objectives: Any) -> list[SpecIssue]:
    """Unknown objective metrics; also run on the raw YAML when other fields failed, so all errors show at once."""
    known = INSTRUCTION_METRICS if task == "instruction" else CLASSIFICATION_METRICS
    issues = []
    for i, obj in enumerate(objectives if isinstance(objectives, list) else []):
        metric = obj.get("metric") if isinstance(obj, dict) else None
        if isinstance(metric, str) and metric not in known:
            issues.append(SpecIssue(f"objectives[{i}].metric", f"unknown metric for task {task or 'classification'}; "
                                    f"allowed: {', '.join(sorted(known))}", metric))
    return issues


def _local_file_issues(spec: SweepSpec, base_dir: Path) -> list[SpecIssue]:
    issues = []
    for field in ("source", "test"):
        value = getattr(spec.data, field)
        if value and _looks_like_path(value) and not (base_dir / value).expanduser().exists():
            issues.append(SpecIssue(f"data.{field}", "file not found", value))
    base = spec.model.base
    if _looks_like_path(base) and not (base_dir / base).expanduser().exists():
        issues.append(SpecIssue("model.base", "directory not found", base))
    return issues


def _looks_like_path(value: str) -> bool:
    if value.startswith("bundled:"):
        return False
    return value.startswith((".", "/", "~")) or Path(value).suffix.lower() in {
        ".csv", ".tsv", ".jsonl", ".json", ".parquet"}


def validate_dict(raw: dict, source: str = "<dict>", base_dir: Path | None = None) -> SweepSpec:
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        issues = [SpecIssue(_path(e["loc"]), e["msg"], _shown(e)) for e in exc.errors()]
        seen = {i.path for i in issues}
        issues += [i for i in _objective_issues(raw.get("task"), raw.get("objectives")) if i.path not in seen]
        raise SpecError(source, issues) from None
    issues = _semantic_issues(spec) + _local_file_issues(spec, base_dir or Path.cwd())
    if issues:
        raise SpecError(source, issues)
    return spec


def _shown(err: dict) -> Any:
    value = err.get("input")
    if err["type"] == "missing" or isinstance(value, dict):
        return None
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read, validate and freeze a sweep YAML; `overrides` set `params` fields (`--set rank=16`)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), [SpecIssue("", "no such file")])
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if overrides:
        raw = {**raw, "params": {**(raw.get("params") or {}), **overrides}}
    # Relative data paths are relative to the working directory, like every CLI path; made absolute here because
    # the trials run in Ray workers whose working directory is not the user's.
    return validate_dict(_absolute_paths(raw, Path.cwd()), str(path), Path.cwd())


def _absolute_paths(raw: dict, base_dir: Path) -> dict:
    """data.source, data.test and model.base that name relative local paths, made absolute against base_dir."""
    out = dict(raw)
    for section, fields in (("data", ("source", "test")), ("model", ("base",))):
        if not isinstance(out.get(section), dict):
            continue
        out[section] = dict(out[section])
        for field in fields:
            value = out[section].get(field)
            if isinstance(value, str) and _looks_like_path(value) and not Path(value).expanduser().is_absolute():
                found = (base_dir / value).expanduser()
                if found.exists():  # a missing file keeps its text, so the error names what the user wrote
                    out[section][field] = str(found.resolve())
    return out


def json_schema() -> dict:
    return SweepSpec.model_json_schema()
