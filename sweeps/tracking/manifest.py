"""Adapter manifests: sha256 of every file, written before upload and verified after download.

Kept free of mlflow so serving and export can check an adapter directory without a tracking client.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sweeps.digest import file_sha256

MANIFEST = "manifest.json"
# Weights as safetensors, config/tokenizer as json/txt/md/model; pickles (.bin/.pt/.pkl) run code when loaded.
_ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".md", ".model"}


def _adapter_files(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():  # a link could pull a file from outside the adapter dir into the artifact store
            raise ValueError(f"refusing symlink {rel} in adapter dir {root}")
        if path.is_file() and rel != MANIFEST:
            if path.suffix.lower() not in _ALLOWED_SUFFIXES:
                raise ValueError(f"refusing {rel} in adapter dir {root}: only "
                                 f"{', '.join(sorted(_ALLOWED_SUFFIXES))} files are uploaded (no pickles)")
            out[rel] = path
    return out


def write_manifest(adapter_dir: Path) -> str:
    """Write manifest.json beside the adapter files; return the manifest's own sha256."""
    files = {rel: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
             for rel, p in _adapter_files(adapter_dir).items()}
    if not files:
        raise ValueError(f"adapter dir {adapter_dir} holds no files")
    body = json.dumps({"algorithm": "sha256", "files": files}, indent=2, sort_keys=True).encode()
    (adapter_dir / MANIFEST).write_bytes(body)
    return hashlib.sha256(body).hexdigest()


def verify_tree(root: Path, manifest_sha256: str | None = None) -> None:
    """Raise ValueError naming the first file that differs from manifest.json or is missing from it."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"{MANIFEST} missing from adapter {root}")
    body = manifest.read_bytes()
    if manifest_sha256 and hashlib.sha256(body).hexdigest() != manifest_sha256:
        raise ValueError(f"{MANIFEST}: sha256 differs from the run's sweeps.adapter_sha256 tag")
    listed = json.loads(body)["files"]
    on_disk = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file() and p != manifest}
    for rel in sorted(set(on_disk) - set(listed)):
        raise ValueError(f"{rel}: not listed in {MANIFEST}")
    for rel, entry in sorted(listed.items()):
        path = on_disk.get(rel)  # looked up, never joined: a crafted "../x" entry cannot read outside root
        if path is None:
            raise ValueError(f"{rel}: listed in {MANIFEST} but missing")
        if path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            raise ValueError(f"{rel}: sha256 mismatch (file changed since upload)")
