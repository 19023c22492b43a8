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
    size = ""
    if spec.search.sampler == "grid":  # sweeps.search imports optuna (~0.4 s): only a grid needs it here
        from sweeps.driver.study.study import grid_size

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
    spec = _load(spec_file, _parse_sets(set_))
    from sweeps import store
    from sweeps.trial.loop import TrialFailed, run_trial

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
    promote: Annotated[str | None, typer.Option(help="Promote at the end with this policy, e.g. 1se")] = None,
    name: Annotated[str | None, typer.Option(help="Registered model name for --promote (default: sweep name)")] = None,
    live: Annotated[bool, typer.Option(help="Live table of trials (off when not a terminal)")] = True,
) -> None:
    """Run (or resume) a sweep: Optuna proposes, Ray Tune runs, MLflow records every trial."""
    spec = _load(spec_file)
    from sweeps.driver.runner import run_sweep
    from sweeps.progress import LiveView
    from sweeps.store import SweepBusy

    view = LiveView(spec, console, enabled=live and console.is_terminal)
    try:
        with view:
            outcome = run_sweep(spec, spec_file.read_text(encoding="utf-8"), address, listener=view.update,
                                on_coordinator=view.attach)
    except _input_errors() as exc:
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


def _input_errors() -> tuple[type[Exception], ...]:
    """Problems with the user's data, model or targets: reported in one line, exit 2, nothing created."""
    from sweeps.bundled import BundledNotFound
    from sweeps.trial.adapters.lora import TargetError
    from sweeps.trial.data.labelled import DataError

    return DataError, TargetError, BundledNotFound


def _print_front(sweep: str, plot: bool = True) -> None:
    from sweeps.driver.promotion.promote import PromotionError, pareto_report
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
    console.print("tolerances (values closer than these tie): " + "; ".join(report.tolerances), highlight=False)


@app.command()
def pareto(sweep: Annotated[str, typer.Argument(help="Sweep name")]) -> None:
    """Print the Pareto front of a sweep and log a plot PNG to its parent run."""
    _print_front(sweep)


def _promote(sweep: str, policy: str, name: str, aliases: list[str] | None = None) -> None:
    from sweeps.driver.promotion.promote import PromotionError, promote_sweep

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
    from sweeps.views import sweeps_table

    console.print(sweeps_table())


@app.command()
def show(sweep: Annotated[str, typer.Argument(help="Sweep name")]) -> None:
    """List a sweep's trials: state, parameters, metrics, failure reasons."""
    from sweeps.driver.promotion.promote import PromotionError
    from sweeps.views import trials_table

    try:
        console.print(trials_table(sweep))
    except (PromotionError, ValueError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None


# ---------------------------------------------------------------- adapters in production: serve, export, fuse


def _named_refs(values: list[str]) -> list[tuple[str | None, str]]:
    """`NAME=REF` or `REF` (served as the registry name, or the directory's name)."""
    import re

    out = []
    for value in values:
        name, sep, ref = value.partition("=")
        if sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) and not Path(value).exists():
            out.append((name, ref))
        else:
            out.append((None, value))
    return out


AdapterRefs = Annotated[list[str], typer.Option(
    "--adapter", help="Registry reference (reviews@champion, models:/reviews/3) or adapter directory; "
    "NAME=REF serves it under NAME. Repeat for more adapters.")]


