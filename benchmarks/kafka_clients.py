"""The Kafka client alone: kafka-python (nirwatch's pinned client) against librdkafka.

Issue 4's throughput and p99 targets are missed, and the worker profile puts about a third of
its time in the Kafka client (poll 20 µs and publish 30 µs of 170 µs per spectrum). This
measures what a librdkafka client (``confluent-kafka``, *not* a nirwatch dependency: measured
only when it imports) would change, on the worker's own message shapes, against one broker
(the embedded Tansu unless ``NIRWATCH_KAFKA_BOOTSTRAP`` is set):

``consume``  drain a topic pre-filled with ``--messages`` spectrum messages (2.7 kB), values
             only, no decoding (the worker's poll stage);
``produce``  send ``--messages`` prediction-sized records (~600 B) and wait for every ack
             (the worker's publish stage; acks=all, one request in flight);
``latency``  the throughput benchmark's load generator (kafka-python, 10 ms ticks) at
             ``--rate`` spectra/s for ``--seconds``; each client consumes with the worker's
             5 ms fetch wait; latency = receive time - the message's timestamp, p50 / p99.

The last output line is one JSON object.

    .venv/bin/python benchmarks/kafka_clients.py [--messages 100000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from nirwatch.settings import KafkaSettings
from nirwatch.transport.broker import kafka_bootstrap
from nirwatch.transport.kafka import ensure_topics, make_consumer, make_producer

if TYPE_CHECKING:
    from throughput import MessageFactory

PREDICTION = json.dumps(
    {"schema": "nirwatch.prediction/2", "prediction_id": "0" * 32, "sample_id": "probe-00-1"}
    | {k: 123.456789 for k in ("value", "cnn_value", "pls_value", "t2", "q", "timestamp")}
    | {"model": "cnn", "model_version": "20261126T000000Z-abcdef12-0000", "pad": "x" * 300}
).encode()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timestamp_of(value: bytes) -> float:
    """The ``timestamp`` field of a spectrum message's JSON header, without parsing it all."""
    i = value.index(b'"timestamp":') + 12
    return float(value[i : value.index(b",", i)])


# -- kafka-python ----------------------------------------------------------------------------


def kp_consume(
    kafka: KafkaSettings,
    topic: str,
    n: int,
    on_value: Callable[[bytes], None],
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    from_end: bool = False,
) -> float:
    """Read ``n`` values from all partitions (assigned, no group: no join delay); values/s.

    ``from_end``: start at the current end (``ready`` is set once the positions are known).
    """
    from kafka import TopicPartition

    consumer = make_consumer(kafka, None, fetch_max_wait_ms=5)
    tps = [TopicPartition(topic, p) for p in range(kafka.partitions)]
    consumer.assign(tps)
    if from_end:
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)  # resolve now, not at the first poll
    if ready is not None:
        ready.set()
    got, t0 = 0, None
    try:
        while got < n and not (stop is not None and stop.is_set()):
            for records in consumer.poll(timeout_ms=200).values():
                t0 = t0 or time.perf_counter()
                for r in records:
                    on_value(r.value)
                got += len(records)
    finally:
        consumer.close()
    return n / (time.perf_counter() - (t0 or time.perf_counter()))


class SideConsumer:
    """A plain kafka-python consumer beside the worker, from the topic's current end.

    It times the spectrum messages whose sample id starts with ``tag-`` (receive time - the
    message's timestamp): the Kafka path's own latency under the same load as the worker.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        tag: str,
        consume: Callable[..., float] | None = None,
    ) -> None:
        self.latency_ms: list[float] = []
        marker = f'"sample_id":"{tag}-'.encode()

        def on_value(v: bytes) -> None:
            if marker in v:
                self.latency_ms.append(1000 * (time.time() - timestamp_of(v)))

        self._stop, ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(
            target=consume or kp_consume,
            args=(kafka, topic, 1 << 62, on_value),
            kwargs={"stop": self._stop, "ready": ready, "from_end": True},
            daemon=True,
        )
        self._thread.start()
        ready.wait(timeout=30)

    def stop(self, expected: int, timeout: float = 30.0) -> np.ndarray:
        """Latencies (ms) once ``expected`` messages were seen (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.latency_ms) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=10)
        return np.asarray(self.latency_ms)


