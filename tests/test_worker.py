"""Inference worker against the real broker: delivery, dead letters, drain, resume, metrics."""

from __future__ import annotations

import collections
import hashlib
import signal
from pathlib import Path

import numpy as np
import pytest
from support import read_predictions, wait_until
from worker_support import (
    LinearPredictor,
    ScriptedPredictor,
    SwitchableSource,
    committed_total,
    malformed,
    produce,
    spectra_messages,
    start_worker,
    worker_settings,
)

from nirwatch.messages.deadletter import read_dead_letters
from nirwatch.models.predictor import BatchPrediction
from nirwatch.records.audit import AuditSettings, open_audit_trail
from nirwatch.settings import KafkaSettings
from nirwatch.signals import stop_on_signals
from nirwatch.transport.broker import EmbeddedBroker, free_port

pytestmark = pytest.mark.kafka

INSTRUMENTS = [f"probe-{i}" for i in range(6)]


def assert_in_order(preds: list, sent: list) -> None:
    """Per instrument, predictions appear in the order the spectra were sent."""
    by_inst: dict[str, list[str]] = collections.defaultdict(list)
    for p in preds:
        by_inst[p.instrument_id].append(p.message_id)
    for inst in {h.instrument_id for _, _, h in sent}:
        want = [h.message_id for _, _, h in sent if h.instrument_id == inst]
        assert by_inst[inst] == want, f"order broken for {inst}"


def test_n_in_exactly_n_out_in_order_with_metrics(kafka_settings: KafkaSettings) -> None:
    sent = spectra_messages(300, INSTRUMENTS)
    produce(kafka_settings, [(k, v) for k, v, _ in sent])
    settings = worker_settings(kafka_settings)
    w = start_worker(settings)
    preds = read_predictions(kafka_settings, expected=300)
    wait_until(lambda: committed_total(kafka_settings, settings.group_id) == 300, what="commit")
    w.halt()

    assert len(preds) == 300
    assert collections.Counter(p.message_id for p in preds) == collections.Counter(
        h.message_id for _, _, h in sent
    )
    assert_in_order(preds, sent)
    p = preds[0]
    assert p.model_version == "v1" and p.bundle_checksum == "sha256-v1" and p.model == "pls"
    assert p.fallback_reason == "cnn_unavailable" and p.target == "api"
    assert p.value is not None and 0.0 < p.value < 1.0 and p.releasable and not p.out_of_model
    assert p.t2 is not None and p.q is not None and p.t2_limit and p.q_limit
    # Without an audit trail too, every prediction names the exact bytes it was made from.
    raw = {h.message_id: v for _, v, h in sent}
    assert all(q.spectrum_sha256 == hashlib.sha256(raw[q.message_id]).hexdigest() for q in preds)
    # Metrics, read from this worker's own registry.
    assert w.value("nirwatch_spectra_consumed_total", {"instrument": "probe-0"}) == 50
    assert (
        sum(
            w.value("nirwatch_predictions_total", {"instrument": i, "model": "pls"})
            for i in INSTRUMENTS
        )
        == 300
    )
    assert w.value("nirwatch_fallbacks_total", {"reason": "cnn_unavailable"}) == 300
    assert w.value("nirwatch_batch_size_sum") == 300
    assert w.value("nirwatch_batch_size_count") == w.worker.batches
    assert w.value("nirwatch_end_to_end_latency_seconds_count") == 300
    assert w.value("nirwatch_inference_seconds_count") == w.worker.batches
    for stage in ("poll", "decode", "predict", "publish", "commit"):
        count = w.value("nirwatch_batch_stage_seconds_count", {"stage": stage})
        assert count == w.worker.batches, stage
    assert w.value("nirwatch_batch_stage_seconds_count", {"stage": "audit"}) == 0  # no trail
    assert (
        w.value(
            "nirwatch_model_info",
            {
                "version": "v1",
                "checksum": "sha256-v1",
                "target": "api",
                "unit": "fraction",
                "grid": "lin:600:1898:2",
                "cnn": "none",  # a PLS-only predictor: its PLS serving is no fallback
            },
        )
        == 1
    )
    assert w.value("nirwatch_broker_up") == 1
    assert w.value("nirwatch_hotelling_t2_limit") == pytest.approx(p.t2_limit)
    lag = [
        w.value(
            "nirwatch_consumer_lag_messages",
            {"topic": kafka_settings.topic_spectra, "partition": str(i)},
        )
        for i in range(3)
    ]
    assert lag == [0, 0, 0]


