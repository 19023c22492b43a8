"""`sweep validate`, `sweep schema`, `sweep trial`: check a sweep YAML, export its schema, run one trial here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sweeps.cli.common import SpecFile, app, console, err, fmt, input_errors, load, parse_sets


@app.command()
def validate(spec_file: SpecFile) -> None:
    """Check a sweep YAML: every problem with its field path; exit 2 if any. Creates nothing."""
    spec = load(spec_file)
    size = ""
    if spec.search.sampler == "grid":  # sweeps.driver.study imports optuna (~0.4 s): only a grid needs it here
        from sweeps.driver.study.space import grid_size

        size = f", grid of {grid_size(spec)} points"
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
    spec = load(spec_file, parse_sets(set_))
    from sweeps import store
    from sweeps.trial.loop import run_trial
    from sweeps.trial.train import TrialFailed

    out_dir = out or store.store_dir() / "trials" / spec.name / "manual"
    console.print(f"trial of [bold]{spec.name}[/]: " + ", ".join(f"{k}={v}" for k, v in spec.params.flat().items()
                                                                  if k in _SHOWN))

    def report(m: dict) -> None:
        console.print(f"  epoch {m.get('epoch')}: " + "  ".join(f"{k}={fmt(m[k])}" for k in _EPOCH_KEYS if k in m))

    try:
        result = run_trial(spec, spec.params, out_dir, report=report)
    except input_errors() as exc:
        err.print(f"[bold red]cannot run the trial:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except TrialFailed as exc:
        err.print(f"[bold red]trial failed:[/] {exc.reason}")
        raise typer.Exit(1) from None
    table = Table(title=f"trial {spec.name}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, fmt(value))
    for key, value in result.info.items():
        table.add_row(f"[dim]{key}[/]", str(value))
    console.print(table)
    console.print(f"adapter: {result.adapter_dir}")


_SHOWN = {"method", "rank", "effective_alpha", "target", "layers", "quantization", "learning_rate", "epochs"}
_EPOCH_KEYS = ("train_loss", "loss", "accuracy", "macro_f1", "peak_memory_mb")

