"""The naive baseline of ``benchmarks/throughput.py`` (issue 4, part d).

A plain kafka-python loop: JSON spectrum per message, the model called on one spectrum at a
time, each prediction published synchronously (``send().get()``), offsets auto-committed. Run as
a child process by :func:`run_baseline`; on its own it reads ``NIRWATCH_KAFKA_*``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics, make_consumer, make_producer


def baseline_child(args: argparse.Namespace) -> None:
    """The naive loop; prints one JSON line with its rate."""
    import torch

    from nirwatch.models.bundle import load_bundle

    # Same CPU threading as the worker's default, so the comparison is about the loop alone.
    torch.set_num_threads(args.torch_threads or 1)
    kafka = KafkaSettings()
    predictor = load_bundle(args.bundle, device="cpu")
    consumer = make_consumer(
        kafka,
        f"naive-{uuid.uuid4().hex[:6]}",
        kafka.topic_spectra,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        enable_auto_commit=True,
        max_poll_records=1,
    )
    producer = make_producer(kafka, linger_ms=0)
    n, t0, deadline = 0, 0.0, time.monotonic() + 60
    for record in consumer:
        if n == 0:
            t0 = time.perf_counter()
        msg = json.loads(record.value)
        x = np.asarray(msg["absorbances"], dtype=np.float32)[None, :]
        bp = predictor.predict(x)
        out = {
            "message_id": msg["message_id"],
            "value": float(bp.value[0]),
            "model": str(bp.model[0]),
            "t2": float(bp.t2[0]),
            "q": float(bp.q[0]),
        }
        producer.send(kafka.topic_predictions, key=record.key, value=json.dumps(out).encode()).get(
            timeout=10
        )
        n += 1
        if time.perf_counter() - t0 >= args.baseline_seconds or time.monotonic() > deadline:
            break
    rate = n / (time.perf_counter() - t0)
    producer.close()
    consumer.close()
    print(json.dumps({"baseline_sps": rate, "n": n}))


def run_baseline(
    kafka: KafkaSettings,
    bundle: Path,
    pool: np.ndarray,
    seconds: float,
    threads: int | None,
    probes: list[str],
) -> float:
    """Fill a JSON spectra topic and time the naive loop on it in a child process."""
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out = f"naive{tag}.spectra", f"naive{tag}.predictions"
    ensure_topics(kafka, [topic_in, topic_out])
    producer = make_producer(kafka, linger_ms=20)
    for i in range(int(seconds * 1000)):  # more than the naive loop can take in `seconds`
        doc = {
            "message_id": uuid.uuid4().hex,
            "instrument_id": probes[i % len(probes)],
            "timestamp": time.time(),
            "absorbances": pool[i % len(pool)].tolist(),
        }
        producer.send(topic_in, key=doc["instrument_id"].encode(), value=json.dumps(doc).encode())
    producer.flush()
    producer.close()
    env = {
        **os.environ,
        "NIRWATCH_KAFKA_BOOTSTRAP": str(kafka.bootstrap),
        "NIRWATCH_KAFKA_TOPIC_SPECTRA": topic_in,
        "NIRWATCH_KAFKA_TOPIC_PREDICTIONS": topic_out,
    }
    cmd = [
        sys.executable,
        __file__,
        "--bundle",
        str(bundle),
        "--baseline-seconds",
        str(seconds),
        "--torch-threads",
        str(threads or 1),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["baseline_sps"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--baseline-seconds", type=float, default=3.0)
    p.add_argument("--torch-threads", type=int, default=1)
    baseline_child(p.parse_args())


if __name__ == "__main__":
    main()
