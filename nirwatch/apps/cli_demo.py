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

Every service module is imported inside :func:`run`, so ``nirwatch`` stays light to import.
The drift loop lives in :mod:`nirwatch.apps.demo_drift`, the live table (plain lines when the
output is not a terminal) in :mod:`nirwatch.apps.demo_view`.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nirwatch.apps.demo_cnn import DEFAULT_EPOCHS, DEFAULT_MEMBERS, BackgroundCNN
from nirwatch.apps.demo_drift import DriftLoop, start_thread
from nirwatch.apps.demo_view import RECENT, DemoState, LiveView, PlainView, plain_lines, render
from nirwatch.errors import NirwatchError
from nirwatch.signals import stop_on_signals

if TYPE_CHECKING:
    from nirwatch.messages.wire import Prediction
    from nirwatch.records.audit import SQLiteAuditTrail
    from nirwatch.settings import KafkaSettings

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = Path("var/demo/registry")
#: Tansu's first group assignment takes session_timeout_ms / 2: short, so predictions show fast.
DEMO_SESSION_TIMEOUT_MS = 2000


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


def open_demo_audit(registry_root: Path) -> SQLiteAuditTrail:
    """The demo's audit trail: SQLite beside its registry (``var/demo/audit.sqlite3``), so
    ``nirwatch audit --db var/demo/audit.sqlite3`` works after ``make demo``."""
    from nirwatch.records.audit import SQLiteAuditTrail

    return SQLiteAuditTrail(registry_root.parent / "audit.sqlite3", synchronous="NORMAL")


def _background_cnn(args: argparse.Namespace, registry: Any) -> BackgroundCNN | None:
    """A CNN to train while PLS serves, when the champion has none and it was not turned off."""
    champion = next((m for m in registry.list() if m.status == "champion"), None)
    if args.cnn_epochs <= 0 or champion is None or champion.has_cnn:
        return None
    return BackgroundCNN(
        registry, args.registry.parent / "staging", epochs=args.cnn_epochs, members=args.cnn_members
    )


def _serving(state: DemoState) -> list[str]:
    """Distinct "model version" pairs of the latest prediction of each probe."""
    return sorted({f"{r.last.model} {r.last.model_version}" for r in state.rows.values()})


