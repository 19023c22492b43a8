"""`sweep run`, `sweep pareto`, `sweep promote`, `sweep ls`, `sweep show`: a sweep, its front and its promotion."""

from __future__ import annotations

from typing import Annotated

import typer

from sweeps.cli.common import SpecFile, app, console, err, input_errors, load


@app.command()
def run(
    spec_file: SpecFile,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (default: spec, then local)")] = None,
    promote: Annotated[str | None, typer.Option(help="Promote at the end with this policy, e.g. 1se")] = None,
    name: Annotated[str | None, typer.Option(help="Registered model name for --promote (default: sweep name)")] = None,
    live: Annotated[bool, typer.Option(help="Live table of trials (off when not a terminal)")] = True,
) -> None:
    """Run (or resume) a sweep: Optuna proposes, Ray Tune runs, MLflow records every trial."""
    spec = load(spec_file)
    from sweeps.cli.live import LiveView
    from sweeps.driver.runner import run_sweep
    from sweeps.store import SweepBusy

    view = LiveView(spec, console, enabled=live and console.is_terminal)
    if spec.task == "classification":  # the linear probe runs the frozen base over every row: minutes on a CPU
        console.print(f"{spec.name}: checking inputs; baselines (majority class, linear probe on the frozen "
                      f"{spec.model.base}) are computed once per base and data, then cached", highlight=False)
    try:
        with view:
            outcome = run_sweep(spec, spec_file.read_text(encoding="utf-8"), address, listener=view.update,
                                on_coordinator=view.attach)
    except input_errors() as exc:
        err.print(f"[bold red]cannot run {spec.name}:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except SweepBusy as exc:  # a second driver on a SQLite study: refused before it touches the stores
        err.print(f"[bold red]cannot run {spec.name}:[/] {exc}", highlight=False)
        raise typer.Exit(3) from None
    for note in outcome.reconciled:
        console.print(f"[yellow]reconciled[/] {note}")
    if outcome.stopped:  # e.g. the heartbeat kept failing: no new trials were proposed
        err.print(f"[yellow]stopped proposing:[/] {outcome.stopped}", highlight=False)
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


def _print_front(sweep: str, plot: bool = True) -> None:
    from sweeps.cli.tables import front_table
    from sweeps.driver.promotion.front import PromotionError, pareto_report

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
    console.print("tolerances (values closer than these tie): " + "; ".join(report.tolerances), highlight=False)


@app.command()
def pareto(sweep: Annotated[str, typer.Argument(help="Sweep name")]) -> None:
    """Print the Pareto front of a sweep and log a plot PNG to its parent run."""
    _print_front(sweep)


def _promote(sweep: str, policy: str, name: str, aliases: list[str] | None = None) -> None:
    from sweeps.driver.promotion.front import PromotionError
    from sweeps.driver.promotion.promote import promote_sweep

    try:
        outcome = promote_sweep(sweep, policy, name, extra_aliases=aliases or [])
    except (PromotionError, ValueError) as exc:
        err.print(f"[bold red]cannot promote:[/] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # an MlflowException from an auth-enabled server (its code, without importing mlflow)
        code = getattr(exc, "error_code", None)
        if code not in _REFUSED:
            raise
        err.print(f"[bold red]cannot promote into {name!r}:[/] the tracking server refused ({code}): "
                  f"{_REFUSED[code]}\n{str(exc).splitlines()[0] if str(exc) else ''}")
        raise typer.Exit(2) from None
    console.print(outcome.summary())


_REFUSED = {
    "PERMISSION_DENIED": "your MLflow user lacks permission on this registered model or the sweep's experiment; "
                         "ask its owner for EDIT (create versions) or MANAGE (move aliases), or promote under "
                         "another --name.",
    "UNAUTHENTICATED": "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for "
                       "this server.",
}


@app.command("promote")
def promote_cmd(
    sweep: Annotated[str, typer.Argument(help="Sweep name")],
    policy: Annotated[str, typer.Option(help="1se (default: the cheapest trial within one standard error of the "
                                        "best) | 1se:<metric> | knee | max:<metric> | min:<metric> | "
                                        "weights:m=w,... ; constraints after ';' e.g. "
                                        "'max:macro_f1;peak_memory_mb<=300'")] = "1se",
    name: Annotated[str | None, typer.Option(help="Registered model name (default: the sweep name)")] = None,
    alias: Annotated[list[str], typer.Option(help="Extra alias for the version (champion is always set)")] = [],  # noqa: B006
) -> None:
    """Register the chosen trial's adapter in the MLflow Model Registry, evaluated once on the test split."""
    _promote(sweep, policy, name or sweep, alias)


@app.command("ls")
def ls() -> None:
    """List sweeps in the tracking store."""
    from sweeps.cli.tables import sweeps_table

    console.print(sweeps_table())


@app.command()
def show(sweep: Annotated[str, typer.Argument(help="Sweep name")]) -> None:
    """List a sweep's trials: state, parameters, metrics, failure reasons."""
    from sweeps.cli.tables import trials_table
    from sweeps.driver.promotion.front import PromotionError

    try:
        console.print(trials_table(sweep))
    except (PromotionError, ValueError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None