def test_idle_worker_fetches_with_the_long_wait_and_still_serves_at_once_busy(
    kafka_settings: KafkaSettings,
) -> None:
    """kafka-python's own fetcher carries the idle wait (what makes an idle worker cheap); the
    first records after the idle spell are served and the short wait comes back."""
    settings = worker_settings(
        kafka_settings, fetch_max_wait_ms=5, idle_fetch_max_wait_ms=150, idle_after_s=0.5
    )
    w = start_worker(settings)
    wait_until(lambda: len(w.worker.assigned_partitions) > 0, what="assignment")
    wait_until(lambda: w.worker.fetch_wait.idle, what="idle")
    assert w.worker.fetch_wait.current_ms == 150
    sent = spectra_messages(40, INSTRUMENTS, seed=5)
    produce(kafka_settings, [(k, v) for k, v, _ in sent])
    assert len(read_predictions(kafka_settings, expected=40)) == 40
    wait_until(lambda: w.worker.published == 40, what="published")
    w.halt()
    assert w.worker.fetch_wait.busy_ms == 5 and w.worker.batches >= 1


def test_each_malformed_message_is_dead_lettered_while_good_ones_flow(
    kafka_settings: KafkaSettings,
) -> None:
    good = spectra_messages(40, ["probe-0"])
    bad = malformed(good[0][1])
    # Interleave: a bad message after every few good ones, all on the same instrument key.
    messages: list[tuple[str | None, bytes | None]] = []
    bad_items = list(bad.items())
    for i, (k, v, _) in enumerate(good):
        messages.append((k, v))
        if i % 4 == 0 and bad_items:
            messages.append(("probe-0", bad_items.pop()[1]))
    messages.append(("probe-0", None))  # a tombstone: no value at all
    produce(kafka_settings, messages)
    w = start_worker(worker_settings(kafka_settings))
    preds = read_predictions(kafka_settings, expected=40)
    letters = read_dead_letters(kafka_settings, expected=len(bad) + 1, timeout_s=30)
    w.halt()

    assert [p.message_id for p in preds] == [h.message_id for _, _, h in good]
    got = collections.Counter(d.reason for d in letters)
    want = collections.Counter([r.removesuffix("_inf") for r in bad] + ["too_short"])
    assert got == want
    for d in letters:
        assert (
            d.stage == "worker" and d.detail and d.source.startswith(kafka_settings.topic_spectra)
        )
    originals = {v for v in bad.values()}
    assert {d.value for d in letters if d.value is not None} == originals
    for reason, n in want.items():
        assert w.value("nirwatch_dead_lettered_total", {"reason": reason}) == n


def test_sigterm_drains_the_batch_in_hand_and_commits(kafka_settings: KafkaSettings) -> None:
    sent = spectra_messages(50, INSTRUMENTS)
    produce(kafka_settings, [(k, v) for k, v, _ in sent])
    # The worker would hold this batch for a minute waiting for more: only the stop drains it.
    settings = worker_settings(kafka_settings, micro_batch_size=1000, max_wait_ms=60_000)
    with stop_on_signals() as stop:
        w = start_worker(settings, stop=stop)
        wait_until(lambda: w.worker.holding == 50, what="the worker to hold all 50")
        assert read_predictions(kafka_settings, expected=1, timeout_s=1) == []
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
        w.thread.join(30)
        assert not w.thread.is_alive() and not w.errors
    preds = read_predictions(kafka_settings, expected=50)
    assert len(preds) == 50
    assert committed_total(kafka_settings, settings.group_id) == 50


def test_restarted_worker_resumes_from_committed_offset(kafka_settings: KafkaSettings) -> None:
    first = spectra_messages(120, INSTRUMENTS, seed=1)
    produce(kafka_settings, [(k, v) for k, v, _ in first])
    settings = worker_settings(kafka_settings)
    w1 = start_worker(settings)
    read_predictions(kafka_settings, expected=120)
    wait_until(lambda: committed_total(kafka_settings, settings.group_id) == 120, what="commit")
    w1.halt()

    second = spectra_messages(80, INSTRUMENTS, seed=2)
    produce(kafka_settings, [(k, v) for k, v, _ in second])
    w2 = start_worker(settings)
    preds = read_predictions(kafka_settings, expected=200)
    wait_until(lambda: committed_total(kafka_settings, settings.group_id) == 200, what="commit")
    w2.halt()

    counts = collections.Counter(p.message_id for p in preds)
    assert len(counts) == 200 and set(counts.values()) == {1}, "lost or reprocessed messages"
    second_probe0 = sum(1 for _, _, h in second if h.instrument_id == "probe-0")
    assert w2.value("nirwatch_spectra_consumed_total", {"instrument": "probe-0"}) == second_probe0
    assert_in_order(preds, first + second)


