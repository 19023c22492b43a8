"""Fault injection for the reliability tests (tests/faults/): named points in the engine where a crash, a full
disk, a locked database or an allocation failure is made to happen on purpose.

Unset (the normal case) `point()` is one environment lookup and returns. Armed, `SWEEPS_FAULT` holds rules
separated by ';', each `<point>:<action>[:<key>=<value>...]`:

    SWEEPS_FAULT="worker.epoch:kill:trial=1:times=1;driver.finished:kill"

keys other than `times`/`skip` filter on the point's context (`trial=1|2` matches trial 1 or 2); `skip=K` lets
the first K matching hits pass, `times=N` fires on at most N hits after that (default: every hit). Hits are
counted across processes (the driver and its Ray workers) with files in `SWEEPS_FAULT_DIR`, which also gets one
line per fired fault in `fired.log` for the test to read. Actions:

    kill       SIGKILL this process (a crashed driver or worker: no cleanup, no atexit, no finally)
    enospc     raise OSError(ENOSPC), as a full disk does
    oom        allocate more memory than any machine has (a real allocation failure)
    lock=S     another process holds the SQLite database ctx["storage"] exclusively for S seconds
    barrier=N  wait until N processes reached this point (two promotions racing), at most 60 s

Points (where they sit and why): driver.proposed, driver.epoch, driver.finished, driver.heartbeat
(driver/coordinator.py, Coordinator: the last one before every beat the driver writes to the study);
track.uploaded (tracking/runs.py, finish_trial); study.created, study.tell (driver/study/); registry.create,
registry.created (driver/promotion/register.py); worker.epoch (driver/cluster/trainable.py); adapter.saved
(trial/adapters/disk.py, save_adapter). The names are the points' stable names, not module paths.
Free of ray, mlflow and optuna: the trial side calls it too.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV, DIR_ENV = "SWEEPS_FAULT", "SWEEPS_FAULT_DIR"
_LOCAL_HITS: dict[str, int] = {}  # without SWEEPS_FAULT_DIR hits are counted per process


def point(where: str, /, **ctx) -> None:
    """A fault point: returns at once unless SWEEPS_FAULT holds a rule for `where` whose filters match `ctx`."""
    rules = os.environ.get(ENV)
    if rules:
        _fire(where, rules, ctx)


def _fire(name: str, rules: str, ctx: dict) -> None:
    for index, rule in enumerate(r.strip() for r in rules.split(";")):
        where, _, rest = rule.partition(":")
        if where != name or not rest:
            continue
        action, *pairs = rest.split(":")
        opts = dict(p.split("=", 1) for p in pairs)
        filters = {k: v.split("|") for k, v in opts.items() if k not in ("times", "skip")}
        if any(str(ctx.get(k)) not in allowed for k, allowed in filters.items()):
            continue
        hit = _hit(f"{index}-{name}")
        skip, times = int(opts.get("skip", 0)), opts.get("times")
        if hit < skip or (times is not None and hit >= skip + int(times)):
            continue
        _log(name, action, ctx)
        _act(action, ctx)


def _hit(key: str) -> int:
    """This hit's index among all processes' hits of one rule (0, 1, ...): claim the next free marker file."""
    folder = os.environ.get(DIR_ENV)
    if not folder:
        _LOCAL_HITS[key] = _LOCAL_HITS.get(key, -1) + 1
        return _LOCAL_HITS[key]
    Path(folder).mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        try:
            os.close(os.open(os.path.join(folder, f"hit-{key}-{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return i
        except FileExistsError:
            i += 1


def _log(name: str, action: str, ctx: dict) -> None:
    folder = os.environ.get(DIR_ENV)
    if folder:
        line = json.dumps({"point": name, "action": action, "pid": os.getpid(), "time": time.time(),
                           **{k: str(v) for k, v in ctx.items()}})
        with open(os.path.join(folder, "fired.log"), "a", encoding="utf-8") as fh:  # one short append: atomic
            fh.write(line + "\n")


def _act(action: str, ctx: dict) -> None:
    verb, _, arg = action.partition("=")
    if verb == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never returns: the signal is delivered while we wait
    elif verb == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected by SWEEPS_FAULT)")
    elif verb == "oom":  # 4 EiB: refused by the allocator on any machine
        torch = sys.modules.get("torch")
        if torch is not None:  # in a trial: torch's allocator fails, as a too-large activation makes it
            torch.empty(1 << 62, dtype=torch.uint8)
        bytearray(1 << 62)  # MemoryError
    elif verb == "lock":
        hold_sqlite_lock(str(ctx["storage"]), float(arg))
    elif verb == "barrier":
        _barrier(int(arg), ctx)
    else:
        raise ValueError(f"{ENV}: unknown action {action!r}")


_LOCKER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


def hold_sqlite_lock(storage: str, seconds: float) -> subprocess.Popen:
    """Start a process that takes an exclusive lock on a SQLite database and holds it; return once it holds it."""
    path = storage.split(":///", 1)[1] if "://" in storage else storage
    proc = subprocess.Popen([sys.executable, "-c", _LOCKER, path, str(seconds)], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "locked":
        raise RuntimeError(f"could not lock {path}")
    return proc


def _barrier(parties: int, ctx: dict) -> None:
    folder = Path(os.environ.get(DIR_ENV) or ".") / "barrier"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(folder.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.05)
