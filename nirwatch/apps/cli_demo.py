"""``nirwatch demo`` (``make demo``): broker, simulated probes, worker and a live table.

On embedded defaults: the Tansu broker starts unless ``NIRWATCH_KAFKA_BOOTSTRAP`` is set; a PLS
model is fitted on simulated calibration data into ``var/demo/registry`` the first time; then
the tablet-line simulator and the inference worker run in threads of this process while the
table shows each probe's latest prediction. While PLS serves, a CNN ensemble trains in a
background process (:mod:`nirwatch.apps.demo_cnn`) and is promoted when done: the worker
hot-reloads it and the table's model column turns to ``cnn``. ``--scenario drift`` switches on
a drift part-way through so the out-of-model flags and the prediction error can be watched.
Ctrl-C (or the end of ``--duration``) stops the probes, lets the worker drain and prints a
summary.

Every service module is imported inside functions, so ``nirwatch`` stays light to import.
The running parts are assembled in :mod:`nirwatch.apps.demo_parts`, the drift loop lives in
:mod:`nirwatch.apps.demo_drift`, the live table (plain lines when the output is not a terminal)
in :mod:`nirwatch.apps.demo_view`.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nirwatch.apps.demo_cnn import DEFAULT_EPOCHS, DEFAULT_MEMBERS
from nirwatch.apps.demo_drift import DriftLoop, start_thread
from nirwatch.apps.demo_parts import DemoParts, assemble
from nirwatch.apps.demo_view import RECENT, DemoState, LiveView, PlainView, plain_lines, render
from nirwatch.errors import NirwatchError
from nirwatch.signals import stop_on_signals

if TYPE_CHECKING:
    from ingest.settings import IngestSettings
    from nirwatch.messages.prediction import Prediction

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = Path("var/demo/registry")


def configure(p: argparse.ArgumentParser) -> None:
    from nirwatch.simulation.simulator import DRIFT_KINDS  # numpy only; the command was chosen

    p.add_argument("--duration", type=float, help="run this many seconds, then print a summary")
    p.add_argument("--scenario", choices=("normal", "drift"), default="normal")
    p.add_argument("--drift", choices=DRIFT_KINDS, default="excipient_lot", help="drift kind")
    p.add_argument("--drift-at", type=float, default=20.0, help="drift onset in seconds (20)")
    p.add_argument("--probes", type=int, default=3, help="simulated probes (3)")
    p.add_argument("--rate", type=float, default=2.0, help="spectra/s per probe (2)")
    p.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="model registry")
    p.add_argument("--model", choices=("pls", "both"), default="pls", help="model to fit")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9108,
        help="worker metrics (default 9108, any free port if taken; 0: none)",
    )
    p.add_argument(
        "--cnn-epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help=f"epochs of the background CNN when the champion has none ({DEFAULT_EPOCHS}; 0: none)",
    )
    p.add_argument(
        "--cnn-members", type=int, default=DEFAULT_MEMBERS, help="CNN ensemble members (5)"
    )


def ensure_model(registry_root: Path, model: str, hmac_key: str | None) -> str:
    """The registry's champion version, fitting and promoting a PLS bundle when there is none."""
    from nirwatch.models.registry import ModelRegistry
    from nirwatch.simulation.simulator import calibration_set
    from training.fit import fit_bundle

    registry = ModelRegistry(registry_root, hmac_key=hmac_key)
    version = registry.champion_version()
    if version is not None:
        return version
    print(f"no model in {registry_root}: fitting {model} on 300 simulated calibration tablets")
    X, y, wl = calibration_set(300, seed=0, lab_noise=True)
    X_test, y_test, _ = calibration_set(100, seed=1, lab_noise=True)
    staging = registry_root.parent / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    bundle = fit_bundle(
        X,
        y,
        wl,
        target="api_content",
        unit="mg",
        model=model,  # type: ignore[arg-type]
        out_dir=staging / f"bundle-{int(time.time())}",
        X_test=X_test,
        y_test=y_test,
        hmac_key=hmac_key,
        progress=True,
        # A live demo: the PLS search once, without the nested CV (which only reports).
        nested_cv=False,
        cv_repeats=1,
    )
    version = registry.register(bundle)
    registry.promote(version)
    return version


def _serving(state: DemoState) -> list[str]:
    """Distinct "model version" pairs of the latest prediction of each probe."""
    return sorted({f"{r.last.model} {r.last.model_version}" for r in state.rows.values()})