def test_hot_swap_mid_stream_changes_version_and_loses_nothing(
    kafka_settings: KafkaSettings,
) -> None:
    source = SwitchableSource(LinearPredictor("v1"))
    w = start_worker(worker_settings(kafka_settings), source=source)
    before = spectra_messages(60, INSTRUMENTS, seed=3)
    produce(kafka_settings, [(k, v) for k, v, _ in before])
    read_predictions(kafka_settings, expected=60)
    source.predictor = LinearPredictor("v2", seed=5)
    after = spectra_messages(60, INSTRUMENTS, seed=4)
    produce(kafka_settings, [(k, v) for k, v, _ in after])
    preds = read_predictions(kafka_settings, expected=120)
    w.halt()

    assert len(preds) == 120
    version = {p.message_id: p.model_version for p in preds}
    assert {version[h.message_id] for _, _, h in before} == {"v1"}
    assert {version[h.message_id] for _, _, h in after} == {"v2"}
    assert {p.bundle_checksum for p in preds} == {"sha256-v1", "sha256-v2"}
    assert_in_order(preds, before + after)
    info = {
        "version": "v2",
        "checksum": "sha256-v2",
        "target": "api",
        "unit": "fraction",
        "grid": "lin:600:1898:2",
        "cnn": "none",
    }
    assert w.value("nirwatch_model_info", info) == 1


def test_fallback_reasons_nan_and_out_of_model_are_published_and_counted(
    kafka_settings: KafkaSettings,
) -> None:
    def script(call: int, X: np.ndarray, bp: BatchPrediction) -> BatchPrediction:
        # Even rows: CNN returned NaN (PLS serves); every 3rd: no model could predict.
        n = len(X)
        bp.model = bp.model.copy()
        bp.value = bp.value.copy()
        for i in range(n):
            if i % 2 == 0:
                bp.model[i], bp.fallback_reason[i] = "pls", "cnn_non_finite"
            if i % 3 == 0:
                bp.value[i] = np.nan
        # Above 0.7: an extrapolation, outside the calibrated range (per spectrum, whatever
        # the micro-batching).
        bp.outside_range = bp.pls_value > 0.7
        return bp

    normal = spectra_messages(30, ["probe-0"], seed=7)
    far = spectra_messages(5, ["probe-far"], seed=8, offset=3.0)  # far outside calibration
    produce(kafka_settings, [(k, v) for k, v, _ in normal + far])
    predictor = ScriptedPredictor(LinearPredictor(), script)
    w = start_worker(
        worker_settings(kafka_settings, micro_batch_size=1000), SwitchableSource(predictor)
    )
    preds = read_predictions(kafka_settings, expected=35)
    w.halt()

    assert len(preds) == 35
    reasons = collections.Counter(p.fallback_reason for p in preds)
    assert reasons[None] + reasons["cnn_non_finite"] == 35 and reasons["cnn_non_finite"] > 0
    assert (
        w.value("nirwatch_fallbacks_total", {"reason": "cnn_non_finite"})
        == reasons["cnn_non_finite"]
    )
    for p in preds:
        assert (p.model == "pls") == (p.fallback_reason == "cnn_non_finite")
        if p.value is None:
            assert not p.releasable
    # An extrapolation is held (not releasable) without being out of model, and counted.
    outside = [p.pls_value is not None and p.pls_value > 0.7 for p in preds]
    n_outside = sum(outside)
    held = [not p.releasable and not p.out_of_model and p.value is not None for p in preds]
    assert any(held)
    expected = [
        o and not p.out_of_model and p.value is not None
        for o, p in zip(outside, preds, strict=True)
    ]
    assert held == expected
    assert (
        sum(
            w.value("nirwatch_outside_range_total", {"instrument": i}) or 0
            for i in ("probe-0", "probe-far")
        )
        == n_outside
    )
    assert any(p.value is None for p in preds)
    far_preds = [p for p in preds if p.instrument_id == "probe-far"]
    assert all(p.out_of_model and not p.releasable for p in far_preds)
    assert not any(p.out_of_model for p in preds if p.instrument_id == "probe-0")
    assert w.value("nirwatch_out_of_model_total", {"instrument": "probe-far"}) == 5
    assert w.value("nirwatch_out_of_model_total", {"instrument": "probe-0"}) == 0
    for inst in ("probe-0", "probe-far"):
        for model in ("cnn", "pls"):
            n = sum(1 for p in preds if p.instrument_id == inst and p.model == model)
            assert w.value("nirwatch_predictions_total", {"instrument": inst, "model": model}) == n


