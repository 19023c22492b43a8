"""The serving engine behind `sweep serve`: one base model, many adapters, micro-batched mixed-adapter forwards.

Requests are queued one example at a time (batcher.py); a worker thread takes whatever arrived within
`max_wait_ms` (up to `max_batch` examples) and runs ONE forward pass for all of them, passing PEFT's per-sample
`adapter_names` when the batch mixes adapters. Rows are grouped by adapter first, so that
multi.grouped_mixed_batches (sweeps/trial/adapters) works on slices instead of PEFT's gather/scatter copies.

Adapters are addressed by a served name; each name maps to an internal PEFT adapter name that changes on every
reload, so swapping in a new registry version loads it beside the old one and flips the mapping under the model
lock: requests queued during a reload are answered by whichever version is current when their batch runs.
No web framework here (that is http_app.py; forward.py runs a batch), so the engine is tested and benchmarked
without HTTP.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sweeps.production import sources
from sweeps.production.serving import forward
from sweeps.production.serving.batcher import Batcher, Job
from sweeps.spec import ModelSpec
from sweeps.spec.params import TrialParams
from sweeps.trial.adapters import multi
from sweeps.trial.models import pretrained

log = logging.getLogger(__name__)


class ServeError(Exception):
    """A request the server refuses, with the HTTP status that says why (the server keeps serving)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Slot:
    found: sources.Located
    internal: str  # the PEFT adapter name currently holding this served name's weights
    loaded_at: float = field(default_factory=time.time)


@dataclass
class Limits:
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_length: int = 256  # tokens per classified text (longer texts are truncated, as in training)
    max_chars: int = 20_000  # per text or prompt: beyond this a request is refused (413)
    max_items: int = 64  # texts per /predict request
    max_new_tokens: int = 256


