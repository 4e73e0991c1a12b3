"""The live table of ``nirwatch demo``: predictions per probe, latencies and drift status.

On a terminal the table refreshes in place (:class:`LiveView`); piped into a file or another
program it would show nothing until the end and then be cut at 80 columns, so there
:class:`PlainView` prints a few plain lines every few seconds instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from nirwatch.apps.demo_drift import DriftLoop
    from nirwatch.messages.prediction import Prediction


#: Predictions per probe that "now" means for the out-of-model share at the end.
RECENT = 20


@dataclass
class ProbeRow:
    """What the table shows for one instrument: its latest prediction and running counts."""

    last: Prediction
    count: int = 0
    out_of_model: int = 0
    #: Not releasable although inside the T²/Q limits (e.g. outside the calibrated range).
    held: int = 0
    #: Out-of-model flags of the latest predictions: is the probe (back) in model now?
    recent_out: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))


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
        row.recent_out.append(bool(p.out_of_model))
        row.held += int(not p.releasable and not p.out_of_model)
        self.latencies_ms.append(1000.0 * (p.published_at - p.timestamp))
        self.predictions += 1
        if self.first_prediction_s is None:
            self.first_prediction_s = time.time() - self.started_at

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def recent_out_of_model(self) -> tuple[int, int]:
        """(out of model, predictions) over the latest ``RECENT`` predictions of each probe."""
        flags = [f for r in self.rows.values() for f in r.recent_out]
        return sum(flags), len(flags)


def _status(p: Prediction, markup: bool = True) -> str:
    """OUT: outside the T²/Q limits; HOLD: not releasable otherwise (e.g. an extrapolation)."""
    word, colour = (
        ("OUT", "red")
        if p.out_of_model
        else ("in", "green")
        if p.releasable
        else ("HOLD", "yellow")
    )
    return f"[{colour}]{word}[/{colour}]" if markup else word


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


#: What the columns mean, under the table.
LEGEND = (
    "#: sample number; API mg: predicted API content; model: model and version serving "
    "(cnn, or pls as fallback); T², Q: distances as fractions of their 99 % limits; "
    "ok: in model, OUT of model (T² or Q > 1) or HOLD (not releasable, e.g. outside the "
    "calibrated range); n: predictions; out: out of model so far; ms: latency spectrum to "
    "prediction; drift: detectors firing"
)


def _ratio(v: float | None, limit: float | None) -> str:
    return "-" if v is None or not limit else f"{v / limit:.2f}"


def _totals(state: DemoState, counts: dict[str, int]) -> str:
    elapsed = time.time() - state.started_at
    return (
        f"{elapsed:.0f} s: spectra in {counts['sent']}, predictions out {state.predictions}, "
        f"dead-lettered {counts['dead_lettered']}, latency p50 {state.percentile(50):.0f} ms "
        f"p99 {state.percentile(99):.0f} ms"
    )


def render(
    state: DemoState,
    title: str,
    counts: dict[str, int],
    loop: DriftLoop,
    notes: Sequence[str] = (),
) -> Table:
    """The live table: one row per instrument; T² and Q as fractions of their 99 % limits.

    ``notes``: further status lines for the caption (e.g. the background CNN's).
    """
    from rich.table import Table

    caption = "\n".join(
        [
            f"{_totals(state, counts)}.",
            f"{loop.status}.",
            *notes,
            LEGEND + ".",
            f"Metrics: {state.metrics_url}. Ctrl-C stops.",
        ]
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


def plain_lines(
    state: DemoState, counts: dict[str, int], loop: DriftLoop, notes: Sequence[str] = ()
) -> list[str]:
    """The table as plain lines (no terminal): totals, one line per probe, status lines."""
    lines = [_totals(state, counts)]
    drifting = loop.drifting()
    for instrument in sorted(state.rows):
        r = state.rows[instrument]
        p = r.last
        drift = ",".join(_SHORT.get(d, d) for d in drifting.get(instrument, [])) or "-"
        lines.append(
            f"  {instrument} #{p.sample_id.rsplit('-', 1)[-1].lstrip('0') or '0'} "
            f"{_fmt(p.value)} mg model {p.model} {p.model_version[-4:]} "
            f"T² {_ratio(p.t2, p.t2_limit)} Q {_ratio(p.q, p.q_limit)} {_status(p, False)} "
            f"n {r.count} out {r.out_of_model} "
            f"{1000.0 * (p.published_at - p.timestamp):.0f} ms drift {drift}"
        )
    return [*lines, f"  {loop.status}", *(f"  {n}" for n in notes)]


class LiveView:
    """The table refreshed in place on a terminal (``make`` builds it on every update)."""

    def __init__(self, console: Console, make: Callable[[], Any]) -> None:
        from rich.live import Live

        self.make = make
        self.live = Live(make(), console=console, refresh_per_second=4)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.live.__exit__(et, e, tb)

    def update(self) -> None:
        self.live.update(self.make())


class PlainView:
    """Plain lines every ``every_s`` seconds and once at the end (output is not a terminal).

    ``notes`` (e.g. the background CNN's progress) are also printed as soon as they change:
    a log shows each training step, not only the ones that fall on a 5-second tick.
    """

    def __init__(
        self,
        console: Console,
        lines: Callable[[], list[str]],
        every_s: float = 5.0,
        notes: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.console, self.lines, self.every_s, self.notes = console, lines, every_s, notes
        self._last = time.monotonic()
        self._notes: list[str] = []

    def __enter__(self) -> PlainView:
        self.console.print(LEGEND, soft_wrap=True, highlight=False)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self._print()

    def update(self) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._print()
        elif self.notes is not None and (notes := list(self.notes())) != self._notes:
            self._notes = notes
            for line in notes:
                self.console.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)

    def _print(self) -> None:
        self._last = time.monotonic()
        for line in self.lines():
            # soft_wrap: a log line is not cut or wrapped at the console's 80 columns
            self.console.print(line, soft_wrap=True, highlight=False, markup=False)
