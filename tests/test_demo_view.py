"""The demo's display without a broker: plain lines off a terminal, the legend, the CNN step."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.console import Console

from nirwatch.apps.demo_cnn import BackgroundCNN
from nirwatch.apps.demo_view import LEGEND, DemoState, PlainView, plain_lines, render
from nirwatch.messages.prediction import Prediction

if TYPE_CHECKING:
    from nirwatch.apps.demo_drift import DriftLoop


class _Loop:
    status = "no drift detected"

    def drifting(self) -> dict[str, list[str]]:
        return {"probe-2": ["exceedance_rate"]}


def Loop() -> DriftLoop:  # noqa: N802 - stands in for the class
    return cast("DriftLoop", _Loop())


def _prediction(i: int, instrument: str, model: str, out: bool) -> Prediction:
    t2 = 30.0 if out else 3.0
    return Prediction(
        prediction_id=f"p{i}", message_id=f"m{i}", instrument_id=instrument,
        sample_id=f"{instrument}-{i:08d}", timestamp=time.time(), published_at=time.time(),
        target="api_content", value=200.0 + i, model=model, model_version="20260101-abcd",
        bundle_checksum="c", product="tablet-a", cnn_value=None, pls_value=200.0,
        t2=t2, q=0.001, t2_limit=15.0, q_limit=0.01, out_of_model=out,
    )  # fmt: skip


def _state() -> DemoState:
    state = DemoState(time.time(), metrics_url="http://127.0.0.1:1/metrics")
    for i in range(30):
        state.add(_prediction(i, "probe-1", "pls", out=True))
        state.add(_prediction(i, "probe-2", "cnn", out=i < 25))
    return state


def test_plain_lines_carry_every_column_and_are_not_cut_at_80() -> None:
    state = _state()
    note = "CNN training (5 members x 20 epochs, 1 CPU thread, niced): CNN member 3/5: epoch 4/20"
    lines = plain_lines(state, {"sent": 60, "dead_lettered": 0}, Loop(), [note])
    assert lines[0].endswith("predictions out 60, dead-lettered 0, latency p50 0 ms p99 0 ms")
    assert lines[1].startswith("  probe-1 #29 229.0 mg model pls abcd T² 2.00 Q 0.10 OUT n 30")
    assert lines[2].startswith("  probe-2 #29 229.0 mg model cnn abcd T² 0.20 Q 0.10 in n 30")
    assert lines[2].endswith("drift T²/Q")
    assert lines[-1] == "  " + note
    out = io.StringIO()
    console = Console(file=out, soft_wrap=True)  # what the demo uses when not on a terminal
    assert not console.is_terminal
    with PlainView(console, lambda: lines, every_s=3600) as view:
        view.update()  # within every_s: nothing
    printed = out.getvalue().splitlines()
    assert printed == [LEGEND, *lines]  # the legend, then the lines once at the end, uncut


def test_plain_view_prints_a_changed_note_at_once() -> None:
    # The background CNN's progress must reach a log even when a member trains between two
    # of the plain view's 5-second ticks.
    notes = ["CNN member 1/2: training (at most 10 epochs)."]
    out = io.StringIO()
    view = PlainView(Console(file=out), lambda: ["totals"], every_s=3600, notes=lambda: notes)
    view.update()
    view.update()  # unchanged: not printed twice
    notes = ["CNN member 2/2: epoch 3/10, val RMSE 2.1."]
    view.update()
    assert out.getvalue().splitlines() == [
        "  CNN member 1/2: training (at most 10 epochs).",
        "  CNN member 2/2: epoch 3/10, val RMSE 2.1.",
    ]


def test_recent_out_of_model_counts_the_latest_20_per_probe() -> None:
    assert _state().recent_out_of_model() == (20 + 15, 40)


def test_table_caption_has_the_legend_and_the_notes() -> None:
    table = render(_state(), "t", {"sent": 60, "dead_lettered": 0}, Loop(), ["CNN ... promoted."])
    out = io.StringIO()
    Console(file=out, width=400).print(table)
    text = out.getvalue()
    assert "CNN ... promoted." in text and "#: sample number" in text


class Registry:
    def __init__(self, champion: str) -> None:
        self.champion = champion
        self.registered: list[Path] = []
        self.promoted: list[str] = []

    def champion_version(self) -> str:
        return str(self.champion)

    def register(self, bundle: Path) -> str:
        self.registered.append(bundle)
        return "20260101T000000Z-cnn1"

    def promote(self, version: str) -> None:
        self.promoted.append(version)
        self.champion = version


def test_background_cnn_promotes_only_over_the_champion_it_started_from(tmp_path: Path) -> None:
    reg = Registry("pls-v1")
    cnn = BackgroundCNN(reg, tmp_path)
    cnn._register(tmp_path / "bundle", "pls-v1")
    assert reg.promoted == ["20260101T000000Z-cnn1"] and cnn.promoted == reg.promoted[0]
    assert "promoted: the worker hot-reloads it" in cnn.status
    reg = Registry("retrained-v2")  # a drift retrain was promoted while the CNN trained
    cnn = BackgroundCNN(reg, tmp_path)
    cnn._register(tmp_path / "bundle", "pls-v1")
    assert reg.promoted == [] and cnn.promoted is None
    assert "registered as candidate: the champion changed" in cnn.status