def _hash_base(path) -> tuple[str | None, str | None]:
    """(content hash, None), or (None, why) when the base's files cannot be read to hash them."""
    try:
        return pretrained.content_hash(path), None
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _internal(name: str, n: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', name)}__{n}"  # PEFT adapter names become module keys: no dots


class Engine:
    def __init__(self, refs: list[tuple[str | None, str]], base: str | None = None, device: str = "cpu",
                 limits: Limits | None = None, tracker=None, allow_unverified_base: bool = False):
        self.limits, self.device, self.tracker = limits or Limits(), device, tracker
        self.allow_unverified_base, self.warnings = allow_unverified_base, []
        self._tmp = tempfile.TemporaryDirectory(prefix="sweeps-serve-")
        self._lock, self._reloading, self._count = threading.Lock(), threading.Lock(), 0
        self.stats = {"batches": 0, "mixed_batches": 0, "examples": 0, "reloads": 0}
        found = [self._locate(ref, name) for name, ref in refs]
        if not found:
            raise sources.SourceError("serve needs at least one --adapter")
        tasks = {f.task for f in found}
        if len(tasks) > 1:
            raise sources.SourceError(f"adapters of several tasks ({', '.join(sorted(tasks))}): one base model "
                                      "serves one task; start one server per task")
        self.task = tasks.pop()
        self.base_spec = base or found[0].base
        if not self.base_spec:
            raise sources.SourceError("cannot tell the base model from the adapter: pass --base")
        self.base_path = pretrained.resolve_base(ModelSpec(base=self.base_spec))
        self.base_sha256, self._hash_error = _hash_base(self.base_path)
        self.tokenizer = pretrained.load_tokenizer(self.base_path)
        self.model = self._load_base(found)
        self.slots: dict[str, Slot] = {}
        for f in found:
            self._check(f)
            if f.name in self.slots:
                raise sources.SourceError(f"two adapters are served as {f.name!r}: name them, e.g. NAME=REF")
            self._attach(f)
        self._batcher = Batcher(self._run, self.limits.max_batch, self.limits.max_wait_ms)
        self._stop = threading.Event()

    # ------------------------------------------------------------ loading

    def _locate(self, ref: str, name: str | None) -> sources.Located:
        # A Tracker opens (and may create) the MLflow store: only registry references need one.
        tracker = None if sources.is_directory(ref) else self._tracker()
        found = sources.locate(ref, Path(self._tmp.name), tracker)
        if name:
            found.name = name
        return found

    def _tracker(self):
        from sweeps.tracking.tracker import Tracker

        self.tracker = self.tracker or Tracker()
        return self.tracker

    def _load_base(self, found: list[sources.Located]) -> torch.nn.Module:
        num_labels = None
        if self.task == "classification":
            counts = {len(f.labels or []) or f.config.get("num_labels", 0) for f in found}
            poolings = {f.pooling for f in found}
            if len(counts) != 1 or 0 in counts or len(poolings) != 1:
                raise sources.SourceError("classification adapters served together need labels.json with the same "
                                          "number of labels and the same pooling (each has its own head)")
            num_labels = counts.pop()
        params = TrialParams(pooling=found[0].pooling if self.task == "classification" else "mean")
        model = pretrained.load_base(self.base_path, self.task, num_labels, params, self.device)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def _check(self, found: sources.Located) -> None:
        if found.task != self.task:
            raise sources.SourceError(f"adapter {found.ref} is a {found.task} adapter; this server serves "
                                      f"{self.task} adapters")
        warning = sources.check_unverified(found, self.base_spec, self.base_sha256, self.allow_unverified_base,
                                           self._hash_error)
        if warning:
            log.warning("%s", warning)
            self.warnings.append(warning)
        elif found.base_sha256 != self.base_sha256:
            raise sources.SourceError(
                f"adapter {found.ref} was trained on base {found.base} (sha256 {str(found.base_sha256)[:12]}), "
                f"the served base {self.base_spec} has sha256 {self.base_sha256[:12]}: refusing it")

    def _attach(self, found: sources.Located) -> Slot:
        """Load the adapter under a fresh internal name (the caller holds the lock once serving has begun)."""
        self._count += 1
        internal = _internal(found.name, self._count)
        self.model = multi.attach(self.model, found.path, internal)
        multi.grouped_mixed_batches(self.model)  # again per adapter: a new one may wrap new layers
        self.slots[found.name] = slot = Slot(found, internal)
        return slot

    def reload(self, name: str, force: bool = False) -> dict:
        """Re-resolve a served adapter's reference; load and swap it in when the version moved (or `force`)."""
        with self._reloading:  # the poller and POST /reload may race: one swap at a time
            return self._reload(self._slot(name), name, force)

    def _reload(self, slot: Slot, name: str, force: bool) -> dict:
        old = slot.found
        started = time.perf_counter()
        if not force and old.version is not None and sources.current_version(old.ref, self._tracker()) == \
                old.version:
            return {"adapter": name, "changed": False, "version": old.version, "seconds": 0.0}
        found = self._locate(old.ref, name)
        self._check(found)
        if self.task == "classification" and (len(found.labels or []), found.pooling) != \
                (len(old.labels or []), old.pooling):
            raise sources.SourceError(f"{found.ref} has other labels or pooling than the served {name!r}")
        with self._lock:
            new = self._attach(found)
            multi.remove(self.model, slot.internal, keep_active=new.internal)
        self.stats["reloads"] += 1
        return {"adapter": name, "changed": True, "version": new.found.version, "previous": old.version,
                "seconds": time.perf_counter() - started}

    def poll(self, every_s: float) -> None:
        """Reload adapters whose registry alias moved, every `every_s` seconds, in a background thread."""
        def loop() -> None:
            while not self._stop.wait(every_s):
                for name in list(self.slots):
                    try:
                        self.reload(name)
                    except Exception as exc:  # a broken new version must not stop the old one serving
                        log.warning("alias poll for %s: %s", name, exc)

        self._poller = threading.Thread(target=loop, name="sweeps-alias-poll", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        self._batcher.close()
        self._tmp.cleanup()

    def __enter__(self) -> Engine:  # `with Engine(...) as engine:` closes it however the block ends
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ requests

    def _slot(self, name: str) -> Slot:
        if name not in self.slots:
            raise ServeError(404, f"unknown adapter {name!r}; served: {', '.join(sorted(self.slots))}")
        return self.slots[name]

    def _expect(self, name: str, task: str, endpoint: str) -> None:
        self._slot(name)
        if self.task != task:
            other = "/generate" if self.task == "instruction" else "/predict"
            raise ServeError(400, f"adapter {name!r} is a {self.task} adapter: {endpoint} serves {task} adapters, "
                             f"use {other}")

    def _too_long(self, text: str, what: str) -> None:
        if len(text) > self.limits.max_chars:
            raise ServeError(413, f"{what} has {len(text)} characters; the limit is {self.limits.max_chars}")

    def submit_predict(self, name: str, texts: list[str]) -> list[Future]:
        self._expect(name, "classification", "/predict")
        if not texts or len(texts) > self.limits.max_items:
            raise ServeError(413 if texts else 422, f"send 1 to {self.limits.max_items} texts, got {len(texts)}")
        for i, text in enumerate(texts):
            self._too_long(text, f"text {i}")
        return [self._batcher.submit(Job("predict", name, {"text": t})) for t in texts]

    def submit_generate(self, name: str, prompt: str, max_new_tokens: int | None = None,
                        system: str | None = None) -> Future:
        self._expect(name, "instruction", "/generate")
        self._too_long(prompt, "prompt")
        chat = self.slots[name].found.chat
        wanted = max_new_tokens or int(chat.get("max_new_tokens", 64))
        if wanted > self.limits.max_new_tokens:
            raise ServeError(413, f"max_new_tokens {wanted} is over the server's limit {self.limits.max_new_tokens}")
        ids = self.render(prompt, system if system is not None else chat.get("system_prompt"))
        if len(ids) > self.limits.max_length:
            raise ServeError(413, f"prompt is {len(ids)} tokens; the limit is {self.limits.max_length}")
        return self._batcher.submit(Job("generate", name, {"ids": ids, "max_new_tokens": wanted}))

    def render(self, prompt: str, system: str | None) -> list[int]:
        return sources.render_prompt(self.tokenizer, prompt, system)

    # ------------------------------------------------------------ one batch (on the batcher's thread)

    def _run(self, batch: list[Job]) -> list[dict]:
        with self._lock, torch.inference_mode():  # reloads take the lock too: never mid-forward
            # Rows grouped by adapter: multi.grouped_mixed_batches then works on slices, not copies.
            order = sorted(range(len(batch)), key=lambda i: self.slots[batch[i].name].internal)
            jobs = [batch[i] for i in order]
            names = [self.slots[j.name].internal for j in jobs]
            done = (self._classify if jobs[0].kind == "predict" else self._generate)(jobs, names)
        self.stats["batches"] += 1
        self.stats["mixed_batches"] += len(set(names)) > 1
        self.stats["examples"] += len(batch)
        results: list[dict] = [{}] * len(batch)
        for position, result in zip(order, done, strict=True):
            results[position] = result
        return results

    def _classify(self, batch: list[Job], names: list[str]) -> list[dict]:
        probs = forward.class_probabilities(self.model, self.tokenizer, [j.payload["text"] for j in batch], names,
                                            self.limits.max_length, self.device)
        out = []
        for job, row in zip(batch, probs, strict=True):
            found = self.slots[job.name].found
            labels = found.labels or [f"LABEL_{i}" for i in range(len(row))]
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"adapter": job.name, "version": found.version, "label": labels[best],
                        "scores": dict(zip(labels, row, strict=True))})
        return out

    def _generate(self, batch: list[Job], names: list[str]) -> list[dict]:
        rows = forward.greedy(self.model, self.tokenizer, [j.payload["ids"] for j in batch],
                              [j.payload["max_new_tokens"] for j in batch], names, self.device)
        return [{"adapter": job.name, "version": self.slots[job.name].found.version,
                 "text": self.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens,
                 "finish_reason": "stop" if stopped else "length"} for job, (tokens, stopped) in zip(batch, rows,
                                                                                                   strict=True)]

    def describe(self) -> list[dict]:
        return [{**s.found.describe(), "internal": s.internal, "loaded_at": s.loaded_at}
                for s in self.slots.values()]