def test_predictor_that_raises_is_retried_without_loss_or_duplicates(
    kafka_settings: KafkaSettings,
) -> None:
    def script(call: int, X: np.ndarray, bp: BatchPrediction) -> BatchPrediction:
        if call <= 3:
            raise RuntimeError("device lost")
        return bp

    sent = spectra_messages(100, INSTRUMENTS, seed=9)
    produce(kafka_settings, [(k, v) for k, v, _ in sent])
    settings = worker_settings(kafka_settings)
    predictor = ScriptedPredictor(LinearPredictor(), script)
    w = start_worker(settings, SwitchableSource(predictor))
    preds = read_predictions(kafka_settings, expected=100)
    wait_until(lambda: committed_total(kafka_settings, settings.group_id) == 100, what="commit")
    w.halt()

    counts = collections.Counter(p.message_id for p in preds)
    assert len(counts) == 100 and set(counts.values()) == {1}
    assert w.value("nirwatch_predict_failures_total") == 3
    assert_in_order(preds, sent)


def test_two_workers_share_partitions_and_one_takes_over(kafka_settings: KafkaSettings) -> None:
    settings = worker_settings(kafka_settings)
    instruments = [f"probe-{i}" for i in range(12)]  # enough keys to cover all 3 partitions
    produce(kafka_settings, [])
    a = start_worker(settings)
    wait_until(lambda: len(a.worker.assigned_partitions) == 3, what="a to own all partitions")
    b = start_worker(settings)
    wait_until(
        lambda: (
            a.worker.assigned_partitions
            and b.worker.assigned_partitions
            and len(a.worker.assigned_partitions | b.worker.assigned_partitions) == 3
        ),
        what="a and b to share the partitions",
    )
    assert not a.worker.assigned_partitions & b.worker.assigned_partitions
    first = spectra_messages(120, instruments, seed=11)
    produce(kafka_settings, [(k, v) for k, v, _ in first])
    read_predictions(kafka_settings, expected=120)
    wait_until(lambda: committed_total(kafka_settings, settings.group_id) == 120, what="commit")
    assert a.worker.published > 0 and b.worker.published > 0
    assert a.worker.published + b.worker.published == 120

    b.halt()  # b leaves the group: a takes its partitions over
    wait_until(lambda: len(a.worker.assigned_partitions) == 3, what="a to take over")
    second = spectra_messages(60, instruments, seed=12)
    produce(kafka_settings, [(k, v) for k, v, _ in second])
    preds = read_predictions(kafka_settings, expected=180)
    wait_until(lambda: committed_total(kafka_settings, settings.group_id) == 180, what="commit")
    a.halt()

    counts = collections.Counter(p.message_id for p in preds)
    assert len(counts) == 180 and set(counts.values()) == {1}
    assert_in_order(preds, first + second)


def test_every_publication_is_in_the_audit_trail_once(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    sent = spectra_messages(150, INSTRUMENTS, seed=13)
    produce(kafka_settings, [(k, v) for k, v, _ in sent])
    trail = open_audit_trail(AuditSettings(path=tmp_path / "audit.sqlite3"))
    try:
        w = start_worker(worker_settings(kafka_settings), audit=trail)
        preds = read_predictions(kafka_settings, expected=150)
        w.halt()
        records = trail.query(limit=None)
        audited = w.value("nirwatch_batch_stage_seconds_count", {"stage": "audit"})
        assert audited == w.worker.batches > 0
    finally:
        trail.close()
    assert len(records) == 150
    by_id = {r.prediction_id: r for r in records}
    raw = {h.message_id: v for _, v, h in sent}
    for p in preds:
        r = by_id[p.prediction_id]
        assert r.message_id == p.message_id and r.value == p.value
        assert r.model_version == p.model_version and r.releasable == p.releasable
        assert (
            r.spectrum_sha256 == p.spectrum_sha256 == hashlib.sha256(raw[p.message_id]).hexdigest()
        )


def test_idle_worker_reports_a_broker_outage_and_recovers() -> None:
    broker = EmbeddedBroker(port=free_port()).start()
    kafka = KafkaSettings(
        bootstrap=broker.bootstrap,
        partitions=2,
        topic_spectra="o.spectra",
        topic_predictions="o.predictions",
        topic_dead_letter="o.dlq",
    )
    try:
        # The restarted in-memory broker has lost the group; kafka-python sometimes waits for a
        # SyncGroup answer that never comes, and the worker then replaces its consumer.
        w = start_worker(worker_settings(kafka, group_stall_s=8.0))
        wait_until(lambda: len(w.worker.assigned_partitions) == 2, what="assignment")
        assert w.value("nirwatch_broker_up") == 1
        broker.stop(kill=True)
        wait_until(lambda: w.value("nirwatch_broker_up") == 0, what="broker_up 0")
        broker.start()  # same port, empty (in-memory)
        wait_until(lambda: w.value("nirwatch_broker_up") == 1, what="broker_up 1 again")
        sent = spectra_messages(20, INSTRUMENTS, seed=21)
        produce(kafka, [(k, v) for k, v, _ in sent])
        assert len(read_predictions(kafka, expected=20, timeout_s=60)) == 20
        w.halt()
    finally:
        broker.stop()
