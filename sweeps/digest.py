"""sha256 of files read in 1 MiB chunks: the one loop behind data fingerprints, base-model hashes and adapter
manifests (a model's safetensors run to gigabytes: never read a file whole)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def update(h, path: Path) -> None:
    """Feed the bytes of `path` to the hash object `h`."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)


def update_named(h, paths: Iterable[Path]) -> None:
    """Feed each file's name, then its bytes: a rename changes the digest, a moved folder does not."""
    for path in paths:
        h.update(Path(path).name.encode())
        update(h, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    update(h, path)
    return h.hexdigest()
