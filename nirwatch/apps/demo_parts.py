"""The running parts of ``nirwatch demo``: the inference worker with its metrics endpoint and
audit trail, the simulated probes, the drift loop, the background CNN and the consumer of the
results, assembled in that order by :func:`assemble` and closed together.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nirwatch.apps.demo_cnn import BackgroundCNN
from nirwatch.apps.demo_drift import DriftLoop
from nirwatch.apps.demo_view import DemoState

if TYPE_CHECKING:
    from rich.console import Console

    from inference.reload import RegistrySource
    from inference.settings import WorkerSettings
    from inference.worker import InferenceWorker
    from ingest.producer import SpectrumProducer
    from ingest.settings import IngestSettings
    from nirwatch.metrics import WorkerMetrics
    from nirwatch.models.registry import ModelRegistry
    from nirwatch.records.audit import SQLiteAuditTrail
    from nirwatch.settings import KafkaSettings
    from nirwatch.simulation.simulator import Drift, TabletLineSimulator

#: Tansu's first group assignment takes session_timeout_ms / 2: short, so predictions show fast.
DEMO_SESSION_TIMEOUT_MS = 2000


@dataclass
class DemoParts:
    """The demo's running parts, built by :func:`assemble` and closed together."""

    args: argparse.Namespace
    console: Console
    state: DemoState
    loop: DriftLoop
    metrics: WorkerMetrics
    sim: TabletLineSimulator
    drift: Drift | None
    producer: SpectrumProducer
    worker: InferenceWorker
    audit: SQLiteAuditTrail
    server: Any
    cnn: BackgroundCNN | None
    consumer: Any
    product: str
    probes_stop: threading.Event
    worker_stop: threading.Event

    @property
    def lab_every(self) -> int:
        return 3 if self.drift is not None else 10  # the drift story needs lab values soon

    def keep_for_lab(self, batch: Any, row: int) -> None:
        if int(batch.indices[row]) % self.lab_every == 0:
            self.loop.buffer.add_spectrum(batch.sample_ids[row], batch.spectra[row].copy())

    def probes_main(self) -> None:
        from ingest.streaming import stream_simulator

        stream_simulator(
            self.sim, self.producer, stop=self.probes_stop, product=self.product,
            lab_every=self.lab_every, lab_delay_s=5.0, on_spectrum=self.keep_for_lab,
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        worker_dl = sum(
            s.value
            for m in self.metrics.dead_lettered.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        return {
            "sent": self.producer.sent,
            "dead_lettered": self.producer.dead_lettered + int(worker_dl),
        }

    def notes(self) -> list[str]:
        return [self.cnn.status + "."] if self.cnn is not None else []

    def close(self) -> None:
        self.probes_stop.set()
        self.worker_stop.set()
        if self.cnn is not None:
            self.cnn.stop()
        self.consumer.close()
        self.producer.close(timeout=5)
        self.audit.close()
        if self.server is not None:
            self.server.shutdown()


def assemble(
    args: argparse.Namespace,
    ingest: IngestSettings,
    hmac_key: str | None,
    metrics_port: int,
    console: Console,
    version: str,
) -> DemoParts:
    """Worker (with its metrics endpoint and audit trail), probes, drift loop, CNN, consumer."""
    from inference.worker import InferenceWorker
    from ingest.producer import SpectrumProducer
    from nirwatch.simulation.simulator import Drift, ProbeSpec, TabletLineSimulator

    kafka = ingest.kafka
    worker_settings, metrics, model_registry, source = _worker_parts(
        args, kafka, hmac_key, metrics_port
    )
    server, metrics_url = demo_metrics_server(worker_settings.metrics_port, metrics.registry)
    probes = [ProbeSpec(f"probe-{i + 1}", args.rate) for i in range(args.probes)]
    drift = Drift(args.drift, onset_s=args.drift_at) if args.scenario == "drift" else None
    sim = TabletLineSimulator(probes, drift=drift, seed=ingest.seed)
    probes_stop, worker_stop = threading.Event(), threading.Event()
    producer = SpectrumProducer(ingest, source="simulator", expected_grid=sim.grid)
    audit = open_demo_audit(args.registry)
    worker = InferenceWorker(worker_settings, source, metrics, worker_stop, audit=audit)
    console.print(
        f"nirwatch demo: {args.probes} probes x {args.rate:g}/s on {kafka.bootstrap}\n"
        f"model {version} from {args.registry}\nmetrics {metrics_url}\n"
        f"audit trail {audit.path} (nirwatch audit --db {audit.path})"
        + (f"\ndrift {args.drift} switched on at {args.drift_at:g} s" if drift else "")
    )
    loop = DriftLoop(metrics, model_registry, hmac_key, retrain=drift is not None)
    cnn = _background_cnn(args, model_registry)
    state = DemoState(time.time(), kafka.topic_lab_results, metrics_url)
    return DemoParts(
        args=args, console=console, state=state, loop=loop, metrics=metrics, sim=sim,
        drift=drift, producer=producer, worker=worker, audit=audit, server=server, cnn=cnn,
        consumer=_results_consumer(kafka), product=ingest.product,
        probes_stop=probes_stop, worker_stop=worker_stop,
    )  # fmt: skip


def _worker_parts(
    args: argparse.Namespace, kafka: KafkaSettings, hmac_key: str | None, metrics_port: int
) -> tuple[WorkerSettings, WorkerMetrics, ModelRegistry, RegistrySource]:
    """The worker's settings, metrics and model source (the champion loaded now)."""
    from prometheus_client import CollectorRegistry

    from inference.reload import RegistrySource
    from inference.settings import WorkerSettings
    from nirwatch.metrics import WorkerMetrics
    from nirwatch.models.bundle import load_bundle
    from nirwatch.models.registry import ModelRegistry
    from nirwatch.settings import load_settings

    worker_settings = load_settings(
        WorkerSettings, kafka=kafka, registry_dir=args.registry, metrics_port=metrics_port,
        session_timeout_ms=DEMO_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=DEMO_SESSION_TIMEOUT_MS // 4, group_id="nirwatch-demo",
    )  # fmt: skip
    if worker_settings.torch_threads:
        import torch  # only now: the CNN's CPU threads, as the worker CLI does

        torch.set_num_threads(worker_settings.torch_threads)
    metrics = WorkerMetrics(CollectorRegistry())
    model_registry = ModelRegistry(args.registry, hmac_key=hmac_key)
    source = RegistrySource(
        model_registry,
        lambda p: load_bundle(p, hmac_key=hmac_key, device=worker_settings.device),
        metrics,
        worker_settings.reload_interval_s,
    )
    source.current()
    return worker_settings, metrics, model_registry, source


def demo_metrics_server(port: int, registry: Any) -> tuple[Any | None, str]:
    """The worker's /metrics on ``port`` (loopback), and what the table shows for it.

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
    except OSError:  # port taken (another demo or worker): any free one will do
        port = free_port()
        server, _ = start_http_server(port, "127.0.0.1", registry)
    return server, f"http://127.0.0.1:{port}/metrics"


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
