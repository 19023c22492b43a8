"""Helpers of the BENCHMARKS.md renderers (report.py, report_peers.py, report_quality.py).

Every number the markdown shows is a value of BENCHMARKS.json: a recorded figure, or one the report derives from
recorded figures (a ratio, a difference, a unit conversion), which `derived` keeps in the section's record under
"derived" before it is formatted; scripts/bench.py saves the JSON after rendering (tests/test_bench_report.py).
"""

from __future__ import annotations

import statistics

GOALS = {"overhead": 1.05, "hf_wall": 0.4, "throughput": 2.0, "cli": 1.0}


def derived(rec: dict, key: str, value):
    """Keep a figure the report computed in rec["derived"][key] (hence in the JSON) and return it."""
    rec.setdefault("derived", {})[key] = value
    return value


def met(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**not met**")


def median(values) -> float:
    values = values if isinstance(values, list) else [values]
    return float(statistics.median(values))


def pm(mean: float | None, se: float | None, sign: bool = False) -> str:
    if mean is None:
        return "—"
    text = f"{mean:+.3f}" if sign else f"{mean:.3f}"
    return text + (f" ± {se:.3f}" if se is not None and se == se else "")


def f1(value: float | None, se: float | None = None) -> str:
    """A macro-F1 with its bootstrap SE, 4 decimals (3 for the SE); — when absent."""
    if value is None:
        return "—"
    return f"{value:.4f}" + (f" ± {se:.3f}" if se is not None and se == se else "")


def compare(rec: dict, key: str, ours: float | None, theirs: float | None, se_ours: float | None,
            se_theirs: float | None, higher: str = "higher", lower: str = "lower") -> str:
    """Ours against a peer on one figure: a tie when the gap is within 2 SE of the difference (bootstrap SEs of
    each figure, combined as if independent), never a win; else plainly higher or lower. The difference and the
    2 SE are kept as derived figures under `key`."""
    if ours is None or theirs is None:
        return "— (a figure is missing)"
    diff = derived(rec, f"{key}_difference", ours - theirs)
    if se_ours is None or se_theirs is None or se_ours != se_ours or se_theirs != se_theirs:
        return f"{'+' if diff >= 0 else ''}{diff:.3f} (no SE recorded: not called either way)"
    noise = derived(rec, f"{key}_2se", 2 * (se_ours ** 2 + se_theirs ** 2) ** 0.5)
    verdict = "tie" if abs(diff) <= noise else (higher if diff > 0 else lower)
    return f"**{verdict}** ({'+' if diff >= 0 else ''}{diff:.3f}; 2 SE of the difference {noise:.3f})"


def speed(ratio: float) -> str:
    """Our wall / theirs in words: within 10 % is `about as fast`."""
    return "**faster**" if ratio < 0.9 else "**slower**" if ratio > 1.1 else "**about as fast** (within 10 %)"


def spread(s: dict, key: str, fmt: str = ".3f") -> str:
    """`median` (min – max over the repeats) of a summary figure, from its key, key_min and key_max."""
    text = format(s[key], fmt)
    if s.get(f"{key}_min") is not None and s.get(f"{key}_max") is not None and s.get("repeats", 1) > 1:
        text += f" (min {format(s[f'{key}_min'], fmt)}, max {format(s[f'{key}_max'], fmt)})"
    return text
