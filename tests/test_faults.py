"""Faults against the real broker: workers killed with SIGKILL, a broker restart, monitoring down.

Each test runs ``nirwatch worker`` as a separate process (the real CLI, a real PLS bundle) and
feeds it through the ingest edge's :class:`~ingest.producer.SpectrumProducer`. What is asserted
is delivery: every spectrum sent has at least one prediction (zero lost) and every duplicate is
a redelivery of the same message id. Figures (counts, duplicates, recovery times) are printed
with ``-s`` and reported in docs/results/reliability.md; no assertion depends on a duration.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from support import read_topic, wait_until
from worker_support import WL, make_header, mixtures

from ingest.producer import SpectrumProducer
from ingest.settings import IngestSettings
from nirwatch.messages.prediction import Prediction, decode_prediction
from nirwatch.messages.spectrum import encode_spectrum
from nirwatch.records.audit import SQLiteAuditTrail, audit_records
from nirwatch.settings import KafkaSettings
from nirwatch.transport.broker import EmbeddedBroker, free_port
from nirwatch.transport.kafka import ensure_topics, make_consumer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
FIGURES: dict[str, dict[str, float | int | str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    for name, figs in FIGURES.items():
        print(f"\n{name}: {figs}", file=sys.stderr)


@pytest.fixture(scope="module")
def pls_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PLS bundle (MSC + CV-chosen PLS, T²/Q statistics) on synthetic mixtures."""
    from nirwatch.chemometrics.diagnostics import CalibrationStatistics
    from nirwatch.chemometrics.pls import PLSComponentsCV
    from nirwatch.chemometrics.scatter import MultiplicativeScatterCorrection
    from nirwatch.models.bundle import BundleContents, data_hash, write_bundle

    rng = np.random.default_rng(0)
    y = rng.uniform(0.1, 0.9, 120) * 250
    X = mixtures(y / 250, rng).astype(np.float64)
    search = PLSComponentsCV([MultiplicativeScatterCorrection()], max_components=6, cv=5).fit(X, y)
    contents = BundleContents(
        target="api",
        unit="mg",
        wavelengths=WL,
        data_hash=data_hash(X, y),
        pls=search.best_estimator_,
        statistics=CalibrationStatistics().fit(X),
        fallback_limit=3 * search.rmsecv_,
    )
    return write_bundle(contents, tmp_path_factory.mktemp("bundle") / "pls")


# ---- a worker process --------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """``nirwatch worker`` in a child process with its own metrics endpoint."""

    kafka: KafkaSettings
    bundle: Path
    group_id: str
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        k = self.kafka
        env = {
            **os.environ,
            **k.env(),
            "NIRWATCH_WORKER_SESSION_TIMEOUT_MS": "2000",
            "NIRWATCH_WORKER_HEARTBEAT_INTERVAL_MS": "500",
            "NIRWATCH_WORKER_IDLE_POLL_MS": "100",
            # Workers of one test share one audit trail (SQLite serialises their appends).
            "NIRWATCH_AUDIT_BACKEND": "sqlite",
            "NIRWATCH_AUDIT_PATH": str(self.log_path.parent / "worker-audit.sqlite3"),
        }
        cmd = [
            sys.executable,
            "-m",
            "nirwatch.apps.cli",
            "-v",
            "worker",
            "--bundle",
            str(self.bundle),
        ]
        cmd += ["--group-id", self.group_id, "--metrics-port", str(self.metrics_port)]
        cmd += ["--micro-batch-size", "256", "--max-wait-ms", "20", "--device", "cpu"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        wait_until(lambda: self.metrics() is not None, 60, f"worker metrics ({self.log_tail()})")
        return self

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]] | None:
        """Samples by name from the worker's /metrics, or None while it does not answer."""
        if not self.alive:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        out: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name].append((s.labels, s.value))
        return out

    def value(self, name: str) -> float:
        m = self.metrics() or {}
        return sum(v for _, v in m.get(name, []))

    def partitions(self) -> set[int]:
        """Spectra partitions this worker reports lag for (the ones it owns)."""
        m = self.metrics() or {}
        return {
            int(labels["partition"])
            for labels, _ in m.get("nirwatch_consumer_lag_messages", [])
            if labels.get("topic") == self.kafka.topic_spectra
        }

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Started workers are appended here and always stopped at the end."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.alive:
            w.proc.kill()  # type: ignore[union-attr]
            w.proc.wait()  # type: ignore[union-attr]


