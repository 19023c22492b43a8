"""References to registered model versions, and MLflow's rules for aliases.

Accepted everywhere (`sweep serve --adapter`, `sweep export`, `sweep fuse`):
    reviews@champion    models:/reviews@champion    reviews/3    models:/reviews/3
"""

from __future__ import annotations

import re

from sweeps.store import safe_name

_PREFIX = "models:/"
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")  # MLflow's alias rule: alphanumerics, '_' and '-'
_RESERVED = re.compile(r"^(latest|[vV]\d+)$")  # MLflow reserves these: they would shadow version lookups


def parse_ref(ref: str) -> tuple[str, str]:
    """`name@alias` or `name/version`, optionally prefixed with models:/ -> (name, alias-or-version).

    The name is checked with safe_name because serve and export turn it into a local directory name.
    """
    rest = ref[len(_PREFIX):] if ref.startswith(_PREFIX) else ref
    if "@" in rest:
        name, _, target = rest.partition("@")
        if not _ALIAS.match(target):
            raise ValueError(f"bad alias {target!r} in {ref!r}: use letters, digits, '_' or '-'")
    elif "/" in rest:
        name, _, target = rest.rpartition("/")
        if not target.isdigit() or int(target) < 1:
            raise ValueError(f"bad version {target!r} in {ref!r}: expected a positive integer")
    else:
        raise ValueError(f"model reference {ref!r} needs an alias or a version: name@alias or name/version")
    return safe_name(name, "model name"), target


def check_aliases(aliases: list[str]) -> None:
    for alias in aliases:
        if not _ALIAS.match(alias) or _RESERVED.match(alias):
            raise ValueError(f"bad alias {alias!r}: letters, digits, '_' or '-', not 'latest' or 'v<N>'")



def resolve(tracker, ref: str) -> dict:
    """version_info (name, version, run_id, source, tags, aliases) for a reference."""
    name, target = parse_ref(ref)
    return tracker.version_info(name, target)
