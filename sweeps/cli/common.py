"""What every `sweep` command shares: the Typer app and its store options, consoles, spec loading with every problem
listed, the input errors reported in one line, and number formatting. Command modules register on `app`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    help="Hyperparameter sweeps of parameter-efficient fine-tuning: Ray Tune x Optuna x MLflow, Pareto "
    "selection, promotion to the MLflow Model Registry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

SpecFile = Annotated[Path, typer.Argument(help="Sweep YAML, e.g. search_spaces/rank_study.yaml")]


@app.callback()
def _servers(
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI for every command (same as MLFLOW_TRACKING_URI; a spec's infra.tracking_uri "
        "wins). Default: sqlite:///<store>/mlflow.db")] = None,
    study_storage: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL of the Optuna studies (same as SWEEPS_STUDY_STORAGE; a spec's infra.study_storage "
        "wins). Default: sqlite:///<store>/optuna.db")] = None,
    store: Annotated[Path | None, typer.Option(help="Local store directory (same as SWEEPS_STORE). "
                                               "Default: ./mlruns")] = None,
) -> None:
    """Where sweeps are recorded; see platform/README.md for a team's shared servers."""
    import os

    # Environment variables, so every module that resolves a location (sweeps.store) sees the same answer.
    for name, value in (("MLFLOW_TRACKING_URI", tracking_uri), ("SWEEPS_STUDY_STORAGE", study_storage),
                        ("SWEEPS_STORE", str(store) if store else None)):
        if value:
            os.environ[name] = value


def load(path: Path, overrides: dict | None = None):
    from sweeps.spec import SpecError, load_spec

    try:
        return load_spec(path, overrides)
    except SpecError as exc:
        err.print(f"[bold red]invalid spec[/] {exc.source}: {len(exc.issues)} problem(s)")
        for issue in exc.issues:
            err.print(Text("  - ", style="red") + Text(str(issue)), highlight=False)
        raise typer.Exit(2) from None


def parse_sets(values: list[str]) -> dict:
    from sweeps.spec import parse_yaml

    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            err.print(f"[red]--set expects key=value, got {item!r}[/]")
            raise typer.Exit(2)
        # Values parse as YAML scalars, so `rank=16` is an int and `lr=1e-5` a float.
        out[key.strip()] = parse_yaml(f"v: {raw}")["v"] if raw.strip() else None
    return out


def fmt(value: Any) -> str:
    """Metrics and MLflow's stringified params alike: integers with separators, floats to 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".e") else int(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def input_errors() -> tuple[type[Exception], ...]:
    """Problems with the user's data, model or targets: reported in one line, exit 2, nothing created."""
    from sweeps.bundled import BundledNotFound
    from sweeps.trial.adapters.targeting import TargetError
    from sweeps.trial.data.reading import DataError

    return DataError, TargetError, BundledNotFound


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