def _drain(consumer: Any, state: DemoState, loop: DriftLoop, timeout_ms: int) -> None:
    """Poll once: predictions to the table and the drift detectors, lab results to both loops."""
    from nirwatch.messages.lab_result import decode_lab_result
    from nirwatch.messages.prediction import decode_prediction
    from nirwatch.transport.kafka import poll_decoded

    # The consumer is assigned the predictions and the lab-results topics (_results_consumer).
    decoders = {
        tp.topic: decode_lab_result if tp.topic == state.lab_topic else decode_prediction
        for tp in consumer.assignment()
    }
    polled = poll_decoded(consumer, decoders, timeout_ms)
    # Records of this run only: the topics may hold an earlier run's.
    labs = [r for r in polled.pop(state.lab_topic, []) if r.timestamp >= state.started_at]
    predictions: list[Prediction] = [
        p for records in polled.values() for p in records if p.timestamp >= state.started_at
    ]
    for p in predictions:
        state.add(p)
    loop.monitor.observe(predictions)
    loop.monitor.observe_lab(labs)
    for lab in labs:
        loop.buffer.add_lab(lab.sample_id, lab.value)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from threadpoolctl import threadpool_limits

    from ingest.settings import IngestSettings
    from nirwatch.models.registry import RegistrySettings
    from nirwatch.settings import load_settings
    from nirwatch.transport.broker import kafka_bootstrap

    # Worker, probes, broker and training share a few cores: BLAS spinning up a thread per
    # core for every small matrix made a PLS fit 10x slower on a busy 2-core machine.
    threadpool_limits(1)
    stop = threading.Event()  # Ctrl-C / SIGTERM: stop the probes, drain, summarise
    console = Console()
    if not console.is_terminal:  # a log: lines as long as they are, not wrapped at 80 columns
        console = Console(soft_wrap=True)
    ingest = load_settings(IngestSettings)
    hmac_key = load_settings(RegistrySettings).key()
    version = ensure_model(args.registry, args.model, hmac_key)
    errors: list[BaseException] = []

    with stop_on_signals(stop), kafka_bootstrap(ingest.kafka.bootstrap) as bootstrap:
        ingest = _on_broker(ingest, bootstrap)
        demo = assemble(args, ingest, hmac_key, args.metrics_port, console, version)
        try:
            _watch(demo, stop, errors)
        finally:
            demo.close()
    _summarise(demo)
    if errors:
        raise NirwatchError(f"demo stopped: {errors[0]!r}")
    return 0


def _on_broker(ingest: IngestSettings, bootstrap: str) -> IngestSettings:
    """The settings pointed at the (maybe embedded) broker, whose topics now exist."""
    from nirwatch.transport.kafka import ensure_topics

    kafka = ingest.kafka.model_copy(update={"bootstrap": bootstrap})
    topics = ("spectra", "predictions", "dead_letter", "lab_results")
    ensure_topics(kafka, [getattr(kafka, f"topic_{t}") for t in topics])
    return ingest.model_copy(update={"kafka": kafka})


def _watch(d: DemoParts, stop: threading.Event, errors: list[BaseException]) -> None:
    """Run worker and probes, showing the table until stopped, ``--duration`` or an error."""
    header = "nirwatch: API content per probe" + (f" ({d.args.drift} drift)" if d.drift else "")
    deadline = None if d.args.duration is None else time.monotonic() + d.args.duration
    worker_thread = start_thread("worker", d.worker.run, errors)
    live = (
        LiveView(d.console, lambda: render(d.state, header, d.counts(), d.loop, d.notes()))
        if d.console.is_terminal
        else PlainView(
            d.console,
            lambda: plain_lines(d.state, d.counts(), d.loop, d.notes()),
            notes=d.notes,
        )
    )
    with live:
        # Probes start once the worker owns partitions, so latencies are steady-state.
        joined = time.monotonic() + 10
        while not d.worker.assigned_partitions and time.monotonic() < joined:
            if stop.wait(0.05) or errors:
                break
        probes_thread = start_thread("probes", d.probes_main, errors)
        if d.cnn is not None:
            d.cnn.start()
        while not stop.is_set() and not errors:
            if deadline is not None and time.monotonic() >= deadline:
                break
            _drain(d.consumer, d.state, d.loop, 200)
            d.loop.check(errors)
            live.update()
        # Stop the probes, then let the worker catch up before it drains and exits.
        d.probes_stop.set()
        probes_thread.join(timeout=10)
        d.producer.flush(10)
        catch_up = time.monotonic() + 10
        while d.state.predictions < d.producer.sent and time.monotonic() < catch_up:
            _drain(d.consumer, d.state, d.loop, 200)
            live.update()
        d.worker_stop.set()
        worker_thread.join(timeout=30)
        _drain(d.consumer, d.state, d.loop, 200)
        live.update()
    if d.args.duration is not None and d.loop.retraining:
        # Unattended: let a started retrain finish so the summary can tell its outcome.
        d.console.print("waiting for the retrain to finish")
        d.loop.join(timeout=300)


def _summarise(d: DemoParts) -> None:
    """What went in and out, the drift loop's outcome, what serves now."""
    state, c = d.state, d.counts()
    first = "-" if state.first_prediction_s is None else f"{state.first_prediction_s:.1f} s"
    d.console.print()
    d.console.print(
        f"summary: spectra in {c['sent']}, predictions out {state.predictions}, "
        f"dead-lettered {c['dead_lettered']}, out-of-model "
        f"{sum(r.out_of_model for r in state.rows.values())}, held "
        f"{sum(r.held for r in state.rows.values())}, latency p50 "
        f"{state.percentile(50):.1f} ms p99 {state.percentile(99):.1f} ms, "
        f"first prediction after {first}"
    )
    d.console.print(f"drift: {d.loop.status}")
    out_now, n_now = state.recent_out_of_model()
    d.console.print(
        f"now: out-of-model {out_now} of the latest {n_now} predictions ({RECENT} per probe), "
        f"served by {', '.join(_serving(state)) or '-'}"
    )
    if d.cnn is not None:
        d.console.print(f"cnn: {d.cnn.status}")