def _results_consumer(kafka: KafkaSettings) -> Any:
    """A group-less consumer of the predictions and lab-results topics, from the beginning."""
    from kafka import TopicPartition

    from nirwatch.transport.kafka import make_consumer

    consumer = make_consumer(kafka, None)
    tps = [
        TopicPartition(topic, p)
        for topic in (kafka.topic_predictions, kafka.topic_lab_results)
        for p in sorted(consumer.partitions_for_topic(topic) or {0})
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer


def _drain(consumer: Any, state: DemoState, loop: DriftLoop, timeout_ms: int) -> None:
    """Poll once: predictions to the table and the drift detectors, lab results to both loops."""
    from monitoring.drift_monitor import parse_lab_result
    from nirwatch.messages.wire import decode_prediction

    predictions: list[Prediction] = []
    labs = []
    for tp, records in consumer.poll(timeout_ms=timeout_ms).items():
        for rec in records:
            try:
                if tp.topic == state.lab_topic:
                    lab = parse_lab_result(rec.value)
                    if lab.timestamp >= state.started_at:
                        labs.append(lab)
                else:
                    p = decode_prediction(rec.value)
                    if p.timestamp >= state.started_at:  # spectra of this run only
                        predictions.append(p)
            except NirwatchError as exc:
                log.warning("undecodable record %s:%s: %s", tp.topic, rec.offset, exc)
    for p in predictions:
        state.add(p)
    loop.monitor.observe(predictions)
    loop.monitor.observe_lab(labs)
    for lab in labs:
        loop.buffer.add_lab(lab.sample_id, lab.value)


def run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry
    from rich.console import Console
    from threadpoolctl import threadpool_limits

    from inference.reload import RegistrySource
    from inference.settings import WorkerSettings
    from inference.worker import InferenceWorker
    from ingest.producer import SpectrumProducer
    from ingest.settings import IngestSettings
    from ingest.streaming import stream_simulator
    from nirwatch.metrics import WorkerMetrics
    from nirwatch.models.bundle import load_bundle
    from nirwatch.models.registry import ModelRegistry, RegistrySettings
    from nirwatch.settings import load_settings
    from nirwatch.simulation.simulator import Drift, ProbeSpec, TabletLineSimulator
    from nirwatch.transport.broker import kafka_bootstrap
    from nirwatch.transport.kafka import ensure_topics

    # Worker, probes, broker and training share a few cores: BLAS spinning up a thread per
    # core for every small matrix made a PLS fit 10x slower on a busy 2-core machine.
    threadpool_limits(1)
    stop = threading.Event()  # Ctrl-C / SIGTERM: stop the probes, drain, summarise
    console = Console()
    if not console.is_terminal:  # a log: lines as long as they are, not wrapped at 80 columns
        console = Console(soft_wrap=True)
    ingest = load_settings(IngestSettings)
    reg_settings = load_settings(RegistrySettings)
    hmac_key = reg_settings.key()
    version = ensure_model(args.registry, args.model, hmac_key)
    errors: list[BaseException] = []

    with stop_on_signals(stop), kafka_bootstrap(ingest.kafka.bootstrap) as bootstrap:
        kafka = ingest.kafka.model_copy(update={"bootstrap": bootstrap})
        ingest = ingest.model_copy(update={"kafka": kafka})
        ensure_topics(
            kafka,
            [
                kafka.topic_spectra,
                kafka.topic_predictions,
                kafka.topic_dead_letter,
                kafka.topic_lab_results,
            ],
        )
        worker_settings = load_settings(
            WorkerSettings,
            kafka=kafka,
            registry_dir=args.registry,
            metrics_port=args.metrics_port,
            session_timeout_ms=DEMO_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=DEMO_SESSION_TIMEOUT_MS // 4,
            group_id="nirwatch-demo",
        )
        if worker_settings.torch_threads:
            import torch  # only now: the CNN's CPU threads, as the worker CLI does

            torch.set_num_threads(worker_settings.torch_threads)
        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        model_registry = ModelRegistry(args.registry, hmac_key=hmac_key)
        source = RegistrySource(
            model_registry,
            lambda p: load_bundle(p, hmac_key=hmac_key, device=worker_settings.device),
            metrics,
            worker_settings.reload_interval_s,
        )
        source.current()
        server, metrics_url = demo_metrics_server(args.metrics_port, registry)

        probes = [ProbeSpec(f"probe-{i + 1}", args.rate) for i in range(args.probes)]
        drift = Drift(args.drift, onset_s=args.drift_at) if args.scenario == "drift" else None
        sim = TabletLineSimulator(probes, drift=drift, seed=ingest.seed)
        probes_stop, worker_stop = threading.Event(), threading.Event()
        producer = SpectrumProducer(ingest, source="simulator", expected_grid=sim.grid)
        audit = open_demo_audit(args.registry)
        worker = InferenceWorker(worker_settings, source, metrics, worker_stop, audit=audit)
        console.print(
            f"nirwatch demo: {args.probes} probes x {args.rate:g}/s on {bootstrap}\n"
            f"model {version} from {args.registry}\nmetrics {metrics_url}\n"
            f"audit trail {audit.path} (nirwatch audit --db {audit.path})"
            + (f"\ndrift {args.drift} switched on at {args.drift_at:g} s" if drift else "")
        )
        header = "nirwatch: API content per probe" + (f" ({args.drift} drift)" if drift else "")
        loop = DriftLoop(metrics, model_registry, hmac_key, retrain=drift is not None)
        cnn = _background_cnn(args, model_registry)
        lab_every = 3 if drift is not None else 10  # the drift story needs lab values soon
        state = DemoState(time.time(), kafka.topic_lab_results, metrics_url)

        def keep_for_lab(batch: Any, row: int) -> None:
            if int(batch.indices[row]) % lab_every == 0:
                loop.buffer.add_spectrum(batch.sample_ids[row], batch.spectra[row].copy())

        def probes_main() -> None:
            stream_simulator(
                sim,
                producer,
                stop=probes_stop,
                product=ingest.product,
                lab_every=lab_every,
                lab_delay_s=5.0,
                on_spectrum=keep_for_lab,
            )

        def counts() -> dict[str, int]:
            worker_dl = sum(
                s.value
                for m in metrics.dead_lettered.collect()
                for s in m.samples
                if s.name.endswith("_total")
            )
            return {"sent": producer.sent, "dead_lettered": producer.dead_lettered + int(worker_dl)}

        def notes() -> list[str]:
            return [cnn.status + "."] if cnn is not None else []

        consumer = _results_consumer(kafka)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            worker_thread = start_thread("worker", worker.run, errors)
            live = (
                LiveView(console, lambda: render(state, header, counts(), loop, notes()))
                if console.is_terminal
                else PlainView(console, lambda: plain_lines(state, counts(), loop, notes()))
            )
            with live:
                # Probes start once the worker owns partitions, so latencies are steady-state.
                joined = time.monotonic() + 10
                while not worker.assigned_partitions and time.monotonic() < joined:
                    if stop.wait(0.05) or errors:
                        break
                probes_thread = start_thread("probes", probes_main, errors)
                if cnn is not None:
                    cnn.start()
                while not stop.is_set() and not errors:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    _drain(consumer, state, loop, 200)
                    loop.check(errors)
                    live.update()
                # Stop the probes, then let the worker catch up before it drains and exits.
                probes_stop.set()
                probes_thread.join(timeout=10)
                producer.flush(10)
                catch_up = time.monotonic() + 10
                while state.predictions < producer.sent and time.monotonic() < catch_up:
                    _drain(consumer, state, loop, 200)
                    live.update()
                worker_stop.set()
                worker_thread.join(timeout=30)
                _drain(consumer, state, loop, 200)
                live.update()
            if args.duration is not None and loop.retraining:
                # Unattended: let a started retrain finish so the summary can tell its outcome.
                console.print("waiting for the retrain to finish")
                loop.join(timeout=300)
        finally:
            probes_stop.set()
            worker_stop.set()
            if cnn is not None:
                cnn.stop()
            consumer.close()
            producer.close(timeout=5)
            audit.close()
            if server is not None:
                server.shutdown()
    c = counts()
    first = "-" if state.first_prediction_s is None else f"{state.first_prediction_s:.1f} s"
    console.print()
    console.print(
        f"summary: spectra in {c['sent']}, predictions out {state.predictions}, "
        f"dead-lettered {c['dead_lettered']}, out-of-model "
        f"{sum(r.out_of_model for r in state.rows.values())}, held "
        f"{sum(r.held for r in state.rows.values())}, latency p50 "
        f"{state.percentile(50):.1f} ms p99 {state.percentile(99):.1f} ms, "
        f"first prediction after {first}"
    )
    console.print(f"drift: {loop.status}")
    out_now, n_now = state.recent_out_of_model()
    console.print(
        f"now: out-of-model {out_now} of the latest {n_now} predictions ({RECENT} per probe), "
        f"served by {', '.join(_serving(state)) or '-'}"
    )
    if cnn is not None:
        console.print(f"cnn: {cnn.status}")
    if errors:
        raise NirwatchError(f"demo stopped: {errors[0]!r}")
    return 0


def demo_metrics_server(port: int, registry: Any) -> tuple[Any | None, str]:
    """The demo worker's metrics endpoint on loopback, and what the table shows for it.

    Port 0 is no endpoint, as for every command (:data:`nirwatch.ports.NO_METRICS_PORT`); a
    taken port (another demo or a worker) falls back to any free one.
    """
    from prometheus_client import start_http_server

    from nirwatch.ports import NO_METRICS_PORT
    from nirwatch.transport.broker import free_port

    if port == NO_METRICS_PORT:
        return None, "off (--metrics-port 0)"
    try:
        server, _ = start_http_server(port, "127.0.0.1", registry)
    except OSError:
        port = free_port()
        server, _ = start_http_server(port, "127.0.0.1", registry)
    return server, f"http://127.0.0.1:{port}/metrics"
