"""Shared pieces of scripts/bench.py: the machine, child processes, the results file, the benchmark specs.

Every timed figure comes from a child process (fresh imports, its own memory), started the way a user would start
it; the parent only times and records. Results go to a JSON file after every measurement, so a crash loses at most
the measurement that was running and `--only SECTION` re-runs one section without touching the others.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SWEEP = str(Path(PY).with_name("sweep"))
DEFAULT_SPEC = ROOT / "search_spaces" / "rank_study_minilm.yaml"


# ---------------------------------------------------------------- the machine


def cpu_label(info: dict[str, Any] | None = None) -> str:
    """A short name of the CPU a figure was timed on ("Intel(R) Xeon(R) Processor, AMX"): time figures compare only
    within one such label (AMX runs bf16 matrix products several times faster than AVX-512 alone)."""
    info = info or machine()
    return info.get("cpu", "?") + (", AMX" if "amx_bf16" in info.get("cpu_flags", []) else "")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        flags = set(fields.get("flags", "").split())
        info["cpu"] = fields.get("model name", platform.processor() or "?")
        info["cpu_flags"] = sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                                            "amx_bf16", "amx_tile", "amx_int8", "f16c"})
    except OSError:
        info["cpu"], info["cpu_flags"] = platform.processor() or "?", []
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads_default"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return info


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ---------------------------------------------------------------- child processes


@dataclass
class Child:
    """One finished child process: wall seconds, its RESULT payloads, and its tail for the record."""

    wall: float
    results: list[dict]
    rc: int
    tail: str = ""

    @property
    def result(self) -> dict:
        return self.results[-1] if self.results else {}


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600, cwd: Path = ROOT,
        check: bool = True) -> Child:
    """Run a command, time it wall-clock, collect (and report as they come) the `RESULT {json}` lines it prints."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **(env or {})}
    started = time.perf_counter()
    results, out = [], []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                out.append(line)
                if line.startswith("RESULT "):
                    results.append(json.loads(line[7:]))
                    _progress(results[-1], time.perf_counter() - started)
                elif line.startswith("trial ") and any(s in line for s in (" COMPLETE", " FAIL", " PRUNED")):
                    print(f"    ... {time.perf_counter() - started:5.0f} s: {line.strip()}", flush=True)
            proc.wait()
        finally:
            timer.cancel()
        err.seek(0)
        tail = ("".join(out)[-1500:] + "\n" + err.read()[-3000:]).strip()
    wall = time.perf_counter() - started
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{tail}")
    return Child(wall, results, proc.returncode, tail)


def _progress(result: dict, elapsed: float) -> None:
    if result.get("phase") in ("trial", "epoch"):
        f1 = result.get("macro_f1")
        print(f"    ... {elapsed:5.0f} s: {result['phase']} done" + (f", macro-F1 {f1:.3f}" if f1 is not None else ""),
              flush=True)


PEER_CHILDREN = {"hf", "raytune", "setfit", "pick_test"}  # in peer_children.py; the others in children.py


def child(name: str, payload: dict, env: dict[str, str] | None = None, timeout: float = 3600) -> Child:
    """`python scripts/benchkit/children.py NAME JSON` (or peer_children.py): a measurement in a fresh process."""
    script = "peer_children.py" if name in PEER_CHILDREN else "children.py"
    return run([PY, str(ROOT / "scripts" / "benchkit" / script), name, json.dumps(payload)], env, timeout)


def threads_env(n: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}


# ---------------------------------------------------------------- results file


@dataclass
class Results:
    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> Results:
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault("sections", {})
        return cls(path, data)

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {})

    def start(self, name: str, command: str, settings: dict) -> dict:
        """A fresh record for a section about to run (the previous record of it is replaced)."""
        self.data["sections"][name] = {"command": command, "settings": settings, "machine": machine(),
                                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "running"}
        self.save()
        return self.data["sections"][name]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- benchmark specs


def quick_data(workdir: Path, rows: int) -> dict:
    """A stratified subset of the drug-review train split as a CSV (and the full test split), for --quick."""
    from sweeps.spec import load_spec
    from sweeps.trial.data.labelled import load_classification

    spec = load_spec(DEFAULT_SPEC)
    task = load_classification(spec.data, spec.seed)
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(task.train["label"]):
        by_label.setdefault(label, []).append(i)
    total = len(task.train)
    keep = sorted(i for idx in by_label.values() for i in idx[:max(2, round(rows * len(idx) / total))])
    out = {}
    for split, ds, idx in (("train", task.train, keep), ("test", task.test, range(min(len(task.test), rows)))):
        path = workdir / f"reviews-{split}-{rows}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            import csv

            writer = csv.writer(fh)
            writer.writerow(["review", "rating"])
            for i in idx:
                writer.writerow([ds[i]["text"], task.labels[ds[i]["label"]]])
        out[split] = str(path)
    return {"source": out["train"], "test": out["test"]}


def bench_spec(workdir: Path, name: str, space: dict, *, params: dict | None = None, budget: dict | None = None,
               data: dict | None = None, sampler: str = "grid", source: Path = DEFAULT_SPEC,
               seed: int | None = None) -> Path:
    """A spec (default: rank_study_minilm.yaml) with another name, space, sampler, budget, seed: written as YAML.

    Written whole (a temporary file, then a rename): a child process may be reading the same path while another
    thread writes it again, and must never see a half-written or seedless spec."""
    import yaml

    raw = yaml.safe_load(source.read_text())
    raw["name"] = name
    raw["description"] = f"scripts/bench.py: {source.name} with this search space"
    raw["params"] = {**raw.get("params", {}), **(params or {})}
    raw["search"] = {"sampler": sampler, "space": space}
    raw["budget"] = {**raw.get("budget", {}), **(budget or {})}
    if data:
        raw["data"] = {**raw["data"], **data}
    if seed is not None:
        raw["seed"] = seed
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.yaml"
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(f"# Run: sweep run {shown}\n" + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    os.replace(tmp, path)
    return path


def grid_points(space: dict) -> list[dict]:
    """Every point of a categorical space, in a fixed order."""
    import itertools

    names = list(space)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(space[n] for n in names))]


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="sweeps-bench-"))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
