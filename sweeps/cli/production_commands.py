"""`sweep serve`, `sweep export`, `sweep fuse`: adapters in production."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sweeps.cli.common import app, console, err, fmt, input_errors

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
    from sweeps.production.serving.http_app import ServeConfigError, load_token, require_token, run
    from sweeps.production.sources import SourceError

    try:
        token = load_token(token_file)
        require_token(host, token)  # before loading any model: refused in a second, not after a minute
        engine = Engine(_named_refs(adapter), base, device,
                        Limits(max_batch=max_batch, max_wait_ms=max_wait_ms, max_length=max_length),
                        allow_unverified_base=allow_unverified_base)
    except (ServeConfigError, SourceError, FileNotFoundError, *input_errors()) as exc:
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
    except (ExportError, SourceError, FileNotFoundError, *input_errors()) as exc:
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
                  + ", ".join(f"{k}={fmt(v)}" for k, v in result["params"].items()))
    if promote:
        version = fusing.promote(fusion, result, promote, tracker, fusing.read_rows(test) if test else None)
        console.print(f"registered models:/{promote}/{version} (alias champion)")
    fusion.close()


def _safe(name: str) -> str:
    from sweeps.store import safe_name

    return safe_name(name, "fusion name")


