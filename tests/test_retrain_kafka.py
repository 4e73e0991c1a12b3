"""The retraining service's labelled-spectra collector against the real broker."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from kafka import KafkaProducer
from support import wait_until

from nirwatch.messages.lab_result import LabResult
from nirwatch.messages.spectrum import SpectrumHeader, encode_spectrum, new_message_id
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import GRID, ProbeSpec, TabletLineSimulator
from training.labelled import LabelledBuffer
from training.service import consume_labelled

pytestmark = pytest.mark.kafka


def test_spectra_and_lab_results_are_joined_from_kafka(kafka_settings: KafkaSettings) -> None:
    sim = TabletLineSimulator([ProbeSpec("probe-1")], seed=3)
    batch = sim.next_batch("probe-1", 30)
    producer = KafkaProducer(**kafka_settings.client_options())
    for sid, x in zip(batch.sample_ids, batch.spectra, strict=True):
        header = SpectrumHeader(
            message_id=new_message_id(), instrument_id="probe-1", sample_id=sid,
            timestamp=time.time(), grid=GRID, n_points=x.size,
        )  # fmt: skip
        producer.send(kafka_settings.topic_spectra, encode_spectrum(header, x), key=b"probe-1")
    producer.send(kafka_settings.topic_spectra, b"garbage", key=b"probe-1")
    for sid, ref in list(zip(batch.sample_ids, batch.reference_mg, strict=True))[:20]:
        lab = LabResult(sid, float(ref), 1.0, instrument_id="probe-1", target="api_content")
        producer.send(kafka_settings.topic_lab_results, lab.encode(), key=sid.encode())
    producer.flush()
    producer.close()

    buffer = LabelledBuffer(sim.wavelengths, max_size=100)
    stop = threading.Event()
    thread = threading.Thread(
        target=consume_labelled,
        args=(kafka_settings, buffer, GRID, stop),
        kwargs={"group_id": "retrain-test", "session_timeout_ms": 2000,
                "heartbeat_interval_ms": 500},
    )  # fmt: skip
    thread.start()
    try:
        wait_until(lambda: len(buffer.dataset()) >= 20, 60, "20 labelled spectra", interval_s=0.1)
    finally:
        stop.set()
        thread.join(30)
    data = buffer.dataset()
    assert sorted(data.sample_ids) == sorted(batch.sample_ids[:20])
    order = [batch.sample_ids.index(s) for s in data.sample_ids]
    np.testing.assert_allclose(data.X, batch.spectra[order], rtol=1e-6)
    np.testing.assert_allclose(data.y, batch.reference_mg[order])
