"""Measured peak memory of one trial (not an estimate).

GPU: `torch.cuda.max_memory_allocated`, reset when the trial starts: exactly the tensors the trial allocated.
CPU: there is no allocator counter, so a daemon thread samples the process's *anonymous* resident memory
(`RssAnon` in /proc/self/status) every ~5 ms. Anonymous, because safetensors are memory-mapped: their file-backed
pages are page cache that the kernel can drop and other processes share, and counting them would charge a trial
for whatever the previous trial happened to read. The trial's peak is the highest sample minus the value when the
context was entered, so what the process held before (imports, earlier trials in a reused worker) is not counted.
Short spikes between two samples can be missed; 5 ms is well below one training step (~0.1-2 s).
"""

from __future__ import annotations

import threading

import torch

_STATUS = "/proc/self/status"


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ sampling

    def _sample(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        return _rss_anon_bytes()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = _rss_anon_bytes()
            if value > self._max:
                self._max = value

    @property
    def peak_bytes(self) -> int:
        """Peak above the value at __enter__ so far (>= 0)."""
        if self.cuda:
            self._max = max(self._max, self._sample())
        else:
            self._max = max(self._max, _rss_anon_bytes())
        return max(0, self._max - self._start)

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
            self._start = self._max = _rss_anon_bytes()
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
