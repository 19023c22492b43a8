"""Sweep spec: every YAML in search_spaces/ validates; each class of mistake is reported with its field path."""

from pathlib import Path

import pytest

from sweeps.spec import SpecError, json_schema, load_spec, parse_yaml, validate_dict
from sweeps.spec.params import TrialParams, resolve_layers

ROOT = Path(__file__).resolve().parents[1]

BASE = """
name: t
model: {base: bundled:all-minilm-l6-v2}
data: {source: bundled:drug-reviews, text_column: review, label_column: rating}
search:
  space:
    rank: [4, 8]
objectives:
  - {metric: macro_f1, direction: maximize}
"""


def _issues(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_dict(parse_yaml(text, "t.yaml"), "t.yaml")
    return [str(i) for i in info.value.issues]


def _with(extra: str) -> str:
    return BASE + extra


@pytest.fixture(scope="module")
def tickets_csv(tmp_path_factory):
    """search_spaces/ticket_routing.yaml reads data/tickets/*.csv, which scripts/make_tickets_csv.py writes."""
    import subprocess
    import sys

    where = tmp_path_factory.mktemp("cwd")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tickets_csv.py"), "--out",
                    str(where / "data" / "tickets")], check=True, capture_output=True)
    return where


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates_and_names_its_command(path, tickets_csv, monkeypatch):
    monkeypatch.chdir(tickets_csv)  # relative data paths are relative to the working directory
    spec = load_spec(path)
    assert spec.name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run: sweep run search_spaces/"), first


def test_base_is_valid():
    spec = validate_dict(parse_yaml(BASE))
    assert spec.search.space["rank"].choices == [4, 8]
    assert spec.params == TrialParams()


def test_yaml_11_exponent_floats_are_floats():
    spec = validate_dict(parse_yaml(_with("params: {learning_rate: 1e-5}\n").replace(
        "rank: [4, 8]", "learning_rate: [1e-5, 3E-4]")))
    assert spec.params.learning_rate == 1e-5
    assert spec.search.space["learning_rate"].choices == [1e-5, 3e-4]
    assert all(isinstance(c, float) for c in spec.search.space["learning_rate"].choices)


def test_bare_yaml_on_off_is_the_bf16_switch():
    assert validate_dict(parse_yaml(_with("params: {bf16: off}\n"))).params.bf16 == "off"
    assert validate_dict(parse_yaml(_with("params: {bf16: on}\n"))).params.bf16 == "on"
    with pytest.raises(SpecError, match="params.bf16"):
        validate_dict(parse_yaml(_with("params: {bf16: maybe}\n")))


def test_three_distinct_mistakes_are_all_reported_with_paths():
    text = BASE.replace("name: t", "name: t\nbudgett: {trials: 3}")
    text = text.replace("rank: [4, 8]", "rank: [4, 8]\n    rnk: [1]")
    text += "params: {rank: 0}\n"
    issues = _issues(text)
    joined = "\n".join(issues)
    assert "budgett" in joined and "params.rank" in joined and "search.space.rnk" in joined
    assert len(issues) == 3


@pytest.mark.parametrize(
    ("extra", "path", "fragment"),
    [
        ("params: {rank: 0}\n", "params.rank", "greater than or equal to 1"),
        ("params: {quantization: int4}\n", "params.quantization", "'nf4'"),
        ("params: {layers: 5-2}\n", "params.layers", "after its end"),
        ("params: {learning_rate: fast}\n", "params.learning_rate", "valid number"),
        ("budget: {trials: 0}\n", "budget.trials", "greater than or equal to 1"),
        ("unknown_key: 1\n", "unknown_key", "Extra inputs"),
    ],
)
def test_field_errors_name_path_value_and_allowed(extra, path, fragment):
    issues = _issues(_with(extra))
    assert any(i.startswith(path) and fragment in i for i in issues), issues


def test_wrong_type_of_section():
    assert any(i.startswith("budget") for i in _issues(_with("budget: 12\n")))


def test_trust_remote_code_true_is_refused():
    issues = _issues(BASE.replace("base: bundled:all-minilm-l6-v2", "base: bundled:all-minilm-l6-v2, "
                                                                    "trust_remote_code: true"))
    assert any(i.startswith("model.trust_remote_code") for i in issues), issues


def test_empty_search_space_is_refused():
    issues = _issues(BASE.replace("rank: [4, 8]", "{}").replace("  space:\n    {}", "  space: {}"))
    assert any("search.space" in i for i in issues), issues


def test_bad_choice_inside_an_axis_is_located():
    issues = _issues(BASE.replace("rank: [4, 8]", "rank: [4, 0]\n    quantization: [none, int4]"))
    assert any(i.startswith("search.space.rank.choices[1]") for i in issues), issues
    assert any(i.startswith("search.space.quantization.choices[1]") for i in issues), issues