# ---- load and bookkeeping ----------------------------------------------------------------


@dataclass
class Load:
    """Spectra sent at a steady rate from a thread through the ingest producer."""

    producer: SpectrumProducer
    n: int
    rate: float
    instruments: list[str]
    seed: int = 0
    sent: dict[str, bytes] = field(default_factory=dict)  # message_id -> raw value
    sample_of: dict[str, str] = field(default_factory=dict)
    thread: threading.Thread | None = None

    def _run(self) -> None:
        rng = np.random.default_rng(self.seed)
        X = mixtures(rng.uniform(0.2, 0.8, self.n), rng)
        t0 = time.monotonic()
        for i in range(self.n):
            h = make_header(self.instruments[i % len(self.instruments)], self.seed * 10**6 + i)
            raw = encode_spectrum(h, X[i])
            assert self.producer.send_raw(raw, h.instrument_id)
            self.sent[h.message_id] = raw
            self.sample_of[h.message_id] = h.sample_id
            ahead = t0 + (i + 1) / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        self.producer.flush(60)

    def start(self) -> Load:
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float = 120) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "load generator did not finish"


def ingest_producer(kafka: KafkaSettings) -> SpectrumProducer:
    settings = IngestSettings(kafka=kafka, delivery_timeout_ms=8000, max_block_ms=4000)
    return SpectrumProducer(settings, source="fault-test")


def collect_predictions(
    kafka: KafkaSettings, wanted: set[str], timeout_s: float = 120
) -> list[Prediction]:
    """Every prediction on the topic, waiting until each wanted message id has one."""
    seen: set[str] = set()
    done = 0

    def all_seen(records: list[Any]) -> bool:
        nonlocal done
        seen.update(decode_prediction(r.value).message_id for r in records[done:])
        done = len(records)
        return wanted <= seen

    records = read_topic(
        kafka, kafka.topic_predictions, timeout_s=timeout_s, until=all_seen, settle_polls=3
    )
    return [decode_prediction(r.value) for r in records]


def delivery_figures(sent: set[str], preds: list[Prediction]) -> dict[str, int]:
    """Lost and duplicated counts; asserts every duplicate is the same spectrum republished."""
    per_message = collections.Counter(p.message_id for p in preds)
    assert len({p.prediction_id for p in preds}) == len(preds), "prediction ids must be unique"
    by_id: dict[str, list[Prediction]] = collections.defaultdict(list)
    for p in preds:
        by_id[p.message_id].append(p)
    for mid, group in by_id.items():
        if len(group) > 1:  # traceable: same message, same sample, same instrument
            assert len({(p.sample_id, p.instrument_id) for p in group}) == 1, mid
    return {
        "sent": len(sent),
        "predictions": len(preds),
        "lost": len(sent - set(per_message)),
        "unexpected": len(set(per_message) - sent),
        "duplicated_messages": sum(1 for m in sent if per_message[m] > 1),
        "duplicate_predictions": sum(n - 1 for m, n in per_message.items() if m in sent),
    }


