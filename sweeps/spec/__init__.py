"""What a sweep is: the YAML spec as validated, frozen objects (pydantic, yaml). Shared by every side.

    from sweeps.spec import SweepSpec, load_spec

schema.py (the sections of a sweep YAML), params.py (`TrialParams`: every axis one trial can vary), load.py (YAML
-> SweepSpec, every problem with its field path), tolerance.py (the grammar of objective tolerances).
"""

from sweeps.spec.load import SpecError, SpecIssue, json_schema, load_spec, parse_yaml, validate_dict
from sweeps.spec.schema import (
    Budget,
    CategoricalAxis,
    DataSpec,
    EarlyStopping,
    FloatAxis,
    InfraSpec,
    IntAxis,
    ModelSpec,
    Objective,
    SearchSpec,
    SweepSpec,
)

__all__ = ["Budget", "CategoricalAxis", "DataSpec", "EarlyStopping", "FloatAxis", "InfraSpec", "IntAxis", "ModelSpec",
           "Objective", "SearchSpec", "SpecError", "SpecIssue", "SweepSpec", "json_schema", "load_spec", "parse_yaml",
           "validate_dict"]
