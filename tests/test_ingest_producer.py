from __future__ import annotations

import json
import threading
from collections import defaultdict

import numpy as np
import pytest
from support import read_topic

from ingest.pacing import Pacer, RatePacer
from ingest.producer import SpectrumProducer
from ingest.settings import IngestSettings
from ingest.streaming import stream_simulator
from nirwatch.errors import ConfigError, WireFormatError
from nirwatch.messages.deadletter import read_dead_letters
from nirwatch.messages.lab_result import decode_lab_result
from nirwatch.messages.spectrum import (
    SpectrumHeader,
    decode_spectrum,
    encode_spectrum,
    new_message_id,
)
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import GRID, ProbeSpec, TabletLineSimulator
from nirwatch.transport.kafka import ensure_topics


def header(instrument: str = "p1", n_points: int = 650, **kw: object) -> SpectrumHeader:
    base: dict[str, object] = dict(
        message_id=new_message_id(),
        instrument_id=instrument,
        sample_id="s1",
        timestamp=1.7e9,
        grid=GRID,
        n_points=n_points,
    )
    base.update(kw)
    return SpectrumHeader(**base)  # type: ignore[arg-type]


@pytest.fixture
def settings(kafka_settings: KafkaSettings) -> IngestSettings:
    ensure_topics(
        kafka_settings,
        [
            kafka_settings.topic_spectra,
            kafka_settings.topic_dead_letter,
            kafka_settings.topic_lab_results,
        ],
    )
    return IngestSettings(kafka=kafka_settings)


