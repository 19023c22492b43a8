"""Sweep spec: YAML -> validated, frozen pydantic objects.

Every error carries its field path, the bad value and what is allowed, and `load_spec` reports all of them at
once (pydantic collects per-field errors; the cross-field checks in `_semantic_issues` collect their own).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sweeps.params import CLASSIFICATION_METRICS, INSTRUCTION_METRICS, TrialParams
from sweeps.select import parse_tolerance

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(BaseModel):
    model_config = _FROZEN
    base: str = Field(
        description="Base model: `bundled:all-minilm-l6-v2`, `bundled:smollm2-135m-instruct`, a local directory, "
        "or a hub id (needs network at run time)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `base` is a hub id.")
    trust_remote_code: Literal[False] = Field(
        False, description="Always false: this platform never runs code shipped with a model."
    )


class DataSpec(BaseModel):
    model_config = _FROZEN
    source: str = Field(
        description="Training data: `bundled:drug-reviews`, a .csv/.tsv/.jsonl/.json/.parquet file, or a hub "
        "dataset id."
    )
    test: str | None = Field(
        None,
        description="Held-out test data: a file, or a split name of `source`. Never used for selection. "
        "Default: the source's `test` split when it has one.",
    )
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str = Field("label", description="Column holding the class label (classification).")
    validation_fraction: float = Field(
        0.2, gt=0.0, lt=0.9, description="Fraction of train carved out (stratified, seeded) for selection."
    )
    folds: int | None = Field(
        None, ge=2, le=20,
        description="Classification: k-fold cross-validation over the training data instead of one carved-out "
        "validation split (the usual answer to tiny validation splits). Each trial trains K times, each fold's "
        "rows are scored by the model that did not see them, and the trial's metrics (with bootstrap SEs) are "
        "over all training rows; the saved adapter is then refitted on all of them. K+1 trainings per trial; "
        "the test split is never touched. validation_fraction is ignored.",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per example; longer inputs are truncated.")
    truncation: Literal["head", "head_tail"] = Field(
        "head_tail",
        description="How a text longer than max_length is cut: keep its head, or its first quarter and last three "
        "quarters (head_tail: reviews and tickets tend to end with their verdict).",
    )
    labels: list[str] | None = Field(
        None, description="Explicit label order; default: sorted distinct labels of the training data."
    )
    other_labels: Literal["error", "drop"] = Field(
        "error",
        description="Classification, with data.labels: what a row whose label is not listed does. `error` stops "
        "with the unlisted labels named; `drop` leaves the row out of train and test (counted in the dropped "
        "rows), e.g. to keep the commonest classes of a many-class column.",
    )
    # --- instruction task
    messages_column: str = Field(
        "messages", description="Instruction: column holding the chat, a list of {role, content} messages."
    )
    prompt_column: str | None = Field(
        None, description="Instruction: build the chat from this request column instead (with response_column)."
    )
    response_column: str | None = Field(None, description="Instruction: the answer column paired with prompt_column.")
    system_prompt: str | None = Field(
        None, description="Instruction: system message put before every chat (training, evaluation, serving)."
    )
    category_column: str | None = Field(
        "category", description="Instruction: the routing category of each example (stratifies the validation "
        "carve; scored by routing_accuracy). null: none."
    )
    category_pattern: str = Field(
        r"Category:\s*([A-Za-z0-9_-]+)",
        description="Instruction: regex whose first group extracts the category from a generated answer.",
    )
    generation_examples: int = Field(
        6, ge=0, le=100, description="Instruction: held-out requests whose generations before and after tuning are "
        "logged to each trial's MLflow run as a table."
    )
    max_new_tokens: int = Field(96, ge=1, le=4096, description="Instruction: tokens generated for those examples.")

    @field_validator("category_pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if groups < 1:
            raise ValueError("needs a capture group around the category, e.g. 'Category: (\\S+)'")
        return value


class IntAxis(BaseModel):
    model_config = _FROZEN
    type: Literal["int"] = "int"
    low: int = Field(description="Smallest value (inclusive).")
    high: int = Field(description="Largest value (inclusive).")
    step: int = Field(1, ge=1, description="Step between values (ignored when log is true).")
    log: bool = Field(False, description="Sample on a log scale.")


class FloatAxis(BaseModel):
    model_config = _FROZEN
    type: Literal["float"] = "float"
    low: float = Field(description="Smallest value (inclusive).")
    high: float = Field(description="Largest value (inclusive).")
    step: float | None = Field(None, gt=0, description="Optional discretisation step.")
    log: bool = Field(False, description="Sample on a log scale.")


class CategoricalAxis(BaseModel):
    model_config = _FROZEN
    type: Literal["categorical"] = "categorical"
    choices: list[str | bool | int | float | None] = Field(min_length=1, description="Values to choose from.")


Axis = Annotated[IntAxis | FloatAxis | CategoricalAxis, Field(discriminator="type")]
ParamName = Literal[tuple(TrialParams.model_fields)]  # type: ignore[valid-type]


class EarlyStopping(BaseModel):
    model_config = _FROZEN
    rungs: list[int] = Field(
        [1], description="Epochs after which a trial is compared with the trials that reached the same epoch."
    )
    min_trials: int = Field(
        3, ge=2, description="A rung stops nobody until this many trials have reported at it."
    )


class SearchSpec(BaseModel):
    model_config = _FROZEN
    sampler: Literal["auto", "gp", "tpe", "nsga2", "random", "grid"] = Field(
        "auto", description="Optuna sampler. auto: gp for budgets up to 32 trials, tpe above (measured by replaying "
        "samplers on a full grid, BENCHMARKS.md); gp: Gaussian process with expected hypervolume improvement, half "
        "the budget (4-10 trials) drawn at random first; tpe: multivariate TPE with a constant liar.")
    space: dict[ParamName, Axis] = Field(  # type: ignore[valid-type]
        min_length=1,
        description="The axes to vary, by trial-parameter name; each an int, float or categorical axis."
    )
    early_stopping: EarlyStopping | None = Field(
        None, description="Multi-objective successive halving: stop a trial dominated at a rung. Off if absent."
    )

    @field_validator("space", mode="before")
    @classmethod
    def _lists_are_categorical(cls, value: Any) -> Any:
        # Shorthand `rank: [4, 8, 16]` means a categorical axis.
        if isinstance(value, dict):
            return {k: {"type": "categorical", "choices": v} if isinstance(v, list) else v for k, v in value.items()}
        return value


class Objective(BaseModel):
    model_config = _FROZEN
    metric: str = Field(description="A metric the trial reports, e.g. macro_f1, peak_memory_mb, trainable_params.")
    direction: Literal["maximize", "minimize"] = Field(description="Whether larger or smaller is better.")
    tolerance: float | str | None = Field(
        None,
        description="Differences this small are noise, not dominance (Pareto front, hypervolume, early stopping, "
        "policies): an absolute number >= 0 in the metric's units (e.g. 0.02 for macro_f1), or a percentage of "
        "each trial's own value (e.g. '5%'). Unset: one standard error where trials report `<metric>_se` (e.g. "
        "macro_f1_se); 5% for peak_memory_mb / peak_memory_bytes; otherwise 0 (exact).",
    )

    @field_validator("tolerance", mode="before")
    @classmethod
    def _tolerance(cls, value: Any) -> Any:
        parsed = parse_tolerance(value)  # ValueError -> a pydantic error at objectives[i].tolerance
        if parsed is None or parsed[0] == "abs":
            return None if parsed is None else parsed[1]
        return f"{parsed[1] * 100:g}%"


class Budget(BaseModel):
    model_config = _FROZEN
    trials: int = Field(12, ge=1, le=100_000, description="Trials in the sweep, counting those already finished.")
    concurrency: int = Field(2, ge=1, le=1024, description="Trials running at once.")
    time_limit_s: float | None = Field(None, gt=0, description="Stop proposing new trials after this many seconds.")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPU cores reserved by each trial (Ray resources).")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs (or a fraction) reserved by each trial.")
    max_retries: int = Field(1, ge=0, le=10, description="Times a trial whose worker died is restarted.")


class InfraSpec(BaseModel):
    model_config = _FROZEN
    ray_address: str | None = Field(
        None, description="Ray cluster to join (`auto`, `host:port`); default: an embedded local Ray."
    )
    study_storage: str | None = Field(
        None, description="SQLAlchemy URL of the Optuna study; default sqlite:///<store>/optuna.db."
    )
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<store>/mlflow.db.")


class SweepSpec(BaseModel):
    model_config = _FROZEN
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Sweep name: letters, digits, _.-")
    description: str = Field("", description="Free text shown in `sweep ls` and on the MLflow parent run.")
    task: Literal["classification", "instruction"] = Field("classification", description="What the adapter learns.")
    seed: int = Field(0, ge=0, description="Seeds data splits, sampler and training.")
    model: ModelSpec
    data: DataSpec
    params: TrialParams = Field(
        default_factory=TrialParams, description="Fixed trial parameters; axes in search.space override them."
    )
    search: SearchSpec
    objectives: list[Objective] = Field(min_length=1, description="Metrics to optimise, each with a direction.")
    budget: Budget = Field(default_factory=Budget)
    infra: InfraSpec = Field(default_factory=InfraSpec)

    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def tolerances(self) -> list[float | str | None]:
        """The stated `objectives[i].tolerance`, in objective order (None: resolved per trial by
        sweeps.select.tolerance_matrix)."""
        return [o.tolerance for o in self.objectives]


# ---------------------------------------------------------------- loading


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
