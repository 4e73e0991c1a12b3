"""Worker parts without a broker: settings, record encoding, micro-batch offsets, hot reload."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry
from worker_support import LinearPredictor, make_header, mixtures

from inference.batching import IdleFetchWait, MicroBatch, RevocationTracker
from inference.partitioner import CachedKeyPartitioner
from inference.records import (
    check_batch_prediction,
    encode_batch,
    encode_predictions,
    prediction_ids,
)
from inference.reload import RegistrySource
from inference.settings import WorkerSettings
from nirwatch.errors import BundleError, ConfigError, ModelError
from nirwatch.messages.prediction import Prediction, decode_prediction
from nirwatch.metrics import WorkerMetrics
from nirwatch.records.audit import audit_records
from nirwatch.settings import load_settings

Record = namedtuple("Record", "topic partition offset value key")


# -- settings ------------------------------------------------------------------------------


def test_settings_from_env_and_bad_value_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIRWATCH_WORKER_MICRO_BATCH_SIZE", "500")
    monkeypatch.setenv("NIRWATCH_WORKER_DEVICE", "cpu")
    monkeypatch.setenv("NIRWATCH_KAFKA_TOPIC_SPECTRA", "line1.spectra")
    s = load_settings(WorkerSettings)
    assert s.micro_batch_size == 500 and s.device == "cpu" and s.metrics_host == "127.0.0.1"
    assert s.kafka.topic_spectra == "line1.spectra"
    monkeypatch.setenv("NIRWATCH_WORKER_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="NIRWATCH_WORKER_DEVICE"):
        load_settings(WorkerSettings)


def test_settings_refuse_inconsistent_values() -> None:
    with pytest.raises(ConfigError, match="heartbeat_interval_ms"):
        load_settings(WorkerSettings, session_timeout_ms=2000, heartbeat_interval_ms=2000)
    with pytest.raises(ConfigError, match="not both"):
        load_settings(WorkerSettings, registry_dir=Path("r"), bundle_path=Path("b"))


def test_idle_fetch_wait_lengthens_after_a_silence_and_shortens_at_the_first_record() -> None:
    fetcher = type("Fetcher", (), {})()
    fetcher.config = {"fetch_max_wait_ms": 5, "fetch_min_bytes": 1}
    consumer = type("Consumer", (), {"_fetcher": fetcher})()
    wait = IdleFetchWait(consumer, busy_ms=5, idle_ms=500, idle_after_s=2.0)
    assert wait.current_ms == 5 and not wait.idle
    wait.update(got_records=True, now=100.0)
    wait.update(got_records=False, now=101.0)  # a slow line: one second of silence
    assert fetcher.config["fetch_max_wait_ms"] == 5 and not wait.idle
    wait.update(got_records=True, now=101.5)
    wait.update(got_records=False, now=103.4)
    assert not wait.idle
    wait.update(got_records=False, now=103.5)
    assert fetcher.config["fetch_max_wait_ms"] == 500 and wait.idle
    wait.update(got_records=False, now=200.0)
    assert wait.current_ms == 500
    wait.update(got_records=True, now=200.1)
    assert fetcher.config == {"fetch_max_wait_ms": 5, "fetch_min_bytes": 1} and not wait.idle
    # Never shorter while idle than while busy; a client without a fetcher config is left alone.
    assert IdleFetchWait(consumer, busy_ms=50, idle_ms=10).idle_ms == 50
    other = IdleFetchWait(object(), busy_ms=5, idle_ms=100, idle_after_s=0.0)
    other.update(got_records=False)
    assert other.current_ms is None and other.idle


# -- prediction records --------------------------------------------------------------------


def test_encoded_records_equal_prediction_encode_and_decode_back() -> None:
    predictor = LinearPredictor()
    rng = np.random.default_rng(3)
    X = mixtures(rng.uniform(0.2, 0.8, 4), rng)
    X[3] += 5.0  # far outside the calibration
    headers = [make_header(f"p{i}", i) for i in range(4)]
    # Quotes, non-ASCII and % signs must be escaped exactly as json.dumps does.
    headers[2] = dataclasses.replace(headers[2], instrument_id='sonde-µ"%s', product="100% \\ ß")
    bp = predictor.predict(X)
    bp.value = bp.value.copy()
    bp.value[1] = np.nan  # no model could predict this one (PLS value kept)
    values, releasable = encode_predictions(headers, bp, predictor, published_at=123.5)
    assert releasable == [True, False, True, False]
    for h, raw, i in zip(headers, values, range(4), strict=True):
        got = decode_prediction(raw)
        want = Prediction(
            prediction_id=got.prediction_id,
            message_id=h.message_id,
            instrument_id=h.instrument_id,
            sample_id=h.sample_id,
            timestamp=h.timestamp,
            published_at=123.5,
            target="api",
            value=None if i == 1 else float(bp.value[i]),
            model="pls",
            model_version="v1",
            bundle_checksum="sha256-v1",
            product=h.product,
            batch=h.batch,
            unit="fraction",
            fallback_reason="cnn_unavailable",
            cnn_value=None,
            pls_value=float(bp.pls_value[i]),
            t2=float(bp.t2[i]),
            q=float(bp.q[i]),
            t2_limit=predictor.t2_limit_,
            q_limit=predictor.q_limit_,
            out_of_model=i == 3,
            releasable=i in (0, 2),
        )
        assert got == want
        assert raw == want.encode()  # byte-identical to the reference encoder
    assert json.loads(values[3])["out_of_model"] is True


def test_every_prediction_field_is_encoded_as_prediction_encode_writes_it() -> None:
    """Intervals (NaN ones null), too-wide holds and a %-sign in the batch's own values too."""
    predictor = LinearPredictor()
    rng = np.random.default_rng(6)
    headers = [make_header(f"p{i}", i) for i in range(3)]
    bp = predictor.predict(mixtures(rng.uniform(0.2, 0.8, 3), rng))
    bp.interval_low = np.array([1.0, np.nan, 3.5])
    bp.interval_high = np.array([2.0, np.inf, 4.5])
    bp.too_wide = np.array([False, False, True])
    bp.fallback_reason = ["range_end", None, 'q"uote']
    odd = SimpleNamespace(
        version="v%d", checksum="c%s", target="api %", unit="µg", grid=predictor.grid
    )
    values, releasable = encode_predictions(headers, bp, odd, published_at=1.5)  # type: ignore[arg-type]
    assert releasable == [True, True, False]
    for raw in values:
        got = decode_prediction(raw)
        assert raw == got.encode()
        assert (got.model_version, got.bundle_checksum, got.target, got.unit) == (
            "v%d",
            "c%s",
            "api %",
            "µg",
        )
    first, second = (decode_prediction(v) for v in values[:2])
    assert (first.interval_low, first.interval_high) == (1.0, 2.0)
    assert (second.interval_low, second.interval_high) == (None, None)
    assert [f.name for f in dataclasses.fields(Prediction)] == list(json.loads(values[0]))


