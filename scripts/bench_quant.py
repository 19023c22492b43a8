"""One trial per quantization mode (none / int8 / nf4 / fp4) on the same spec; writes a results table.

    python scripts/bench_quant.py search_spaces/quantization_study.yaml --set epochs=1 --out BENCH_QUANT.md

Each mode runs in a fresh process (so its measured peak is its own) one after the other, never concurrently.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, tempfile
from sweeps.spec import load_spec
from sweeps.trial.loop import run_trial
overrides = json.loads(sys.argv[2])
spec = load_spec(sys.argv[1], overrides)
result = run_trial(spec, spec.params, tempfile.mkdtemp(prefix="bench-quant-"))
print("RESULT " + json.dumps({**result.metrics, "memory_method": result.info["memory_method"]}))
"""
COLUMNS = ("train_seconds", "tokens_per_second", "peak_memory_mb", "base_weight_bytes", "macro_f1", "accuracy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default="search_spaces/quantization_study.yaml")
    ap.add_argument("--set", action="append", default=[], help="override a trial parameter, e.g. epochs=1")
    ap.add_argument("--modes", default="none,int8,nf4,fp4")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="BENCH_QUANT.md")
    args = ap.parse_args()
    base = {}
    for item in args.set:
        key, _, value = item.partition("=")
        base[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    rows = []
    for mode in args.modes.split(","):
        overrides = {**base, "quantization": mode}
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        started = time.time()
        proc = subprocess.run([sys.executable, "-c", CHILD, args.spec, json.dumps(overrides)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            rows.append({"quantization": mode, "error": f"exit {proc.returncode}"})
            continue
        row = {"quantization": mode, **json.loads(line[7:]), "wall_seconds": time.time() - started}
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python scripts/bench_quant.py " + " ".join([args.spec, *[f"--set {s}" for s in args.set],
                                                          f"--modes {args.modes}", f"--threads {args.threads}"])
    lines = ["# Quantization modes, one trial each\n", f"Command: `{command}`  ",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
             f"{args.threads}; {time.strftime('%Y-%m-%d %H:%M')}  ",
             f"Peak memory: {next((r['memory_method'] for r in rows if 'memory_method' in r), '?')}\n",
             "| quantization | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = [r.get("error", "")] if "error" in r else [f"{r[c]:,.4g}" if c != "base_weight_bytes" else
                                                          f"{int(r[c]):,}" for c in COLUMNS]
        lines.append(f"| {r['quantization']} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
