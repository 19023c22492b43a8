"""Section `memory_account` of scripts/bench.py (issue 14): where a MiniLM trial's measured peak goes, and whether
the same configuration measures the same peak first in a fresh process and second in a reused one (the goal:
within 5 %)."""

from __future__ import annotations

import threading

from benchkit.common import child, log, threads_env
from benchkit.recipes import RECIPE_BASE, SEEDS_FROM, _spec


def memory_account(ctx, record: dict) -> None:
    """Process A: the default recipe's trial (1 epoch) 1 + R times (the later ones reuse the base, as a reused Ray
    worker does), then the accounting; alongside, R fresh processes B run the same trial once each (R: --repeats,
    default 3, quick 1). A and the Bs run at once, 1 thread each: peak memory is per process."""
    from benchkit.common import median

    reps = ctx.repeats_for("memory_account")
    spec = _spec(ctx, SEEDS_FROM, 1, {})
    env = {**threads_env(1), "SWEEPS_STORE": str(ctx.work / "store-memacct")}
    out: dict[str, list] = {"A": [], "B": []}

    def run_a() -> None:
        out["A"] = child("memory_account", {"spec": str(spec), "config": RECIPE_BASE, "trials": 1 + reps,
                                            "account": True, "out": str(ctx.work / "memacct-A")}, env=env).results

    def run_b() -> None:
        for i in range(reps):
            done = child("memory_account", {"spec": str(spec), "config": RECIPE_BASE, "trials": 1,
                                            "out": str(ctx.work / f"memacct-B{i}")}, env=env)
            out["B"] += [r for r in done.results if r.get("phase") == "trial"]

    jobs = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    trials_a = [r for r in out["A"] if r.get("phase") == "trial"]
    account = next((r for r in out["A"] if r.get("phase") == "account"), None)
    if len(trials_a) != 1 + reps or account is None or len(out["B"]) != reps:
        raise RuntimeError("memory_account: a child process failed (see the log above)")
    reused = [r["peak_memory_mb"] for r in trials_a[1:]]
    fresh = [r["peak_memory_mb"] for r in out["B"]]
    peaks = {"first trial in process A (loads the base)": [trials_a[0]["peak_memory_mb"]],
             "later trials in process A (reused base, warm prefix cache)": reused,
             "the trial in a fresh process B (one process each)": fresh}
    ratio = median(reused) / median(fresh)
    peak = median([r["peak_memory_bytes"] for r in out["B"]])  # what the configuration measures in a fresh process
    parts = [("base weights (models.weight_bytes: parameters + buffers as stored)", account["weight_bytes"],
              "computed from the tensors"),
             (f"trainable parameters x 4 B x (weights + grad + 2 AdamW states) = {int(account['trainable_params']):,}"
              " x 16 B", account["trainable_params"] * 16, "computed (fp32)"),
             ("activations saved for backward, one forward of the largest batch in process A "
              f"({account['batch_shape'][0]} x {account['batch_shape'][1]} tokens)", account["saved_bytes"],
              "measured (saved_tensors_hooks, distinct storages, parameters excluded)")]
    rest = sum(p[1] for p in parts)
    parts.append(("other (allocator, runtime, temporaries of backward and the optimizer step)", peak - rest,
                  "the peak minus the rows above"))
    record.update(spec=str(spec), config=RECIPE_BASE, repeats=reps, peaks_mb=peaks, ratio_reused_vs_fresh=ratio,
                  ratio_first_vs_fresh=trials_a[0]["peak_memory_mb"] / median(fresh),
                  spread_fresh=(max(fresh) - min(fresh)) / median(fresh) if len(fresh) > 1 else None,
                  trials_a=trials_a, trials_b=out["B"], account=account, peak_bytes=peak,
                  parts=[{"part": p, "bytes": v, "how": h} for p, v, h in parts])
    log(f"memory_account: peaks {'; '.join(', '.join(f'{x:.0f}' for x in v) for v in peaks.values())} MB; "
        f"reused / fresh {ratio:.3f}; "
        + "; ".join(f"{short} {v / 2**20:.1f} MB" for short, (_, v, _) in zip(
            ("weights", "trainable x 16 B", "saved activations", "other"), parts, strict=True)))
