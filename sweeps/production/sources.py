"""Where a served, exported or fused adapter comes from: a registry reference or a local directory.

`locate()` turns `reviews@champion`, `models:/reviews/3` or `path/to/adapter` into a verified local directory plus
what the consumers need before loading any weights: the task, the base model it was trained on and that base's
content hash, its labels (classification) and chat settings (instruction).

Registry adapters are downloaded through `Tracker.download_adapter`, which checks every file against the sha256
manifest, so a tampered artifact never reaches PEFT. This module imports no framework itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sweeps.trial.adapters import config as adapter_config

BASE_FILE = "base.json"  # written beside adapters made by export/fuse: {"base": ..., "base_sha256": ...}


class SourceError(ValueError):
    """The reference or directory does not hold a usable adapter (message says why)."""


@dataclass
class Located:
    ref: str  # as the user wrote it
    name: str  # registry name, or the directory's name
    path: Path  # local, verified adapter directory
    task: str  # classification | instruction
    base: str | None  # what the adapter was trained on: bundled:..., a directory or a hub id
    base_sha256: str | None  # pretrained.content_hash of that base at training time, when recorded
    version: str | None = None  # registry version, None for a directory
    run_id: str | None = None
    labels: list[str] | None = None
    chat: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # adapter_config.json
    tags: dict = field(default_factory=dict)  # the registry version's tags (lineage: quantization, sweep, ...)
    base_unverified: str | None = None  # why the base cannot be checked (no usable hash recorded); None: it can

    @property
    def pooling(self) -> str:
        return adapter_config.config_pooling(self.config)

    def describe(self) -> dict:
        return {"ref": self.ref, "name": self.name, "task": self.task, "version": self.version,
                "run_id": self.run_id, "base": self.base, "base_sha256": self.base_sha256,
                "labels": self.labels, "rank": adapter_config.config_rank(self.config),
                "base_verified": self.base_unverified is None}


def is_directory(ref: str) -> bool:
    return Path(ref).expanduser().is_dir()


def read_dir(path: Path, ref: str | None = None, name: str | None = None) -> Located:
    """Describe an adapter directory (no weights loaded). Base hash: base.json, else the config's base path."""
    path = Path(path).expanduser().resolve()
    if not adapter_config.is_adapter_dir(path):
        raise SourceError(f"{path} is not a PEFT adapter: it needs {adapter_config.CONFIG} and "
                          f"{adapter_config.WEIGHTS} (only safetensors adapters are loaded)")
    config = adapter_config.read_config(path)
    task = adapter_config.config_task(config)
    if task is None:
        raise SourceError(f"{path}: task_type {config.get('task_type')!r} is not served (allowed: "
                          f"{', '.join(adapter_config.TASKS)})")
    base, base_sha, why = adapter_config.config_base(config), None, None
    if (path / BASE_FILE).is_file():
        recorded = json.loads((path / BASE_FILE).read_text(encoding="utf-8"))
        base = recorded.get("base", base)
        base_sha, why = _recorded_hash(recorded.get("base_sha256"), f"{BASE_FILE}")
    elif base and Path(base).is_dir():
        from sweeps.trial.models.pretrained import content_hash

        base_sha = content_hash(Path(base))
    else:
        why = f"no {BASE_FILE} and its base {base!r} is not a local directory to hash"
    labels = _json(path / "labels.json")
    chat = _json(path / "chat.json") or {}
    return Located(ref or str(path), name or path.name, path, task, base, base_sha, labels=labels,
                   chat=chat if isinstance(chat, dict) else {}, config=config, base_unverified=why)


def _recorded_hash(value, where: str) -> tuple[str | None, str | None]:
    """(sha256, None) for a real hash; (None, why) for a missing one or a placeholder ("unavailable (...)")."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value, None
    return None, f"{where} records base_model_sha256 {value!r}, not a hash"


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def locate(ref: str, workdir: Path, tracker=None) -> Located:
    """A directory is read in place; a registry reference is resolved and downloaded into `workdir`."""
    if is_directory(ref):
        return read_dir(Path(ref), ref)
    from sweeps.tracking import refs
    from sweeps.tracking.tracker import Tracker

    try:
        name, _ = refs.parse_ref(ref)
    except ValueError as exc:
        raise SourceError(f"{ref!r} is neither an adapter directory nor a registry reference: {exc}") from None
    tracker = tracker or Tracker()
    try:
        info = refs.resolve(tracker, ref)
    except LookupError as exc:
        raise SourceError(f"{exc} in {tracker.ui_hint()}") from None
    dst = Path(workdir) / f"{name}-v{info['version']}"
    local = tracker.download_adapter(info["run_id"], dst)
    found = read_dir(local, ref, name)
    tags = found.tags = info["tags"]
    found.version, found.run_id = info["version"], info["run_id"]
    found.base = tags.get("base_model") or found.base
    if "base_model_sha256" in tags:
        # Promotion (_base_hash, sweeps/driver/promotion/promote.py) writes "unavailable (...)" when it could not
        # hash the base. Then the directory's fallback (hashing the config's base path as it is *now*) would
        # compare a base with itself: the version is unverifiable, and consumers refuse it without
        # --allow-unverified-base.
        found.base_sha256, found.base_unverified = _recorded_hash(tags["base_model_sha256"],
                                                                  f"registry version {name}/{info['version']}")
    return found


class UnverifiedBase(SourceError):
    """The adapter's base cannot be checked against the base it would be loaded on."""


def check_unverified(found: Located, base: str | None, base_sha256: str | None, allow: bool,
                     hash_error: str | None = None) -> str | None:
    """Refuse (UnverifiedBase) an adapter whose base cannot be verified, unless `allow`: then return the warning to
    show. None when there is something to compare (the caller compares found.base_sha256 with `base_sha256`)."""
    why = found.base_unverified or (None if found.base_sha256 else "no base hash recorded")
    if base_sha256 is None:
        why = f"{why}; " if why else ""
        why += f"the hash of the base {base} cannot be computed here ({hash_error or 'unknown error'})"
    if why is None:
        return None
    message = f"adapter {found.ref} cannot be checked against the base {base}: {why}"
    if not allow:
        raise UnverifiedBase(f"{message}. Refusing it: it may have been trained on other weights. Pass "
                             "--allow-unverified-base only if you know it was trained on this base")
    return f"{message}; used anyway (--allow-unverified-base)"


def current_version(ref: str, tracker) -> str | None:
    """The registry version a reference points at now (None for directories): what alias polling compares."""
    if is_directory(ref):
        return None
    from sweeps.tracking import refs

    return refs.resolve(tracker, ref)["version"]


def write_base_file(adapter_dir: Path, base: str | None, base_sha256: str | None) -> None:
    (Path(adapter_dir) / BASE_FILE).write_text(json.dumps({"base": base, "base_sha256": base_sha256}, indent=2))


def render_prompt(tokenizer, prompt: str, system: str | None) -> list[int]:
    """Prompt token ids as the instruction task renders them: the chat template with the generation prompt."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]