def where_lost(kafka: KafkaSettings, group: str, lost: set[str]) -> str:
    """Partition/offset of lost spectra and the group's committed offsets (failure message)."""
    from nirwatch.messages.spectrum import decode_spectrum

    spectra = read_topic(kafka, kafka.topic_spectra, timeout_s=20, settle_polls=0)
    found = [
        (r.partition, r.offset) for r in spectra if decode_spectrum(r.value)[0].message_id in lost
    ]
    high: dict[int, int] = {}
    for r in spectra:
        high[r.partition] = max(high.get(r.partition, 0), r.offset + 1)
    g = make_consumer(kafka, group)
    try:
        committed = {p: g.committed(TopicPartition(kafka.topic_spectra, p)) for p in sorted(high)}
    finally:
        g.close(autocommit=False)
    offsets: dict[int, list[int]] = collections.defaultdict(list)
    for r in read_topic(kafka, kafka.topic_predictions, timeout_s=20, settle_polls=0):
        offsets[r.partition].append(r.offset)
    phigh = {p: max(o) + 1 for p, o in offsets.items()}
    pinfo = {p: (len(o), min(o), max(o), len(set(o))) for p, o in offsets.items() if o}
    return (
        f"lost at (partition, offset) {sorted(found)}; committed {committed}; high {high}; "
        f"predictions topic (n, min, max, distinct offsets) {pinfo}, high {phigh}"
    )


def shared(pa: set[int], pb: set[int]) -> bool:
    """Both own partitions, together all three, none twice (lag series lag a batch behind)."""
    return bool(pa and pb) and not pa & pb and len(pa | pb) == 3


def published_at_least(w: WorkerProcess, n: int) -> Callable[[], bool]:
    return lambda: w.value("nirwatch_predictions_total") >= n


# ---- the faults ----------------------------------------------------------------------------


class UnauditedPublicationError(AssertionError):
    """A prediction on the topic has no audit record."""


def test_kill9_under_load_then_restart_loses_nothing(
    kafka_settings: KafkaSettings, pls_bundle: Path, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topic_spectra, kafka_settings.topic_predictions])
    group = f"faults-{uuid.uuid4().hex[:6]}"
    producer = ingest_producer(kafka_settings)
    # Offered faster than one worker drains on this machine: the worker is always mid-batch.
    load = Load(producer, n=15000, rate=4000, instruments=[f"probe-{i}" for i in range(6)])
    load.start()
    kills, recovery = 0, []
    w = WorkerProcess(kafka_settings, pls_bundle, group, tmp_path / "w0.log").start()
    workers.append(w)
    for cycle in range(1, 4):  # SIGKILL three times at arbitrary points of the stream
        wait_until(published_at_least(w, 1500), 90, "a busy worker")
        w.kill9()
        kills += 1
        t_kill = time.monotonic()
        w = WorkerProcess(kafka_settings, pls_bundle, group, tmp_path / f"w{cycle}.log").start()
        workers.append(w)
        wait_until(published_at_least(w, 1), 60, "the restarted worker to publish")
        recovery.append(round(time.monotonic() - t_kill, 1))
    load.join()
    producer.close()
    preds = collect_predictions(kafka_settings, set(load.sent))
    figs = delivery_figures(set(load.sent), preds)
    assert figs["lost"] == 0 and figs["unexpected"] == 0, figs

    # The workers' own audit trail: one record per publication, none for what was not published.
    with SQLiteAuditTrail(tmp_path / "worker-audit.sqlite3") as trail:
        audited = [r.prediction_id for r in trail.query(limit=None)]
    published = {p.prediction_id for p in preds}
    FIGURES["kill9_worker_audit"] = {
        "audit_records": len(audited),
        "distinct": len(set(audited)),
        "published_not_audited": len(published - set(audited)),
        "audited_not_published": len(set(audited) - published),
    }
    assert len(audited) == len(set(audited)), "a prediction id audited twice"

    # Rebuilt from the topic: every publication exactly once, duplicates traceable.
    with SQLiteAuditTrail(tmp_path / "audit.sqlite3") as trail:
        raws = [load.sent[p.message_id] for p in preds]
        assert trail.append_many(audit_records(preds, raws)) == len(preds)
        assert trail.append_many(audit_records(preds, raws)) == 0  # re-audit adds nothing
        assert trail.count() == len(preds)
        dups = trail.duplicate_message_ids()
        assert len(dups) == figs["duplicated_messages"]
        assert sum(n - 1 for n in dups.values()) == figs["duplicate_predictions"]
        for mid in list(dups)[:20]:
            rows = trail.query(message_id=mid)
            assert len(rows) == dups[mid] and len({r.spectrum_sha256 for r in rows}) == 1

    assert w.terminate() == 0, w.log_tail()  # SIGTERM: drains and exits cleanly
    FIGURES["kill9_restart"] = {
        **figs,
        "kills": kills,
        "s_kill_to_first_prediction_of_restart": str(recovery),
        "producer_acked": producer.acked,
        "producer_failed": producer.failed,
    }
    if published - set(audited):
        raise UnauditedPublicationError(
            f"{len(published - set(audited))} of {len(published)} publications not audited"
        )


