"""`sweep` command line (typer + rich). Heavy libraries are imported inside commands so `--help` stays fast.

common.py holds the app and what every command shares; one module per command group registers its commands on it,
in the order `sweep --help` lists them: spec_commands.py (validate, schema, trial), sweep_commands.py (run, pareto,
promote, ls, show), production_commands.py (serve, export, fuse). live.py and tables.py are what `sweep run`,
`sweep ls`, `sweep show` and `sweep pareto` print.
"""

import importlib

from sweeps.cli.common import app, main

for _group in ("spec_commands", "sweep_commands", "production_commands"):  # `sweep --help` keeps this order
    importlib.import_module(f"{__name__}.{_group}")

__all__ = ["app", "main"]