def test_extrapolation_is_held_but_not_out_of_model() -> None:
    predictor = LinearPredictor()
    X = mixtures(np.array([0.3, 0.5, 0.7]), np.random.default_rng(5))
    headers = [make_header(f"p{i}", i) for i in range(3)]
    bp = predictor.predict(X)
    _, releasable = encode_predictions(headers, bp, predictor, published_at=1.0)
    assert releasable == [True, True, True]  # no range known: nothing held
    bp.outside_range = np.array([False, True, False])
    values, releasable = encode_predictions(headers, bp, predictor, published_at=1.0)
    assert releasable == [True, False, True]
    held = decode_prediction(values[1])
    assert held.value is not None and not held.out_of_model and not held.releasable
    bp.outside_range = np.array([False, True])
    with pytest.raises(ModelError, match=r"outside_range of shape \(2,\), expected \(3,\)"):
        check_batch_prediction(bp, 3)


def test_audit_records_say_exactly_what_is_published() -> None:
    """The worker audits from the encoder's lists, not by parsing its JSON back: both agree."""
    predictor = LinearPredictor()
    rng = np.random.default_rng(4)
    X = mixtures(rng.uniform(0.2, 0.8, 5), rng)
    X[4] += 5.0  # out of model
    headers = [make_header(f"p{i}", i) for i in range(5)]
    headers[1] = dataclasses.replace(headers[1], product='q"uote %d µ', batch="b-7")
    bp = predictor.predict(X)
    bp.value = bp.value.copy()
    bp.value[2] = np.inf  # published as null, audited as None
    bp.cnn_value = np.array([1.0, np.nan, 3.0, 4.0, 5.0])
    bp.fallback_reason = ["cnn_pls_disagree", None, None, "cnn_error", None]
    raw = [f"spectrum-{i}".encode() for i in range(5)]
    enc = encode_batch(headers, bp, predictor, published_at=99.25, raw_values=raw)
    published = [decode_prediction(v) for v in enc.values]
    # Each record carries its raw spectrum's SHA-256, written as Prediction.encode writes it.
    assert [p.spectrum_sha256 for p in published] == [hashlib.sha256(r).hexdigest() for r in raw]
    assert enc.values == [p.encode() for p in published]
    assert enc.audit == audit_records(published, raw)
    assert encode_batch(headers, bp, predictor, 1.0, raw, audit=False).audit == []
    assert enc.audit[2].value is None and enc.audit[4].out_of_model
    assert not enc.audit[4].releasable and enc.audit[0].releasable
    assert encode_batch(headers, bp, predictor, 1.0).audit == []  # no raw values: no audit
    with pytest.raises(ModelError, match="expected 5 raw spectrum values to audit, got 4"):
        encode_batch(headers, bp, predictor, 1.0, raw_values=raw[:4])