def test_two_workers_one_killed_the_other_takes_over(
    kafka_settings: KafkaSettings, pls_bundle: Path, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topic_spectra, kafka_settings.topic_predictions])
    group = f"faults-{uuid.uuid4().hex[:6]}"
    a = WorkerProcess(kafka_settings, pls_bundle, group, tmp_path / "a.log").start()
    b = WorkerProcess(kafka_settings, pls_bundle, group, tmp_path / "b.log").start()
    workers += [a, b]
    producer = ingest_producer(kafka_settings)
    # Enough instruments that every partition gets spectra; keep sending until both work.
    warm = Load(producer, n=300, rate=300, instruments=[f"probe-{i}" for i in range(12)]).start()
    warm.join()
    wait_until(lambda: shared(a.partitions(), b.partitions()), 60, "a and b to share partitions")
    load = Load(producer, n=2000, rate=400, instruments=[f"probe-{i}" for i in range(12)], seed=1)
    load.start()
    wait_until(lambda: b.value("nirwatch_predictions_total") >= 300, 90, "b to be busy")
    b_partitions = b.partitions()
    b.kill9()
    t_kill = time.monotonic()
    wait_until(lambda: a.partitions() == {0, 1, 2}, 60, "a to take over b's partitions")
    t_takeover = time.monotonic()
    load.join()
    producer.close()
    sent = set(warm.sent) | set(load.sent)
    preds = collect_predictions(kafka_settings, sent)
    figs = delivery_figures(sent, preds)
    lost = sent - {p.message_id for p in preds}
    if lost:
        print(f"LOST {figs}\n{where_lost(kafka_settings, group, lost)}", file=sys.stderr)
        print(
            f"per partition: {collections.Counter(p.instrument_id for p in preds)}", file=sys.stderr
        )
        print(f"A log:\n{a.log_tail()}\nB log:\n{b.log_tail()}", file=sys.stderr)
    assert not lost, figs
    assert figs["unexpected"] == 0, figs
    assert a.terminate() == 0, a.log_tail()
    FIGURES["two_workers_one_killed"] = {
        **figs,
        "b_partitions_before_kill": str(sorted(b_partitions)),
        "s_from_kill_to_takeover": round(t_takeover - t_kill, 1),
    }


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, KafkaSettings]]:
    """A broker of this test's own (it gets killed), with its topics created."""
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "broker.log").start()
    tag = uuid.uuid4().hex[:6]
    kafka = KafkaSettings(
        bootstrap=broker.bootstrap,
        topic_spectra=f"r{tag}.spectra",
        topic_predictions=f"r{tag}.predictions",
        topic_dead_letter=f"r{tag}.dlq",
        partitions=3,
    )
    try:
        ensure_topics(kafka, topic_names(kafka))
        yield broker, kafka
    finally:
        broker.stop()


def topic_names(kafka: KafkaSettings) -> list[str]:
    return [kafka.topic_spectra, kafka.topic_predictions, kafka.topic_dead_letter]


