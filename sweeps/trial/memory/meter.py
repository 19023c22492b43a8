"""Measured peak memory of one trial (not an estimate).

GPU: `torch.cuda.max_memory_allocated`, reset when the trial starts: exactly the tensors the trial allocated.
CPU: there is no allocator counter, so a daemon thread samples the process's *anonymous* resident memory
(`RssAnon` in /proc/self/status) every ~5 ms. Anonymous, because safetensors are memory-mapped: their file-backed
pages are page cache that the kernel can drop and other processes share, and counting them would charge a trial
for whatever the previous trial happened to read. The trial's peak is the highest sample minus the value when the
context was entered, so what the process held before (imports, earlier trials in a reused worker) is not counted.
Short spikes between two samples can be missed; 5 ms is well below one training step (~0.1-2 s).

A worker that reuses its base model across trials (reuse.py) held the base before the trial started: it
`charge`s the base's resident bytes and load peak to the trial, so the peak equals a fresh load's. Platform caches
that are no property of the trial's configuration (prefix.py: frozen-block outputs) `hold` their bytes here and
are subtracted from every CPU sample, whether they were built before the trial or during it.
"""

from __future__ import annotations

import threading

import torch

_STATUS = "/proc/self/status"
_PLATFORM = {"bytes": 0}  # process-wide bytes held by platform caches (not charged to any trial)


def hold(nbytes: int) -> None:
    """A platform cache grew (+) or shrank (-) by nbytes: call before allocating, after freeing."""
    _PLATFORM["bytes"] += int(nbytes)


def platform_bytes() -> int:
    return _PLATFORM["bytes"]


def trim() -> None:
    """Give freed heap pages back to the OS, so a later measurement starts from what is really held.

    glibc otherwise keeps freed pages mapped and the next allocations reuse them without resident memory growing.
    """
    import gc

    gc.collect()
    trim_heap()


_LIBC: dict = {}


def trim_heap() -> None:
    """malloc_trim(0) alone, without a garbage collection."""
    if "trim" not in _LIBC:
        import ctypes

        try:
            _LIBC["trim"] = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): the sampled peak is then an upper bound
            _LIBC["trim"] = None
    if _LIBC["trim"] is not None:
        _LIBC["trim"](0)


class HeapGuard:
    """Trim the heap after a training step when it keeps growing.

    Batches of different lengths free tensors of different sizes, and glibc's heap keeps the holes: on a SmolLM2
    trial, resident memory after a step crept from 2.9 GB to 3.8 GB over 15 steps while what was live stayed
    near 1.1 GB. The measured peak then reflects the allocator's history rather than the configuration, and the
    process really holds those pages. Trimming after every step removed the creep but slowed a MiniLM trial
    (0.2 s steps) by 28 %: the next step page-faults its memory back in. After a step glibc holds about what the
    step needed, which the next step reuses; the waste is the creep above that. So the first step after a trim
    sets the level and the guard trims only when a later step ends `slack_mb` above it. RssAnon costs microseconds.
    """

    def __init__(self, slack_mb: float = 256.0):
        self.slack = int(slack_mb * 2**20)
        self.level: int | None = None
        self.trims = 0

    def step(self) -> None:
        now = _rss_anon_bytes()
        if self.level is None:
            self.level = now
        elif now > self.level + self.slack:
            trim_heap()
            self.trims += 1
            self.level = None


def _rss_anon_bytes() -> int:
    try:
        with open(_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        pass
    import psutil  # non-Linux fallback: total RSS, file-backed pages included

    return psutil.Process().memory_info().rss


def _has_rss_anon() -> bool:
    try:
        with open(_STATUS, encoding="ascii") as fh:
            return any(line.startswith("RssAnon:") for line in fh)
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as pm: ...`; then `pm.peak_bytes` (also readable live, inside the block)."""

    def __init__(self, device: str | torch.device = "cpu", interval_s: float = 0.005):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.method = "cuda.max_memory_allocated"
        elif _has_rss_anon():
            self.method = f"cpu RssAnon sampled every {interval_s * 1000:g} ms above trial start"
        else:
            self.method = f"cpu psutil rss sampled every {interval_s * 1000:g} ms above trial start"
        self._start = 0
        self._max = 0
        self._floor = 0  # a transient peak charged from before the trial started (a reused base's load)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ sampling

    def _sample(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        return _rss_anon_bytes() - platform_bytes()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = self._sample()
            if value > self._max:
                self._max = value

    @property
    def peak_bytes(self) -> int:
        """Peak above the value at __enter__ so far (>= 0), including what was charged."""
        self._max = max(self._max, self._sample())
        return max(0, self._max - self._start, self._floor)

    @property
    def level_bytes(self) -> int:
        """Memory held now above the value at __enter__ (not the peak)."""
        now = torch.cuda.memory_allocated(self.device) if self.cuda else self._sample()
        return now - self._start

    def charge(self, resident_bytes: int, transient_bytes: int = 0) -> None:
        """Count memory allocated before __enter__ as the trial's own: `resident_bytes` held throughout, and a
        one-off peak of `transient_bytes` above the start (what loading it cost)."""
        self._start -= int(resident_bytes)
        self._floor = max(self._floor, int(transient_bytes))

    def restart(self) -> None:
        """Measure from the current level again; only before the trial has allocated anything of its own
        (after freeing what a previous trial left, which would otherwise hide the trial's allocations)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = self._max = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._max = self._sample()
        self._floor = 0

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    # ------------------------------------------------------------ context manager

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self._max = self._start
        else:
            self._start = self._max = self._sample()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        _ = self.peak_bytes  # a last sample
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)
            self._thread = None
