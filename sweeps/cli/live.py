"""Live view of a running sweep (rich): trial states, metrics, ETA and the current Pareto front."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sweeps.cli.common import fmt
from sweeps.driver.selection.pareto import pareto_mask
from sweeps.driver.selection.tolerance import tolerance_matrix
from sweeps.spec import SweepSpec

_STYLE = {"COMPLETE": "green", "RUNNING": "cyan", "STARTING": "dim", "FAILED": "red", "PRUNED": "yellow",
          "INTERRUPTED": "magenta"}


_LIVE_STATES = ("RUNNING", "RETRYING")


class LiveView:
    def __init__(self, spec: SweepSpec, console: Console, enabled: bool = True):
        self.spec, self.console, self.enabled = spec, console, enabled
        self.coordinator: Any = None
        self.started = time.time()
        self.live: Live | None = None
        self._last_line = 0.0
        self._epoch_shown: dict[int, int] = {}

    def attach(self, coordinator: Any) -> None:
        self.coordinator = coordinator
        refs = reference_text(getattr(coordinator, "baselines", {}) or {}, self.spec.metric_names()[0])
        if refs and self.live is None:  # plain mode: once, before the trial lines
            self.console.print(refs, highlight=False)

    def __enter__(self) -> LiveView:
        if self.enabled:
            self.live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, coordinator: Any) -> None:
        self.coordinator = coordinator
        if self.live is None:
            self._plain_line()

    def _plain_line(self) -> None:
        """Not a terminal (CI, a log file): one progress line per finished trial instead of a live table."""
        rows = list(self.coordinator.rows.values())
        for row in rows:
            if not row.ended and row.epoch and row.epoch > self._epoch_shown.get(row.number, 0):
                # a long trial shows each epoch, not only its end
                self._epoch_shown[row.number] = row.epoch
                shown = "  ".join(f"{m}={row.metrics[m]:.4g}" for m in self.spec.metric_names() if m in row.metrics)
                self.console.print(f"trial {row.number:>3} epoch {row.epoch}/{self._epochs(row)}  {shown}  "
                                   f"({_duration(time.time() - row.started)})", highlight=False)
            if row.ended and row.ended > self._last_line:
                self._last_line = row.ended
                shown = "  ".join(f"{m}={row.metrics[m]:.4g}" for m in self.spec.metric_names() if m in row.metrics)
                why = f"  ({row.reason})" if row.reason else ""
                self.console.print(f"trial {row.number:>3} {row.state:<11} {shown}{why}  [{self._summary()}]",
                                   highlight=False)

    def _epochs(self, row: Any) -> int:
        return int(row.params.get("epochs") or self.spec.params.epochs)

    def _summary(self) -> str:
        rows = list(self.coordinator.rows.values()) if self.coordinator else []
        done = [r for r in rows if r.ended]
        total = len(rows) + (self.coordinator.remaining if self.coordinator else 0)
        elapsed = time.time() - self.started
        eta = ""
        if done and total > len(done):
            per = sum(r.ended - r.started for r in done) / len(done)
            eta = f", ETA {per * (total - len(done)) / max(1, self.spec.budget.concurrency):.0f} s"
        return f"{len(done)}/{total} trials this run, {elapsed:.0f} s elapsed{eta}"

    def render(self) -> Group:
        metrics = self.spec.metric_names()
        table = Table(title=f"sweep {self.spec.name}", expand=False)
        for col in ("trial", "state", "epoch", "time", *self.spec.search.space, *metrics, "note"):
            table.add_column(col, overflow="fold", max_width=40 if col == "note" else None)
        rows = sorted(self.coordinator.rows.values(), key=lambda r: r.number) if self.coordinator else []
        front = self._front(rows)
        for row in rows[-25:]:
            star = "*" if row.number in front else " "
            table.add_row(
                f"{star}{row.number}", Text(row.state, style=_STYLE.get(row.state, "")),
                f"{row.epoch or 0}/{self._epochs(row)}" if row.state in _LIVE_STATES else str(row.epoch or ""),
                _duration((row.ended or time.time()) - row.started),
                *[fmt(row.params.get(k)) for k in self.spec.search.space],
                *[fmt(row.metrics.get(m)) for m in metrics], row.reason or "",
            )
        footer = [Text(f"{self._summary()}   (* = on the current Pareto front)", style="dim")]
        refs = reference_text(getattr(self.coordinator, "baselines", {}) or {}, metrics[0]) if metrics else ""
        if refs:
            footer.append(Text(refs, style="dim"))
        return Group(table, *footer)

    def _front(self, rows: list) -> set[int]:
        metrics = self.spec.metric_names()
        done = [r for r in rows if r.state == "COMPLETE" and all(m in r.metrics for m in metrics)]
        if not done:
            return set()
        objectives = list(zip(metrics, self.spec.directions(), strict=True))
        # the tolerant front, as `sweep pareto` shows it: differences within noise do not dominate
        tol = tolerance_matrix([r.metrics for r in done], objectives, self.spec.tolerances())
        mask = pareto_mask([[r.metrics[m] for m in metrics] for r in done], self.spec.directions(), tol)
        return {r.number for r, keep in zip(done, mask, strict=True) if keep}


def reference_text(baselines: dict[str, dict[str, float]], metric: str, split: str = "validation") -> str:
    """'baselines (validation macro_f1): majority .264, linear probe .471 ± .045' ('' when there are none)."""
    shown = []
    for name, figures in baselines.items():
        value = figures.get(f"{split}.{metric}")
        if value is None:
            continue
        se = figures.get(f"{split}.{metric}_se")
        shown.append(f"{name.replace('-', ' ')} {value:.3f}" + (f" ± {se:.3f}" if se is not None else ""))
    return f"baselines ({split} {metric}): " + ", ".join(shown) if shown else ""


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