@app.command()
def serve(
    adapter: AdapterRefs,
    base: Annotated[str | None, typer.Option(help="Base model (default: the one the first adapter was trained "
                                             "on); adapters trained on another base are refused")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback needs a token "
                                      "($SWEEPS_SERVE_TOKEN or --token-file)")] = "127.0.0.1",
    token_file: Annotated[Path | None, typer.Option(help="File holding the bearer token clients must send "
                                                    "(else $SWEEPS_SERVE_TOKEN; /health stays open)")] = None,
    allow_unverified_base: Annotated[bool, typer.Option(help="Serve adapters whose base cannot be checked "
                                                        "(no recorded base hash): at your own risk")] = False,
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    poll: Annotated[float, typer.Option(help="Check registry aliases every N seconds and swap in moved "
                                        "versions (0: only POST /adapters/NAME/reload)")] = 0.0,
    max_batch: Annotated[int, typer.Option(help="Examples per forward pass (mixed adapters)")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="How long the batcher waits to fill a batch")] = 5.0,
    max_length: Annotated[int, typer.Option(help="Tokens per text (classification) or prompt")] = 256,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default). On a shared machine 1 is "
                                         "often faster: threads of one op wait for each other")] = 0,
) -> None:
    """Serve one base model with many adapters over HTTP: /predict, /generate, /adapters, /health."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    from sweeps.production.serving.engine import Engine, Limits
    from sweeps.production.serving.http import ServeConfigError, load_token, require_token, run
    from sweeps.production.sources import SourceError

    try:
        token = load_token(token_file)
        require_token(host, token)  # before loading any model: refused in a second, not after a minute
        engine = Engine(_named_refs(adapter), base, device,
                        Limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_length=max_length),
                        allow_unverified_base=allow_unverified_base)
    except (ServeConfigError, SourceError, FileNotFoundError, *_input_errors()) as exc:
        err.print(f"[bold red]cannot serve:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if poll > 0:
        engine.poll(poll)
    for row in engine.describe():
        console.print(f"adapter [bold]{row['name']}[/] <- {row['ref']} (version {row['version'] or '-'}, "
                      f"{row['task']})")
    for warning in engine.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"base {engine.base_spec}; serving on http://{host}:{port} "
                  f"({'bearer token required' if token else 'no token: loopback only'}; Ctrl-C stops)")
    try:
        run(engine, host, port, token=token)
    finally:
        engine.close()


@app.command("export")
def export_cmd(
    ref: Annotated[str, typer.Argument(help="Registry reference (helpdesk@champion) or adapter directory")],
    out: Annotated[Path, typer.Option(help="New directory for the merged model")],
    merge: Annotated[bool, typer.Option(help="Fold the adapter into the base weights (required)")] = False,
    gguf: Annotated[bool, typer.Option(help="Also write <name>.gguf for llama.cpp (Llama-family LMs)")] = False,
    gguf_type: Annotated[str, typer.Option(help="GGUF weight type: f32, f16, bf16 or q8_0")] = "f16",
    base_quantization: Annotated[str | None, typer.Option(
        help="How the base was quantized in training (none, int8, nf4, fp4); default: the registry tag")] = None,
    allow_unverified_base: Annotated[bool, typer.Option(help="Merge even when the adapter's base cannot be "
                                                        "checked (no recorded base hash): at your own risk")] = False,
) -> None:
    """Merge an adapter into its base: standalone safetensors + tokenizer (+ GGUF)."""
    if not merge:
        err.print("[red]export writes merged models: pass --merge[/]")
        raise typer.Exit(2)
    from sweeps.production.export.merge import ExportError, export
    from sweeps.production.sources import SourceError

    try:
        summary = export(ref, out, gguf, gguf_type, base_quantization, allow_unverified_base=allow_unverified_base)
    except (ExportError, SourceError, FileNotFoundError, *_input_errors()) as exc:
        err.print(f"[bold red]cannot export:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"merged {ref} (task {summary['task']}, base {summary['base']}, base quantization "
                  f"{summary['base_quantization']}) -> {out}")
    if gguf:
        console.print(f"gguf: {summary['gguf']['gguf']} ({summary['gguf']['dtype']}, tokenizer "
                      f"{summary['gguf']['tokenizer']})")


@app.command()
def fuse(
    adapter: AdapterRefs,
    data: Annotated[Path, typer.Option(help="Validation rows mixing the domains: .jsonl/.csv with prompt, "
                                       "response and optional domain")],
    name: Annotated[str, typer.Option(help="Fusion name: the MLflow experiment of its candidate trials")],
    methods: Annotated[str, typer.Option(help="Comma-separated PEFT combinations to search: linear, cat, ties, "
                                         "dare_linear, dare_ties, magnitude_prune, svd, ties_svd, ...")]
    = "linear,cat,ties,dare_ties",
    trials: Annotated[int, typer.Option(help="Candidates to try (Optuna TPE)")] = 12,
    seed: Annotated[int, typer.Option(help="Sampler and DARE seed")] = 13,
    promote: Annotated[str | None, typer.Option(help="Register the best candidate under this model name")] = None,
    test: Annotated[Path | None, typer.Option(help="Held-out rows scored once for the promoted version")] = None,
    allow_unverified_base: Annotated[bool, typer.Option(help="Fuse adapters whose base cannot be checked (no "
                                                        "recorded base hash); the result stays unverified")] = False,
) -> None:
    """Fuse registered adapters (PEFT weighted combination), weights and density searched with Optuna."""
    from sweeps.production import fusion as fusing
    from sweeps.production.sources import SourceError
    from sweeps.tracking.tracker import Tracker

    try:
        store_name = _safe(name)
        tracker = Tracker()
        fusion = fusing.Fusion([ref for _, ref in _named_refs(adapter)], fusing.read_rows(data), tracker=tracker,
                               allow_unverified_base=allow_unverified_base)
        for warning in fusion.warnings:
            err.print(f"[yellow]warning:[/] {warning}", highlight=False)
        result = fusing.search(fusion, store_name, methods.split(","), trials, seed, tracker)
    except (fusing.FusionError, SourceError, FileNotFoundError, ValueError) as exc:
        err.print(f"[bold red]cannot fuse:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    for key, value in result["baselines"].items():
        console.print(f"  {key} = {value:.4f}")
    console.print(f"best of {trials}: trial {result['trial_number']} loss {result['loss']:.4f} "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in result["params"].items()))
    if promote:
        version = fusing.promote(fusion, result, promote, tracker, fusing.read_rows(test) if test else None)
        console.print(f"registered models:/{promote}/{version} (alias champion)")
    fusion.close()


def _safe(name: str) -> str:
    from sweeps.store import safe_name

    return safe_name(name, "fusion name")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
