"""Property test of the ingest edge: whatever an adapter hands over, the producer never raises;
each spectrum is either published (and the worker's decoder accepts it) or dead-lettered with a
bounded reason code."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.producer import SpectrumProducer
from ingest.settings import IngestSettings
from nirwatch.messages.codec import REASONS
from nirwatch.messages.deadletter import read_dead_letters
from nirwatch.messages.spectrum import SpectrumHeader, decode_spectrum, encode_spectrum
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import GRID
from nirwatch.transport.kafka import ensure_topics

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
field_values = st.one_of(
    st.text(max_size=12), st.integers(), floats, st.none(), st.booleans(), st.just("")
)
grids = st.sampled_from([GRID, "lin:600:1898:1", "lin:1:0:1", "log:1:2:3", "", "lin:600:602:2"])


@st.composite
def spectra(draw: Any) -> tuple[SpectrumHeader, np.ndarray]:
    good = draw(st.booleans())
    n = 650 if good else draw(st.sampled_from([0, 1, 649, 650, 651, 1299]))
    x = np.random.default_rng(draw(st.integers(0, 1000))).random(n).astype(np.float32)
    if not good and n and draw(st.booleans()):
        x[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    header = SpectrumHeader(
        message_id=draw(st.one_of(st.just("m1"), field_values)) if not good else "m1",
        instrument_id=draw(st.one_of(st.just("p1"), field_values)) if not good else "p1",
        sample_id="s1",
        timestamp=draw(st.one_of(st.just(1.7e9), field_values)) if not good else 1.7e9,
        grid=draw(grids) if not good else GRID,
        n_points=draw(st.one_of(st.just(n), st.integers(-2, 20000), floats)) if not good else n,
    )
    return header, x


@pytest.fixture(scope="module")
def edge(kafka_bootstrap_address: str) -> Any:
    tag = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap_address,
        topic_spectra=f"edge{tag}.spectra",
        topic_dead_letter=f"edge{tag}.dlq",
        partitions=1,
    )
    ensure_topics(kafka, [kafka.topic_spectra, kafka.topic_dead_letter])
    with SpectrumProducer(IngestSettings(kafka=kafka), source="hypothesis") as producer:
        yield kafka, producer


@pytest.mark.kafka
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=spectra())
def test_edge_publishes_or_dead_letters_never_raises(
    edge: tuple[KafkaSettings, SpectrumProducer], item: tuple[SpectrumHeader, np.ndarray]
) -> None:
    kafka, producer = edge
    header, x = item
    before = (producer.sent, producer.dead_lettered)
    ok = producer.send(header, x)
    if ok:
        assert producer.sent == before[0] + 1
        decode_spectrum(encode_spectrum(header, x), GRID)  # the worker's decoder accepts it
    else:
        assert producer.dead_lettered == before[1] + 1
    assert set(producer.dead_lettered_by_reason) <= set(REASONS)


@pytest.mark.kafka
def test_dead_letters_of_the_property_run_carry_their_reasons(
    edge: tuple[KafkaSettings, SpectrumProducer],
) -> None:
    kafka, producer = edge
    x = np.ones(650, np.float32)
    x[3] = np.nan  # also when run alone: at least these two
    assert not producer.send(SpectrumHeader("m", "p1", "s", 1.0, GRID, 650), x)
    assert not producer.send(SpectrumHeader("m", "p1", "s", 1.0, "lin:1:0:1", 650), x)
    producer.flush(10)
    letters = read_dead_letters(kafka, expected=producer.dead_lettered, timeout_s=20)
    assert len(letters) == producer.dead_lettered > 0
    counted: dict[str, int] = {}
    for d in letters:
        counted[d.reason] = counted.get(d.reason, 0) + 1
    assert counted == producer.dead_lettered_by_reason
    assert producer.failed == 0