def test_broker_restart_worker_and_producer_recover(
    own_broker: tuple[EmbeddedBroker, KafkaSettings],
    pls_bundle: Path,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    broker, kafka = own_broker
    w = WorkerProcess(kafka, pls_bundle, "restart", tmp_path / "w.log").start()
    workers.append(w)
    producer = ingest_producer(kafka)
    first = Load(producer, n=300, rate=300, instruments=["probe-1", "probe-2"]).start()
    first.join()
    assert not delivery_figures(set(first.sent), collect_predictions(kafka, set(first.sent)))[
        "lost"
    ]
    broker.stop(kill=True)
    time.sleep(5)
    broker.start()  # same port; Tansu keeps nothing in memory: topics come back empty
    ensure_topics(kafka, topic_names(kafka))
    t_up = time.monotonic()
    # The same producer object and the same worker process carry on by themselves.
    second = Load(producer, n=300, rate=300, instruments=["probe-1", "probe-2"], seed=2)
    second.start().join()
    preds = collect_predictions(kafka, set(second.sent), timeout_s=60)
    t_done = time.monotonic()
    figs = delivery_figures(set(second.sent), preds)
    assert figs["lost"] == 0, (figs, w.log_tail())
    assert w.alive, w.log_tail()
    producer.close()
    FIGURES["broker_restart"] = {
        **figs,
        "s_from_broker_up_to_all_predicted": round(t_done - t_up, 1),
        "kafka_errors_total": w.value("nirwatch_kafka_errors_total"),
        "broker_up_after": w.value("nirwatch_broker_up"),
        "producer_recreated": producer.recreated,
        "producer_failed_sends": producer.failed,
    }
    assert w.terminate() == 0, w.log_tail()


def test_broker_outage_is_reported_in_metrics(
    own_broker: tuple[EmbeddedBroker, KafkaSettings],
    pls_bundle: Path,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    broker, kafka = own_broker
    w = WorkerProcess(kafka, pls_bundle, "outage", tmp_path / "w.log").start()
    workers.append(w)
    wait_until(lambda: w.value("nirwatch_broker_up") == 1, 30, "broker_up 1 at start")
    broker.stop(kill=True)
    t_down = time.monotonic()
    wait_until(lambda: w.value("nirwatch_broker_up") == 0, 30, "broker_up to drop to 0")
    t_seen = time.monotonic()
    broker.start()
    ensure_topics(kafka, topic_names(kafka))
    wait_until(lambda: w.value("nirwatch_broker_up") == 1, 60, "broker_up back to 1")
    FIGURES["broker_outage_metric"] = {
        "s_to_broker_up_0": round(t_seen - t_down, 1),
        "s_from_restart_to_broker_up_1": round(time.monotonic() - t_seen, 1),
    }
    assert w.alive, w.log_tail()


def test_inference_goes_on_when_monitoring_is_down_or_stalls(
    kafka_settings: KafkaSettings, pls_bundle: Path, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """No Prometheus scrapes here (the worker pushes nothing), and stuck scrapers cannot stall it."""
    ensure_topics(kafka_settings, [kafka_settings.topic_spectra, kafka_settings.topic_predictions])
    w = WorkerProcess(kafka_settings, pls_bundle, f"mon-{uuid.uuid4().hex[:6]}", tmp_path / "w.log")
    workers.append(w.start())
    stuck = []
    for _ in range(20):  # scrapers that connect, send half a request and never read
        s = socket.create_connection(("127.0.0.1", w.metrics_port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        stuck.append(s)
    try:
        producer = ingest_producer(kafka_settings)
        load = Load(producer, n=600, rate=600, instruments=["probe-1", "probe-2", "probe-3"])
        load.start().join()
        producer.close()
        preds = collect_predictions(kafka_settings, set(load.sent))
        figs = delivery_figures(set(load.sent), preds)
        assert figs["lost"] == 0, figs
    finally:
        for s in stuck:
            s.close()
    assert w.value("nirwatch_predictions_total") >= 600  # the endpoint still answers
    assert w.terminate() == 0, w.log_tail()
    FIGURES["monitoring_down"] = {**figs, "stalled_scrapers": len(stuck)}
