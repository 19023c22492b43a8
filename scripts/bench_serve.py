"""Adapter-server benchmark: throughput with 1 adapter vs 4 adapters in mixed batches, switch and reload latency;
and a bounded load test (--load).

    python scripts/bench_serve.py --requests 384 --concurrency 32 --out docs/bench_serve.md
    python scripts/bench_serve.py --load --clients 16 --seconds 30 --out docs/bench_serve.md

--load: a tiny BERT (tests/_tiny.py, 2 layers, hidden 32) with four registered adapters behind `sweep serve`'s
app on 127.0.0.1 with a bearer token; --clients threads, each with its own connection, send single-text /predict
requests round-robin over the adapters for --seconds; halfway the registry alias of one adapter moves and
POST /adapters/NAME/reload swaps it in while the others keep sending. Counts every failed request (non-200 or
an exception), latency p50/p99 at the client, throughput, and writes the "Load test" section at the top of
--out (the rest of the file is kept). Exits 1 if any request failed.

Serves the bundled MiniLM with four registered classification adapters (LoRA r=8 on attention + head, random B
factors: the arithmetic of a trained adapter, without training four of them first) from a throw-away MLflow store,
over real HTTP on 127.0.0.1. Clients send single-text /predict requests from a thread pool; the server batches
whatever arrives within --max-wait-ms. "4 adapters" sends the requests round-robin over the four, so nearly every
batch mixes adapters (PEFT's per-sample adapter_names).
Reload latency: the registry alias moves to another version, then POST /adapters/NAME/reload until it answers
(download + sha256 check + base-hash check + load + swap), measured at the client.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASE = "bundled:all-minilm-l6-v2"
LABELS = ["negative", "neutral", "positive"]


def texts(n: int) -> list[str]:
    from sweeps import bundled

    with zipfile.ZipFile(bundled.dataset_path("drug-reviews")) as zf:
        name = next(n for n in zf.namelist() if n.endswith("Train.tsv"))
        rows = list(csv.DictReader(io.TextIOWrapper(zf.open(name), encoding="utf-8"), delimiter="\t"))
    return [r["review"].strip()[:600] for r in rows[:n]]


def make_adapter(base_path: Path, out: Path, seed: int) -> Path:
    import json

    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from sweeps.spec.params import TrialParams
    from sweeps.trial.adapters import disk, targeting
    from sweeps.trial.models import pretrained

    model = pretrained.load_base(base_path, "classification", 3, TrialParams(), "cpu")
    targets = targeting.target_modules(model, "attention")
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type=TaskType.SEQ_CLS,
                                            modules_to_save=["classifier"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    path = disk.save_adapter(peft, out)
    (path / "labels.json").write_text(json.dumps(LABELS))
    return path


def register(tracker, name: str, adapter: Path, number: int, base_sha: str) -> str:
    from sweeps.driver.promotion.register import promote

    parent = tracker.start_sweep("bench-serve", "name: bench-serve\n")
    run_id = tracker.start_trial("bench-serve", parent, number, {"seed": number})
    tracker.finish_trial(run_id, "COMPLETE", {"macro_f1": 0.0}, adapter_dir=adapter)
    lineage = {"task": "classification", "base_model": BASE, "base_model_sha256": base_sha}
    return promote(tracker, name, run_id, ["champion"], lineage)[0]


def throughput(client_url: str, names: list[str], corpus: list[str], requests: int,
               concurrency: int) -> tuple[float, float]:
    """(requests per wall second, requests per CPU second of this process: server and clients both)."""
    import httpx

    with httpx.Client(base_url=client_url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:
        def one(i: int) -> None:
            r = c.post("/predict", json={"adapter": names[i % len(names)], "text": corpus[i % len(corpus)]})
            r.raise_for_status()

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(concurrency)))  # warm-up: connections, first batches
            started, cpu = time.perf_counter(), time.process_time()
            list(pool.map(one, range(requests)))
            return requests / (time.perf_counter() - started), requests / (time.process_time() - cpu)


def latency(client_url: str, names: list[str], text: str, n: int) -> float:
    import httpx

    with httpx.Client(base_url=client_url, timeout=60) as c:
        times = []
        for i in range(n):  # one request at a time: every batch is a single adapter, so alternating = switching
            started = time.perf_counter()
            c.post("/predict", json={"adapter": names[i % len(names)], "text": text}).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times[2:]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=384)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2, help="alternate 1-adapter and 4-adapter runs this many times")
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="docs/bench_serve.md")
    ap.add_argument("--load", action="store_true", help="run the bounded load test instead")
    ap.add_argument("--clients", type=int, default=16, help="--load: concurrent clients")
    ap.add_argument("--seconds", type=float, default=30.0, help="--load: how long the clients send")
    args = ap.parse_args()
    if args.load:
        sys.exit(load_test(args))
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.environ["SWEEPS_STORE"] = str(workdir / "store")  # a throw-away registry, not the user's mlruns/
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import torch

    torch.set_num_threads(args.threads)
    from sweeps.production.serving.engine import Engine, Limits
    from sweeps.production.serving.http_app import Background
    from sweeps.spec import ModelSpec
    from sweeps.tracking.tracker import Tracker
    from sweeps.trial.models import pretrained

    base_path = pretrained.resolve_base(ModelSpec(base=BASE))
    base_sha = pretrained.content_hash(base_path)
    tracker = Tracker()
    names = ["bench-a", "bench-b", "bench-c", "bench-d"]
    for i, name in enumerate(names):
        register(tracker, name, make_adapter(base_path, workdir / name, i), i, base_sha)
    register(tracker, "bench-a", make_adapter(base_path, workdir / "bench-a-v2", 99), 99, base_sha)  # a v2
    tracker.set_alias("bench-a", "champion", "1")
    corpus = texts(args.requests)
    engine = Engine([(None, f"{n}@champion") for n in names], tracker=tracker,
                    limits=Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms))
    rows, ratios = [], []
    with Background(engine) as url:
        for _ in range(args.rounds):
            one, one_cpu = throughput(url, names[:1], corpus, args.requests, args.concurrency)
            before = dict(engine.stats)
            four, four_cpu = throughput(url, names, corpus, args.requests, args.concurrency)
            batches = engine.stats["batches"] - before["batches"]
            mixed = (engine.stats["mixed_batches"] - before["mixed_batches"]) / max(batches, 1)
            ratios.append(four / one)
            rows.append((one, four, four / one, four_cpu / one_cpu, mixed,
                         (engine.stats["examples"] - before["examples"]) / batches))
        same = latency(url, names[:1], corpus[0], 22)
        switching = latency(url, names[:2], corpus[0], 22)
        import httpx

        reloads = []
        for i in range(args.reloads):
            tracker.set_alias("bench-a", "champion", "2" if i % 2 == 0 else "1")
            started = time.perf_counter()
            answer = httpx.post(f"{url}/adapters/bench-a/reload", timeout=120).json()
            reloads.append(time.perf_counter() - started)
            assert answer["changed"], answer
    engine.close()
    write(args, rows, statistics.median(ratios), same, switching, reloads)


def write(args, rows, ratio, same, switching, reloads) -> None:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# Adapter server: one base, many adapters", "",
        f"Command: `python scripts/bench_serve.py --requests {args.requests} --concurrency {args.concurrency} "
        f"--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms} --rounds {args.rounds} "
        f"--reloads {args.reloads} --threads {args.threads} --out {args.out}`  ",
        f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"CPU; load average {os.getloadavg()[0]:.1f} at the end (the machine is shared); "
        f"{time.strftime('%Y-%m-%d %H:%M')}  ",
        "Base: bundled all-MiniLM-L6-v2 (22.7 M params) as a 3-label classifier; adapters: LoRA r=8 on attention "
        "+ classifier head, fp32; single-text /predict requests of drug reviews (truncated to 256 tokens), over "
        "HTTP on 127.0.0.1.", "",
        "| round | 1 adapter (req/s) | 4 adapters mixed (req/s) | ratio | ratio per CPU-second | mixed batches "
        "| mean batch |", "|---|---|---|---|---|---|---|",
        *[f"| {i + 1} | {a:.1f} | {b:.1f} | {r:.3f} | {c:.3f} | {m:.0%} | {s:.1f} |"
          for i, (a, b, r, c, m, s) in enumerate(rows)],
        "", "The CPU-second ratio divides requests by the CPU time this process used (server and client threads), "
        "which other jobs on a shared machine disturb less than wall time.",
        "", f"**4-adapter / 1-adapter throughput ratio (median over rounds): {ratio:.3f}** (goal >= 0.8)", "",
        "| latency | median |", "|---|---|",
        f"| one request at a time, same adapter | {same:.1f} ms |",
        f"| one request at a time, alternating two adapters (switch per request) | {switching:.1f} ms |",
        f"| reload after the registry alias moved (download, sha256 + base check, load, swap) | "
        f"{statistics.median(reloads) * 1000:.0f} ms (min {min(reloads) * 1000:.0f}, max "
        f"{max(reloads) * 1000:.0f}, n={len(reloads)}) |", "",
        "Requests keep being served during a reload: the new version is loaded beside the old one and the served "
        "name is switched under the model lock between two batches.", "",
    ]
    out = Path(args.out)
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    out.write_text("\n".join(lines))
    if LOAD_BEGIN in old and LOAD_END in old:  # keep the last --load section
        _write_section(out, LOAD_BEGIN + old.split(LOAD_BEGIN, 1)[1].split(LOAD_END, 1)[0] + LOAD_END)
    print("\n".join(lines))


# ---------------------------------------------------------------- --load: bounded load test

LOAD_BEGIN, LOAD_END = "<!-- load-test: written by scripts/bench_serve.py --load -->", "<!-- /load-test -->"


def _sentences(n: int, seed: int = 0) -> list[str]:
    import random

    from _tiny import FILLER, WORDS

    rng = random.Random(seed)
    words = [w for ws in WORDS.values() for w in ws] + FILLER
    return [" ".join(rng.choices(words, k=rng.randint(4, 40))) for _ in range(n)]


def load_test(args) -> int:
    import secrets
    import threading

    sys.path.insert(0, str(ROOT / "tests"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-load-"))
    os.environ["SWEEPS_STORE"] = str(workdir / "store")  # a throw-away registry, not the user's mlruns/
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import httpx
    import torch
    from _tiny import tiny_bert

    torch.set_num_threads(args.threads)
    from sweeps.production.serving.engine import Engine, Limits
    from sweeps.production.serving.http_app import Background
    from sweeps.tracking.tracker import Tracker
    from sweeps.trial.models import pretrained

    base = tiny_bert(workdir / "tiny-bert")
    base_sha, tracker, names = pretrained.content_hash(base), Tracker(), ["load-a", "load-b", "load-c", "load-d"]
    for i, name in enumerate(names):
        _register_local(tracker, name, make_adapter(base, workdir / name, i), i, base, base_sha)
    _register_local(tracker, "load-a", make_adapter(base, workdir / "load-a-v2", 99), 99, base, base_sha)
    tracker.set_alias("load-a", "champion", "1")
    corpus, token = _sentences(512), secrets.token_urlsafe(32)
    results: list[tuple[float, float, int, str, str | None]] = []  # (start, seconds, status, adapter, version)
    errors: list[str] = []
    lock = threading.Lock()
    engine = Engine([(None, f"{n}@champion") for n in names], tracker=tracker,
                    limits=Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_length=64))
    with engine, Background(engine, token=token) as url:
        start = time.perf_counter()
        deadline = start + args.seconds

        def client(k: int) -> None:
            with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
                i = k
                while time.perf_counter() < deadline:
                    name, t0 = names[i % len(names)], time.perf_counter()
                    try:
                        r = c.post("/predict", json={"adapter": name, "text": corpus[i % len(corpus)]})
                        version = r.json().get("version") if r.status_code == 200 else r.text[:200]
                        row = (t0 - start, time.perf_counter() - t0, r.status_code, name, version)
                    except Exception as exc:  # a reset connection, a timeout: a failed request all the same
                        row = (t0 - start, time.perf_counter() - t0, 0, name, None)
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")
                    with lock:
                        results.append(row)
                    i += args.clients

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.seconds / 2)
        tracker.set_alias("load-a", "champion", "2")
        reload_at = time.perf_counter() - start
        answer = httpx.post(f"{url}/adapters/load-a/reload", headers={"Authorization": f"Bearer {token}"},
                            timeout=60).json()
        reload_s = time.perf_counter() - start - reload_at
        for t in threads:
            t.join(timeout=args.seconds + 60)
        elapsed = time.perf_counter() - start
        unauthorized = httpx.post(f"{url}/predict", json={"adapter": names[0], "text": "x"}).status_code
        stats = dict(engine.stats)
    report = _load_report(args, results, errors, elapsed, reload_at, reload_s, answer, stats, unauthorized)
    _write_section(Path(args.out), report)
    print(report)
    served_v2 = {r[4] for r in results if r[3] == "load-a" and r[0] > reload_at + reload_s} == {"2"}
    return 0 if not errors and all(r[2] == 200 for r in results) and served_v2 else 1


def _register_local(tracker, name: str, adapter: Path, number: int, base: Path, base_sha: str) -> str:
    from sweeps.driver.promotion.register import promote

    parent = tracker.start_sweep("bench-serve-load", "name: bench-serve-load\n")
    run_id = tracker.start_trial("bench-serve-load", parent, number, {"seed": number})
    tracker.finish_trial(run_id, "COMPLETE", {"macro_f1": 0.0}, adapter_dir=adapter)
    lineage = {"task": "classification", "base_model": str(base), "base_model_sha256": base_sha}
    return promote(tracker, name, run_id, ["champion"], lineage)[0]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _load_report(args, results, errors, elapsed, reload_at, reload_s, answer, stats, unauthorized) -> str:
    import torch

    ok = [r for r in results if r[2] == 200]
    failed = len(results) - len(ok)
    lat = [r[1] * 1000 for r in ok]
    during = [r for r in results if reload_at <= r[0] <= reload_at + reload_s]
    after = {r[4] for r in ok if r[3] == "load-a" and r[0] > reload_at + reload_s}
    before = {r[4] for r in ok if r[3] == "load-a" and r[0] + r[1] < reload_at}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    per = {n: sum(1 for r in ok if r[3] == n) for n in sorted({r[3] for r in results})}
    lines = [
        LOAD_BEGIN, "## Load test (bounded)", "",
        f"Command: `python scripts/bench_serve.py --load --clients {args.clients} --seconds {args.seconds:g} "
        f"--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms} --threads {args.threads} "
        f"--out {args.out}`  ",
        f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"thread(s); load average {os.getloadavg()[0]:.1f} at the end (shared machine); "
        f"{time.strftime('%Y-%m-%d %H:%M')}  ",
        f"Server: tiny BERT (2 layers, hidden 32, tests/_tiny.py) with 4 registered LoRA adapters, bearer token "
        f"on, 127.0.0.1; {args.clients} clients x {args.seconds:g} s of single-text /predict requests "
        f"round-robin over the adapters (4-40 words each); halfway, `load-a@champion` moved to version 2 and "
        f"was reloaded while the clients kept sending.", "",
        "| measure | value |", "|---|---|",
        f"| requests | {len(results)} ({', '.join(f'{n} {c}' for n, c in per.items())}) |",
        f"| **failed requests** (non-200 or exception) | **{failed}**{' ' + '; '.join(errors[:3]) if errors else ''} |",
        f"| throughput | {len(ok) / elapsed:.1f} requests/s ({elapsed:.1f} s wall) |",
        f"| latency p50 / p99 / max (client) | {_pct(lat, 0.5):.1f} / {_pct(lat, 0.99):.1f} / "
        f"{max(lat, default=float('nan')):.1f} ms |",
        f"| reload at t={reload_at:.1f} s | {reload_s * 1000:.0f} ms, changed={answer.get('changed')}, "
        f"version {answer.get('previous')} -> {answer.get('version')}; {len(during)} requests started during it, "
        f"{sum(1 for r in during if r[2] != 200)} failed |",
        f"| load-a versions answered before / after the reload | {sorted(map(str, before))} / "
        f"{sorted(map(str, after))} |",
        f"| batches / mixed-adapter / mean batch | {stats['batches']} / {stats['mixed_batches']} / "
        f"{stats['examples'] / max(stats['batches'], 1):.1f} |",
        f"| a request without the token | {unauthorized} |",
        "", LOAD_END,
    ]
    return "\n".join(lines)


def _write_section(path: Path, section: str) -> None:
    """The load-test section right under the title; what else the file holds (the throughput runs) is kept."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Adapter server: one base, many adapters\n"
    if LOAD_BEGIN in text and LOAD_END in text:
        head, rest = text.split(LOAD_BEGIN, 1)
        text = head + section + rest.split(LOAD_END, 1)[1]
    else:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{section}\n{rest}"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
