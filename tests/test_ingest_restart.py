from __future__ import annotations

import time

import numpy as np
import pytest
from support import read_topic

from ingest.producer import SpectrumProducer
from ingest.settings import IngestSettings
from nirwatch.messages.spectrum import SpectrumHeader, decode_spectrum
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import GRID
from nirwatch.transport.broker import EmbeddedBroker, free_port
from nirwatch.transport.kafka import ensure_topics


@pytest.mark.kafka
@pytest.mark.slow
def test_producer_recreates_itself_after_broker_restart() -> None:
    """Tansu forgets producer ids on restart: the idempotent producer must be recreated and
    what it had not delivered re-sent, in order."""
    port = free_port()
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{port}", partitions=1)
    settings = IngestSettings(kafka=kafka, delivery_timeout_ms=5000, max_block_ms=3000)
    spectrum = np.ones(650, np.float32)

    def send(producer: SpectrumProducer, i: int) -> None:
        header = SpectrumHeader(f"m{i}", "p1", f"s{i:02d}", time.time(), GRID, 650)
        assert producer.send(header, spectrum)

    broker = EmbeddedBroker(port=port).start()
    producer = SpectrumProducer(settings)
    try:
        ensure_topics(kafka, [kafka.topic_spectra, kafka.topic_dead_letter])
        for i in range(10):
            send(producer, i)
        producer.flush(10)
        assert producer.acked == 10
        broker.stop()
        broker = EmbeddedBroker(port=port).start()  # in-memory: topics and producer ids gone
        ensure_topics(kafka, [kafka.topic_spectra, kafka.topic_dead_letter])
        for i in range(10, 30):
            send(producer, i)
            time.sleep(0.1)  # spread over the client's reconnect, like a live probe
        producer.flush(15)
        assert producer.recreated >= 1
        records = read_topic(kafka, kafka.topic_spectra, 20, timeout_s=15, settle_polls=0)
        got = [decode_spectrum(r.value)[0].sample_id for r in records]
        assert got == [f"s{i:02d}" for i in range(10, 30)]
    finally:
        producer.close(5)
        broker.stop()
