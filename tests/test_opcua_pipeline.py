"""The whole line: ``nirwatch simulate`` -> a worker -> ``nirwatch opcua-server`` -> a SCADA client.

Spectra come from the simulator command (a process, as an operator runs it), a real
:class:`~inference.worker.InferenceWorker` predicts them from the test broker, the OPC UA
server runs as ``nirwatch opcua-server`` runs it (:func:`~inference.opcua.bridge.serve`) and an
asyncua client subscribes to an instrument's Prediction and SpectrumSha256 nodes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import threading
import uuid
from pathlib import Path

import pytest
from asyncua import ua
from opcua_support import (
    Notifications,
    password_client,
    server_settings,
    trusted_client,
    wait_for_node,
)
from support import read_predictions, read_topic
from worker_support import start_worker, worker_settings

from inference.opcua.bridge import serve
from inference.opcua.space import STATUS_NOT_RELEASABLE, stream_node_id
from nirwatch.messages.prediction import Prediction
from nirwatch.messages.spectrum import decode_spectrum
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

INSTRUMENT = "line-1"
PREDICTION = stream_node_id(INSTRUMENT, "ChemometricModel", "Prediction")
SPECTRUM_SHA256 = stream_node_id(INSTRUMENT, "AcquisitionData", "SpectrumSha256")


async def _simulate(kafka: KafkaSettings, tmp_path: Path, seed: int, duration_s: float) -> int:
    """Run ``nirwatch simulate`` (one probe, 20 spectra/s) for ``duration_s``; spectra sent."""
    env = {
        **os.environ,
        "NIRWATCH_KAFKA_BOOTSTRAP": str(kafka.bootstrap),
        "NIRWATCH_KAFKA_TOPIC_SPECTRA": kafka.topic_spectra,
        "NIRWATCH_KAFKA_TOPIC_DEAD_LETTER": kafka.topic_dead_letter,
        "NIRWATCH_STATE_DIR": str(tmp_path / "state"),
    }
    argv = ["--probes", "1", "--prefix", "line", "--rate", "20", "--duration", str(duration_s)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nirwatch.apps.cli", "simulate", *argv, "--seed", str(seed),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    sent = re.search(r"^sent (\d+) spectra", text, re.MULTILINE)
    assert proc.returncode == 0 and sent is not None, text
    return int(sent.group(1))


def _published(kafka: KafkaSettings, expected: int) -> tuple[list[Prediction], dict[str, bytes]]:
    """The predictions in publication order, and the raw spectrum messages by message id."""
    predictions = read_predictions(kafka, expected)
    spectra = read_topic(kafka, kafka.topic_spectra, expected)
    raw = {decode_spectrum(r.value)[0].message_id: r.value for r in spectra}
    assert len(predictions) == len(raw) == expected
    return predictions, raw


def test_a_simulated_spectrum_reaches_a_scada_subscription_with_its_hash(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    kafka = kafka_settings
    ensure_topics(kafka, [kafka.topic_spectra, kafka.topic_predictions, kafka.topic_dead_letter])
    group = f"opcua-pipeline-{uuid.uuid4().hex[:8]}"
    settings = server_settings(tmp_path, kafka=kafka, group_id=group, idle_poll_ms=50)
    cert = trusted_client(tmp_path, settings)
    worker = start_worker(worker_settings(kafka))
    stop = threading.Event()
    changes = Notifications()
    seen: list[tuple[str, ua.DataValue]] = []

    async def main() -> tuple[list[Prediction], dict[str, bytes], str]:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop, on_ready=lambda _s: ready.set()))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            # A first run creates the instrument's nodes; the client subscribes, then a second
            # run's spectra must reach it as data changes.
            first = await _simulate(kafka, tmp_path, seed=1, duration_s=0.1)
            client = await password_client(settings, cert)
            async with client:
                nodes = [await wait_for_node(client, n) for n in (PREDICTION, SPECTRUM_SHA256)]
                sub = await client.create_subscription(10, changes)
                await sub.subscribe_data_change(nodes)
                second = await _simulate(kafka, tmp_path, seed=2, duration_s=0.2)
                predictions, raw = await asyncio.to_thread(_published, kafka, first + second)
                last = predictions[-1]
                want = hashlib.sha256(raw[last.message_id]).hexdigest()
                while not any(n == PREDICTION and dv.Value.Value == last.value for n, dv in seen):
                    seen.append(await changes.next(30, f"Prediction {last.value}, seen {seen}"))
                while not any(n == SPECTRUM_SHA256 and dv.Value.Value == want for n, dv in seen):
                    seen.append(await changes.next(30, f"SpectrumSha256 {want}, seen {seen}"))
                return predictions, raw, await nodes[1].read_value()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    try:
        predictions, raw, hash_read = asyncio.run(main())
    finally:
        worker.halt()
    last = predictions[-1]
    assert last.instrument_id == INSTRUMENT and last.value is not None
    # The worker hashed the exact bytes the simulator published; the server shows that hash.
    assert [p.spectrum_sha256 for p in predictions] == [
        hashlib.sha256(raw[p.message_id]).hexdigest() for p in predictions
    ]
    assert hash_read == last.spectrum_sha256
    # Every notification is a published prediction's (no value, no hash from anywhere else) ...
    assert {dv.Value.Value for n, dv in seen if n == PREDICTION} <= {p.value for p in predictions}
    assert {dv.Value.Value for n, dv in seen if n == SPECTRUM_SHA256} <= {
        p.spectrum_sha256 for p in predictions
    }
    # ... and the last one carries the spectrum's time and the prediction's release status.
    notified = [dv for n, dv in seen if n == PREDICTION and dv.Value.Value == last.value][-1]
    assert notified.SourceTimestamp.timestamp() == pytest.approx(last.timestamp, abs=1e-3)
    status = ua.StatusCodes.Good if last.releasable else STATUS_NOT_RELEASABLE
    assert notified.StatusCode.value == status