def kp_produce(kafka: KafkaSettings, topic: str, n: int) -> float:
    producer = make_producer(kafka)
    t0 = time.perf_counter()
    for i in range(n):
        producer.send(topic, key=b"probe-%02d" % (i % 12), value=PREDICTION)
    producer.flush()
    rate = n / (time.perf_counter() - t0)
    producer.close()
    return rate


# -- librdkafka ------------------------------------------------------------------------------


def rd_consume(
    kafka: KafkaSettings,
    topic: str,
    n: int,
    on_value: Callable[[bytes], None],
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    from_end: bool = False,
) -> float:
    """:func:`kp_consume` with librdkafka (confluent-kafka)."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": f"kc-{uuid.uuid4().hex[:6]}",  # required, unused: partitions are assigned
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
        }
    )
    start = OFFSET_END if from_end else OFFSET_BEGINNING
    consumer.assign([TopicPartition(topic, p, start) for p in range(kafka.partitions)])
    if ready is not None:  # a latency reader: connect before the load starts (nothing to read)
        consumer.consume(num_messages=1, timeout=0.5)
        ready.set()
    got, t0 = 0, None
    try:
        while got < n and not (stop is not None and stop.is_set()):
            # consume() waits for all 2000 or the timeout: a short timeout for latency, as the
            # worker's own batch wait (max_wait_ms) bounds it
            msgs = consumer.consume(num_messages=2000, timeout=0.2 if stop is None else 0.005)
            if not msgs:
                continue
            t0 = t0 or time.perf_counter()
            for m in msgs:
                if m.error() is None:
                    on_value(m.value())
                    got += 1
    finally:
        consumer.close()
    return n / (time.perf_counter() - (t0 or time.perf_counter()))


def rd_produce(kafka: KafkaSettings, topic: str, n: int) -> float:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "max.in.flight.requests.per.connection": 1,
            "batch.size": 1 << 20,
        }
    )
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, key=b"probe-%02d" % (i % 12), value=PREDICTION)
                break
            except BufferError:  # local queue full: let the sender catch up
                producer.poll(0.01)
    producer.flush()
    return n / (time.perf_counter() - t0)


CLIENTS = {"kafka-python": (kp_consume, kp_produce), "librdkafka": (rd_consume, rd_produce)}


def available() -> list[str]:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        log("confluent-kafka is not installed: only kafka-python is measured")
        return ["kafka-python"]
    return list(CLIENTS)


def latency(
    kafka: KafkaSettings, client: str, factory: MessageFactory, rate: int, seconds: float
) -> dict[str, float]:
    from throughput import offered_load

    topic = f"kc{uuid.uuid4().hex[:6]}.latency"
    ensure_topics(kafka, [topic])
    side = SideConsumer(kafka, topic, f"load{rate}", consume=CLIENTS[client][0])
    sent = offered_load(kafka.model_copy(update={"topic_spectra": topic}), factory, rate, seconds)
    a = side.stop(sent)
    return {
        "n": float(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="10,000 messages, 5 s of load")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.seconds = 10_000, 5.0
    from throughput import MessageFactory, send_batch, spectra_pool

    clients = available()
    out: dict[str, Any] = {"messages": args.messages, "rate": args.rate, "clients": {}}
    with kafka_bootstrap(os.environ.get("NIRWATCH_KAFKA_BOOTSTRAP")) as bootstrap:
        kafka = KafkaSettings(bootstrap=bootstrap, partitions=6)
        factory = MessageFactory(spectra_pool(4096))
        for client in clients:
            consume, produce = CLIENTS[client]
            topic = f"kc{uuid.uuid4().hex[:6]}.spectra"
            ensure_topics(kafka, [topic])
            producer = make_producer(kafka, linger_ms=20)
            send_batch(producer, topic, factory, args.messages, 0, "drain")
            producer.close()
            r: dict[str, Any] = {"consume_sps": consume(kafka, topic, args.messages, len)}
            log(f"{client}: consume {r['consume_sps']:,.0f} messages/s")
            ptopic = f"kc{uuid.uuid4().hex[:6]}.predictions"
            ensure_topics(kafka, [ptopic])
            r["produce_sps"] = produce(kafka, ptopic, args.messages)
            log(f"{client}: produce {r['produce_sps']:,.0f} messages/s")
            r["latency"] = latency(kafka, client, factory, args.rate, args.seconds)
            log(f"{client}: latency at {args.rate}/s {r['latency']}")
            out["clients"][client] = r
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