def test_bounds_and_log_axes():
    issues = _issues(BASE.replace("rank: [4, 8]", "learning_rate: {type: float, low: 0.0, high: 0.1, log: true}\n"
                                                  "    epochs: {type: int, low: 5, high: 2}"))
    assert any("search.space.learning_rate.low" in i and "log" in i for i in issues), issues
    assert any("search.space.epochs.low" in i for i in issues), issues


def test_unknown_objective_metric_lists_the_allowed_ones():
    issues = _issues(BASE.replace("metric: macro_f1", "metric: f1"))
    assert any(i.startswith("objectives[0].metric") and "macro_f1" in i for i in issues), issues


def test_missing_data_file():
    issues = _issues(BASE.replace("source: bundled:drug-reviews", "source: ./nope/data.csv"))
    assert any(i.startswith("data.source") and "not found" in i for i in issues), issues


def test_relative_data_paths_become_absolute_for_the_workers(tmp_path, monkeypatch):
    """Ray workers do not run in the user's working directory: a relative data path that the driver found must
    reach them as an absolute one (a trial failed with "data file not found" before)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("text,label\na,x\nb,y\n")
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(BASE.replace("source: bundled:drug-reviews", "source: d/train.csv"))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(spec_file)
    assert spec.data.source == str(tmp_path.resolve() / "d" / "train.csv")
    assert load_spec(spec_file).data.source == spec.data.source  # stable: the same spec on resume
    spec_file.write_text(BASE.replace("source: bundled:drug-reviews", "source: d/missing.csv"))
    with pytest.raises(SpecError, match="d/missing.csv"):  # the error names what the user wrote
        load_spec(spec_file)


def test_yaml_syntax_error_has_a_line_number():
    with pytest.raises(SpecError) as info:
        parse_yaml("name: [unclosed\nmodel: 1\n", "x.yaml")
    assert "line" in str(info.value)


def test_duplicate_keys_are_refused():
    with pytest.raises(SpecError, match="duplicate key 'name'"):
        parse_yaml("name: a\nname: b\n")


def test_missing_file():
    with pytest.raises(SpecError, match="no such file"):
        load_spec("does/not/exist.yaml")


def test_grid_needs_discrete_axes():
    text = BASE.replace("rank: [4, 8]", "learning_rate: {type: float, low: 0.001, high: 0.01}").replace(
        "search:", "search:\n  sampler: grid")
    assert any("grid" in i for i in _issues(text))


def test_spec_is_frozen():
    spec = validate_dict(parse_yaml(BASE))
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError subclass
        spec.name = "other"


def test_schema_describes_every_field():
    schema = json_schema()
    params = schema["$defs"]["TrialParams"]["properties"]
    assert {"rank", "quantization", "target", "layers"} <= params.keys()
    assert all("description" in v for v in params.values())


def test_alpha_ratio_and_layers():
    p = TrialParams(rank=8, alpha_ratio=0.5)
    assert p.lora_alpha() == 4
    assert TrialParams(rank=8, alpha=32).lora_alpha() == 32
    assert resolve_layers("all", 6) is None
    assert resolve_layers("upper-half", 6) == [3, 4, 5]
    assert resolve_layers("1-2", 6) == [1, 2]
    with pytest.raises(ValueError, match="6 blocks"):
        resolve_layers("4-9", 6)


def test_objective_tolerance_absolute_relative_or_unset():
    text = BASE.replace("  - {metric: macro_f1, direction: maximize}",
                        "  - {metric: macro_f1, direction: maximize, tolerance: 0.02}\n"
                        "  - {metric: peak_memory_mb, direction: minimize, tolerance: ' 2.5 %'}\n"
                        "  - {metric: trainable_params, direction: minimize}\n"
                        "  - {metric: accuracy, direction: maximize, tolerance: 0}")
    spec = validate_dict(parse_yaml(text))
    assert spec.tolerances() == [0.02, "2.5%", None, 0.0]
    assert "tolerance" in json_schema()["$defs"]["Objective"]["properties"]


@pytest.mark.parametrize("bad, fragment", [(-0.01, ">= 0"), ("abc", "percentage like '5%'"), ("150%", "100%"),
                                           (".inf", "finite"), ("true", "boolean")])
def test_objective_tolerance_refused_with_its_field_path(bad, fragment):
    issues = _issues(BASE.replace("direction: maximize}", f"direction: maximize, tolerance: {bad}}}"))
    assert any(i.startswith("objectives[0].tolerance") and fragment in i for i in issues), issues
