"""`sweep` command line (typer + rich). Heavy libraries are imported inside commands so `--help` stays fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
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


def _load(path: Path, overrides: dict | None = None):
    from sweeps.spec import SpecError, load_spec

    try:
        return load_spec(path, overrides)
    except SpecError as exc:
        err.print(f"[bold red]invalid spec[/] {exc.source}: {len(exc.issues)} problem(s)")
        for issue in exc.issues:
            err.print(Text("  - ", style="red") + Text(str(issue)), highlight=False)
        raise typer.Exit(2) from None


def _parse_sets(values: list[str]) -> dict:
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


@app.command()
def validate(spec_file: SpecFile) -> None:
    """Check a sweep YAML: every problem with its field path; exit 2 if any. Creates nothing."""
    spec = _load(spec_file)
    from sweeps.search import grid_size

    size = f", grid of {grid_size(spec)} points" if spec.search.sampler == "grid" else ""
    console.print(f"[green]ok[/] {spec_file}: sweep [bold]{spec.name}[/] ({spec.task}), {spec.budget.trials} trials, "
                  f"{len(spec.search.space)} axes{size}, objectives "
                  + ", ".join(f"{o.metric} ({o.direction[:3]})" for o in spec.objectives))


@app.command()
def schema() -> None:
    """Print the JSON schema of sweep YAMLs (for editor completion and checks)."""
    from sweeps.spec import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command()
def trial(
    spec_file: SpecFile,
    set_: Annotated[list[str], typer.Option("--set", help="Override a trial parameter, e.g. --set rank=16")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option(help="Where to write the adapter (default: the store)")] = None,
) -> None:
    """Run ONE trial in this process (no Ray, no MLflow) and print its metrics."""
    spec = _load(spec_file, _parse_sets(set_))
    from sweeps import store
    from sweeps.trial import TrialFailed, run_trial

    out_dir = out or store.store_dir() / "trials" / spec.name / "manual"
    console.print(f"trial of [bold]{spec.name}[/]: " + ", ".join(f"{k}={v}" for k, v in spec.params.flat().items()
                                                                  if k in _SHOWN))

    def report(m: dict) -> None:
        console.print(f"  epoch {m.get('epoch')}: " + "  ".join(f"{k}={_fmt(m[k])}" for k in _EPOCH_KEYS if k in m))

    try:
        result = run_trial(spec, spec.params, out_dir, report=report)
    except _input_errors() as exc:
        err.print(f"[bold red]cannot run the trial:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except TrialFailed as exc:
        err.print(f"[bold red]trial failed:[/] {exc.reason}")
        raise typer.Exit(1) from None
    table = Table(title=f"trial {spec.name}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, _fmt(value))
    for key, value in result.info.items():
        table.add_row(f"[dim]{key}[/]", str(value))
    console.print(table)
    console.print(f"adapter: {result.adapter_dir}")


_SHOWN = {"method", "rank", "effective_alpha", "target", "layers", "quantization", "learning_rate", "epochs"}
_EPOCH_KEYS = ("train_loss", "loss", "accuracy", "macro_f1", "peak_memory_mb")


def _fmt(value) -> str:
    from sweeps.progress import fmt

    return fmt(value)


@app.command()
def run(
    spec_file: SpecFile,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (default: spec, then local)")] = None,
    promote: Annotated[str | None, typer.Option(help="Promote at the end with this policy, e.g. knee")] = None,
    name: Annotated[str | None, typer.Option(help="Registered model name for --promote (default: sweep name)")] = None,
    live: Annotated[bool, typer.Option(help="Live table of trials (off when not a terminal)")] = True,
) -> None:
    """Run (or resume) a sweep: Optuna proposes, Ray Tune runs, MLflow records every trial."""
    spec = _load(spec_file)
    from sweeps.progress import LiveView
    from sweeps.runner import run_sweep

    view = LiveView(spec, console, enabled=live and console.is_terminal)
    try:
        with view:
            outcome = run_sweep(spec, spec_file.read_text(encoding="utf-8"), address, listener=view.update,
                                on_coordinator=view.attach)
    except _input_errors() as exc:
        err.print(f"[bold red]cannot run {spec.name}:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    for note in outcome.reconciled:
        console.print(f"[yellow]reconciled[/] {note}")
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(outcome.counts.items()))
    console.print(f"sweep [bold]{spec.name}[/]: ran {outcome.ran} trial(s) in {outcome.wall_seconds:.0f} s; "
                  f"study holds {counts or 'no trials'}")
    _print_front(spec.name)
    if outcome.interrupted:
        err.print(f"[yellow]stopped early:[/] {outcome.interrupted} interrupted trial(s) are queued again; run "
                  f"`sweep run {spec_file}` to continue the sweep")
        raise typer.Exit(130)
    if promote:
        _promote(spec.name, promote, name or spec.name)


def _input_errors() -> tuple[type[Exception], ...]:
    """Problems with the user's data, model or targets: reported in one line, exit 2, nothing created."""
    from sweeps.adapters import TargetError
    from sweeps.bundled import BundledNotFound
    from sweeps.data import DataError

    return DataError, TargetError, BundledNotFound


def _print_front(sweep: str, plot: bool = True) -> None:
    from sweeps.results import PromotionError, pareto_report
    from sweeps.views import front_table

    try:
        report = pareto_report(sweep, plot=plot)
    except (PromotionError, ValueError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    if report is None:
        console.print("no completed trials yet")
        return
    console.print(front_table(report))
    console.print(f"hypervolume {report.hypervolume:.4g} (normalised {report.normalized_hypervolume:.3f}); "
                  f"plot: {report.plot_path}")


@app.command()
def pareto(sweep: Annotated[str, typer.Argument(help="Sweep name")]) -> None:
    """Print the Pareto front of a sweep and log a plot PNG to its parent run."""
    _print_front(sweep)


def _promote(sweep: str, policy: str, name: str, aliases: list[str] | None = None) -> None:
    from sweeps.results import PromotionError, promote_sweep

    try:
        outcome = promote_sweep(sweep, policy, name, extra_aliases=aliases or [])
    except (PromotionError, ValueError) as exc:
        err.print(f"[bold red]cannot promote:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(outcome.summary())


@app.command("promote")
def promote_cmd(
    sweep: Annotated[str, typer.Argument(help="Sweep name")],
    policy: Annotated[str, typer.Option(help="knee | max:<metric> | min:<metric> | weights:m=w,... ; constraints "
                                        "after ';' e.g. 'max:macro_f1;peak_memory_mb<=300'")] = "knee",
    name: Annotated[str | None, typer.Option(help="Registered model name (default: the sweep name)")] = None,
    alias: Annotated[list[str], typer.Option(help="Extra alias for the version (champion is always set)")] = [],  # noqa: B006
) -> None:
    """Register the chosen trial's adapter in the MLflow Model Registry, evaluated once on the test split."""
    _promote(sweep, policy, name or sweep, alias)


@app.command("ls")
def ls() -> None:
    """List sweeps in the tracking store."""
    from sweeps.views import sweeps_table

    console.print(sweeps_table())


@app.command()
def show(sweep: Annotated[str, typer.Argument(help="Sweep name")]) -> None:
    """List a sweep's trials: state, parameters, metrics, failure reasons."""
    from sweeps.results import PromotionError
    from sweeps.views import trials_table

    try:
        console.print(trials_table(sweep))
    except (PromotionError, ValueError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
