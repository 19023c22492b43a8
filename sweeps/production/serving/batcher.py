"""A micro-batching queue: callers submit one example at a time, one worker thread runs them in batches.

The worker takes the first waiting job, then whatever else arrives within `max_wait_ms`, up to `max_batch`
jobs, and hands the list to `run(batch) -> results` (one result per job, in order). Waiting a few
milliseconds trades a little latency for much better throughput: a forward pass over 16 examples costs far less
than 16 passes over one. Jobs are plain data; the batch function decides what they mean (engine.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Job:
    kind: str  # what the batch function does with it, e.g. predict | generate
    name: str  # the served adapter it is for
    payload: dict
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, run: Callable[[list[Job]], list], max_batch: int = 16, max_wait_ms: float = 5.0):
        self._run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_ms / 1000
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="sweeps-batcher", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Future:
        self._queue.put(job)
        return job.future

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(None)  # the current batch finishes, then the worker stops
        self._worker.join(timeout=10)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # run what we have, then stop on the next get
                    break
                batch.append(nxt)
            self._answer(batch)

    def _answer(self, batch: list[Job]) -> None:
        try:
            results = self._run(batch)
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)
        except Exception as exc:  # one bad batch fails its own requests, never the worker
            log.exception("batch of %d failed", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