@pytest.mark.kafka
def test_keys_and_order_per_instrument(settings: IngestSettings) -> None:
    probes = [ProbeSpec(f"probe-{i}", rate) for i, rate in enumerate((400.0, 300.0, 200.0))]
    sim = TabletLineSimulator(probes, seed=2)
    truth: dict[str, list[str]] = defaultdict(list)
    with SpectrumProducer(settings, source="simulator") as producer:
        stats = stream_simulator(
            sim,
            producer,
            stop=threading.Event(),
            duration_s=0.5,
            lab_every=10,
            on_spectrum=lambda b, r: truth[b.instrument_id].append(b.sample_ids[r]),
        )
    n = sum(len(v) for v in truth.values())
    assert stats.sent == n == 450  # 200 + 150 + 100 in half a second of schedule
    assert producer.acked == n + stats.lab_results and producer.failed == 0

    records = read_topic(settings.kafka, settings.kafka.topic_spectra, n)
    assert len(records) == n
    seen: dict[str, list[str]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        head, values = decode_spectrum(rec.value, GRID)
        assert rec.key == head.instrument_id.encode()
        assert values.shape == (650,)
        assert rec.value == encode_spectrum(head, values)  # the spectrum module's bytes
        seen[head.instrument_id].append(head.sample_id)
        partition_of[head.instrument_id].add(rec.partition)
    assert all(len(p) == 1 for p in partition_of.values())
    assert seen == truth  # every spectrum once, in send order per instrument

    labs = read_topic(settings.kafka, settings.kafka.topic_lab_results, stats.lab_results)
    assert stats.lab_results == 45
    decoded = [decode_lab_result(r.value) for r in labs]
    assert all(r.key == d.sample_id.encode() for r, d in zip(labs, decoded, strict=True))
    assert {d.sample_id for d in decoded} <= {s for v in truth.values() for s in v}
    assert all(150 < d.value < 250 and d.unit == "mg" for d in decoded)
    # every field as the ingest adapters have always written it (tests/test_wire.py: bytes)
    assert all(d.target == "api_content" and d.method == "hplc" for d in decoded)
    assert all(d.instrument_id in truth and d.sampled_at == d.timestamp for d in decoded)


@pytest.mark.kafka
def test_invalid_spectra_go_to_dead_letter_with_reason(settings: IngestSettings) -> None:
    good = np.linspace(0.1, 0.9, 650, dtype=np.float32)
    nan = good.copy()
    nan[10] = np.nan
    bad = [
        (header(sample_id="nan"), nan, "non_finite"),
        (header(sample_id="short"), good[:600], "length_mismatch"),
        (header(sample_id="n_points", n_points=600), good[:600], "length_mismatch"),
        (header(sample_id="grid", grid="log:1:2"), good, "unknown_grid"),
        (
            header(sample_id="other-grid", grid="lin:600:1898:1", n_points=1299),
            good,
            "grid_mismatch",
        ),
        (header(sample_id="ts", timestamp=float("inf")), good, "bad_field"),
        (header(instrument="", sample_id="noid"), good, "bad_field"),
    ]
    with SpectrumProducer(settings, source="unit-test", expected_grid=GRID) as producer:
        assert producer.send(header(sample_id="ok-1"), good)
        results = [producer.send(h, x) for h, x, _ in bad]
        assert producer.send(header(sample_id="ok-2"), good)
        assert not producer.send_raw(b"\x00garbage", "p1")
        assert not producer.send_raw(None, "p1")
    assert results == [False] * len(bad)
    assert producer.sent == 2 and producer.dead_lettered == len(bad) + 2

    letters = read_dead_letters(settings.kafka, expected=len(bad) + 2)
    assert len(letters) == len(bad) + 2
    assert all(d.stage == "ingest" and d.source == "unit-test" and d.time for d in letters)
    by_sample: dict[str, str] = {}
    for d in letters:
        if d.value and d.value.startswith(b"NIRS"):
            with pytest.raises(WireFormatError) as err:
                decode_spectrum(d.value, GRID)  # the original bytes fail for the same reason
            assert err.value.reason == d.reason

            head_len = int.from_bytes(d.value[6:8], "little")
            by_sample[json.loads(d.value[8 : 8 + head_len])["sample_id"]] = d.reason
    for h, _, reason in bad:
        assert by_sample[h.sample_id] == reason
    reasons = sorted(d.reason for d in letters if not (d.value or b"").startswith(b"NIRS"))
    assert reasons == ["bad_magic", "too_short"]

    records = read_topic(settings.kafka, settings.kafka.topic_spectra, 2)
    assert sorted(decode_spectrum(r.value)[0].sample_id for r in records) == ["ok-1", "ok-2"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    # Event protocol used by Pacer
    def wait(self, delay: float) -> bool:
        self.waits.append(delay)
        self.now += delay + 0.0003  # every sleep overshoots a little
        return False

    def is_set(self) -> bool:
        return False


@pytest.mark.parametrize("rate", [1.0, 50.0, 5000.0])
def test_rate_pacer_keeps_long_run_rate_despite_overshoot(rate: float) -> None:
    clock = FakeClock()
    pacer = RatePacer(rate, stop=clock, clock=clock)  # type: ignore[arg-type]
    n = 2000
    for _ in range(n):
        assert pacer.wait()
        clock.now += 0.00002  # time spent sending
    # Message n-1 was due at (n-1)/rate; overshoot never accumulates.
    assert abs(clock.now - (n - 1) / rate) < 0.001 + 0.00002


def test_pacer_restarts_schedule_after_stall_instead_of_bursting() -> None:
    clock = FakeClock()
    pacer = Pacer(max_lag_s=1.0, stop=clock, clock=clock)  # type: ignore[arg-type]
    assert pacer.wait_until(0.0)
    clock.now += 10.0  # process paused for 10 s
    assert pacer.wait_until(0.1)  # far behind: resumes now, no wait
    assert pacer.wait_until(0.2)  # next one is paced again, 0.1 s later
    assert clock.waits[-1] == pytest.approx(0.1, abs=1e-3)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="rate must be > 0"):
        RatePacer(0.0)


def test_stop_interrupts_the_wait() -> None:
    stop = threading.Event()
    pacer = RatePacer(0.001, stop=stop)  # the second message is due in 1000 s
    assert pacer.wait()
    threading.Timer(0.05, stop.set).start()
    assert not pacer.wait()