def test_prediction_ids_are_unique_time_ordered_uuid7() -> None:
    import uuid

    ids = prediction_ids(1000, now=1_700_000_000.123)
    assert len(set(ids)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    parsed = [uuid.UUID(hex=i) for i in ids]
    assert {u.version for u in parsed} == {7} and {u.variant for u in parsed} == {uuid.RFC_4122}
    assert {int(i[:12], 16) for i in ids} == {1_700_000_000_123}  # unix ms in the top 48 bits
    later = prediction_ids(5, now=1_700_000_000.124)
    assert min(later) > max(ids)  # a later batch sorts after: index appends stay at the edge


def test_prediction_with_wrong_lengths_is_refused() -> None:
    bp = LinearPredictor().predict(mixtures(np.array([0.5, 0.6]), np.random.default_rng(0)))
    with pytest.raises(ModelError, match=r"expected \(3,\)"):
        check_batch_prediction(bp, 3)
    bp.fallback_reason = [None]
    with pytest.raises(ModelError, match="fallback reasons, expected 2"):
        check_batch_prediction(bp, 2)


# -- micro-batch bookkeeping ---------------------------------------------------------------


def test_micro_batch_offsets_and_revocation() -> None:
    a, b = TopicPartition("s", 0), TopicPartition("s", 1)
    batch = MicroBatch()
    batch.add(a, [Record("s", 0, o, b"", b"k") for o in (10, 11)])
    batch.add(b, [Record("s", 1, o, b"", b"k") for o in (5,)])
    batch.add(a, [Record("s", 0, o, b"", b"k") for o in (12, 13)])
    assert len(batch) == 5
    assert batch.first_offset == {a: 10, b: 5}
    offsets = batch.commit_offsets()
    assert offsets[a].offset == 14 and offsets[b].offset == 6
    tracker = RevocationTracker()
    tracker.on_partitions_assigned([a, b])
    tracker.on_partitions_revoked([a])
    assert tracker.assigned == {b}
    tracker.note_dropped(batch.drop(tracker.take_revoked()))
    assert [r.offset for r in batch.records] == [5] and set(batch.commit_offsets()) == {b}
    assert tracker.revoked == set() and tracker.dropped == {a: 10}
    # a comes back to this consumer: its fetch position is past 10..13, so rewind to 10.
    tracker.on_partitions_assigned([a, b])
    assert tracker.take_rewind() == {a: 10} and tracker.dropped == {}
    # Revoked and given back within one poll: nothing was dropped, nothing to rewind.
    tracker.on_partitions_revoked([a, b])
    tracker.on_partitions_assigned([a, b])
    assert tracker.take_revoked() == set() and tracker.take_rewind() == {}
    # Dropped, then assigned elsewhere: forgotten (the new owner starts from the commit).
    tracker.on_partitions_revoked([b])
    tracker.note_dropped(batch.drop(tracker.take_revoked()))
    tracker.on_partitions_assigned([a])
    assert tracker.dropped == {} and tracker.take_rewind() == {} and len(batch) == 0


# -- hot reload from a registry ------------------------------------------------------------


class FakeRegistry:
    """The two registry reads the worker uses, over an in-memory champion."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.reads = 0

    def champion_version(self) -> str | None:
        self.reads += 1
        return self.version

    def champion_entry(self) -> SimpleNamespace | None:
        if self.version is None:
            return None
        # The fake predictors' checksum is their version's (see LinearPredictor).
        return SimpleNamespace(
            version=self.version,
            path=Path("models") / self.version,
            checksum=LinearPredictor(self.version).checksum,
        )


def test_registry_source_reloads_on_promotion_and_keeps_old_on_failure() -> None:
    registry = FakeRegistry()
    now = [0.0]
    loaded: list[Path] = []

    def loader(path: Path) -> LinearPredictor:
        loaded.append(path)
        if path.name == "broken":
            raise BundleError("checksum mismatch in pls.npz")
        return LinearPredictor(path.name)

    reg = CollectorRegistry()
    source = RegistrySource(
        registry, loader, WorkerMetrics(reg), interval_s=5, clock=lambda: now[0]
    )
    with pytest.raises(ModelError, match="no model to serve"):
        source.current()
    registry.version = "v1"
    now[0] = 5
    assert source.current().version == "v1"
    registry.version = "v2"
    now[0] = 6  # within the interval: the registry is not even read
    reads = registry.reads
    assert source.current().version == "v1" and registry.reads == reads
    now[0] = 10
    assert source.current().version == "v2" and source.version == "v2"
    assert reg.get_sample_value("nirwatch_model_reloads_total", {"outcome": "success"}) == 1
    registry.version = "broken"
    now[0] = 15
    assert source.current().version == "v2"  # the old champion keeps serving
    assert reg.get_sample_value("nirwatch_model_reloads_total", {"outcome": "failed"}) == 1
    now[0] = 20
    source.current()  # the same broken version is not retried
    assert loaded.count(Path("models/broken")) == 1
    registry.version = "v3"
    now[0] = 25
    assert source.current().version == "v3"
    assert reg.get_sample_value("nirwatch_model_reloads_total", {"outcome": "success"}) == 2


class _Cluster:
    def __init__(self, n: int) -> None:
        self.n = n

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))


def test_cached_partitioner_places_keys_like_kafkas_murmur2() -> None:
    from kafka.partitioner import DefaultPartitioner

    cached, default = CachedKeyPartitioner(max_keys=8), DefaultPartitioner()
    for n in (3, 6, 7):
        cluster = _Cluster(n)
        for i in range(50):  # more keys than the cache holds: it must stay correct
            key = f"probe-{i}".encode()
            for _ in range(2):
                got = cached.partition("t", key, key, None, None, cluster)
                assert got == default.partition("t", key, key, None, None, cluster)
    assert len(cached._cache) <= 8


# -- stuck group join ----------------------------------------------------------------------


class _Coordinator:
    def __init__(self) -> None:
        self.is_stable = False

    def stable(self) -> bool:
        return self.is_stable


class _Consumer:
    def __init__(self) -> None:
        self._coordinator = _Coordinator()
        self.closed = False

    def close(self, autocommit: bool = True) -> None:
        assert autocommit is False  # never commit offsets of a batch not published
        self.closed = True


def test_a_group_join_stuck_past_group_stall_s_gets_a_new_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from inference import worker as worker_module
    from inference.worker import InferenceWorker

    registry = CollectorRegistry()
    settings = load_settings(WorkerSettings, group_stall_s=5.0)
    w = InferenceWorker(settings, None, WorkerMetrics(registry), threading.Event())  # type: ignore[arg-type]
    fresh = _Consumer()
    monkeypatch.setattr(w, "_new_consumer", lambda: fresh)
    clock = [100.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])

    old = _Consumer()
    assert w._check_group(old) is old  # joining: the clock starts
    clock[0] += 4.9
    assert w._check_group(old) is old and not old.closed
    old._coordinator.is_stable = True  # the join completed: the clock resets
    assert w._check_group(old) is old
    old._coordinator.is_stable = False
    clock[0] += 4.9
    assert w._check_group(old) is old  # a new join, timed from here
    clock[0] += 5.0
    assert w._check_group(old) is fresh and old.closed
    labels = {"operation": "group_stall"}
    assert registry.get_sample_value("nirwatch_kafka_errors_total", labels) == 1
