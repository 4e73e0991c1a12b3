"""The live table of ``nirwatch demo``: predictions per probe, latencies and drift status."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from rich.table import Table

    from nirwatch.demo_drift import DriftLoop
    from nirwatch.wire import Prediction


@dataclass
class ProbeRow:
    """What the table shows for one instrument: its latest prediction and running counts."""

    last: Prediction
    count: int = 0
    out_of_model: int = 0
    #: Not releasable although inside the T²/Q limits (e.g. outside the calibrated range).
    held: int = 0


@dataclass
class DemoState:
    """Predictions seen so far, per instrument, with their end-to-end latencies."""

    started_at: float
    lab_topic: str = ""
    metrics_url: str = ""
    rows: dict[str, ProbeRow] = field(default_factory=dict)
    #: The latest end-to-end latencies (bounded: a demo may run for days).
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    predictions: int = 0
    first_prediction_s: float | None = None

    def add(self, p: Prediction) -> None:
        row = self.rows.setdefault(p.instrument_id, ProbeRow(p))
        row.last = p
        row.count += 1
        row.out_of_model += int(p.out_of_model)
        row.held += int(not p.releasable and not p.out_of_model)
        self.latencies_ms.append(1000.0 * (p.published_at - p.timestamp))
        self.predictions += 1
        if self.first_prediction_s is None:
            self.first_prediction_s = time.time() - self.started_at

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def _status(p: Prediction) -> str:
    """OUT: outside the T²/Q limits; HOLD: not releasable otherwise (e.g. an extrapolation)."""
    if p.out_of_model:
        return "[red]OUT[/red]"
    return "[green]in[/green]" if p.releasable else "[yellow]HOLD[/yellow]"


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


_SHORT = {
    "exceedance_rate": "T²/Q",
    "mean_shift": "scores",
    "content_page_hinkley": "content",
    "cnn_pls_cusum": "cnn-pls",
    "lab_reference": "lab",
}


_COLUMNS: tuple[tuple[str, Literal["left", "right"]], ...] = (
    ("probe", "left"),
    ("#", "right"),
    ("API mg", "right"),
    ("model", "left"),
    ("T²", "right"),
    ("Q", "right"),
    ("ok", "left"),
    ("n", "right"),
    ("out", "right"),
    ("ms", "right"),
    ("drift", "left"),
)


def _ratio(v: float | None, limit: float | None) -> str:
    return "-" if v is None or not limit else f"{v / limit:.2f}"


def render(state: DemoState, title: str, counts: dict[str, int], loop: DriftLoop) -> Table:
    """The live table: one row per instrument; T² and Q as fractions of their 99 % limits."""
    from rich.table import Table

    elapsed = time.time() - state.started_at
    caption = (
        f"{elapsed:.0f} s: spectra in {counts['sent']}, predictions out {state.predictions}, "
        f"dead-lettered {counts['dead_lettered']}, latency p50 {state.percentile(50):.0f} ms "
        f"p99 {state.percentile(99):.0f} ms.\n{loop.status}. T² and Q as fractions of their 99 % "
        f"limits.\nMetrics: {state.metrics_url}. Ctrl-C stops."
    )
    drifting = loop.drifting()
    table = Table(title=title, caption=caption)
    for name, justify in _COLUMNS:
        table.add_column(name, justify=justify, no_wrap=True)
    for instrument in sorted(state.rows):
        r = state.rows[instrument]
        p = r.last
        table.add_row(
            instrument,
            p.sample_id.rsplit("-", 1)[-1].lstrip("0") or "0",
            _fmt(p.value),
            f"{p.model} {p.model_version[-4:]}",
            _ratio(p.t2, p.t2_limit),
            _ratio(p.q, p.q_limit),
            _status(p),
            str(r.count),
            str(r.out_of_model),
            f"{1000.0 * (p.published_at - p.timestamp):.0f}",
            "[red]" + ",".join(_SHORT.get(d, d) for d in drifting[instrument]) + "[/red]"
            if instrument in drifting
            else "-",
        )
    return table
