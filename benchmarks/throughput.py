"""Throughput and latency of the inference worker against the real broker (issue 4).

One run, one process tree: this process starts (or uses) the broker, fits a model bundle on
simulated calibration spectra, runs ``nirwatch worker`` as a child process and measures:

(a) sustained throughput: a spectra topic pre-filled with ``--drain`` simulated spectra is
    drained into predictions; the rate is the slope of the worker's own
    ``nirwatch_predictions_total`` between its first and last published batch (so the group
    join is excluded);
(b) end-to-end latency (instrument timestamp -> prediction published, from each prediction's
    ``published_at - timestamp``) at paced offered loads, p50 / p99;
    With ``--side-consumer`` a plain consumer (no group) also reads the spectra during each
    load and times them: the Kafka path's own latency under the same load, beside the worker;
(c) the worker's peak RSS (``VmHWM``) and its RSS sampled over the run;
(d) a naive baseline in a child process: kafka-python loop, JSON spectrum per message, model
    called on one spectrum at a time, each prediction published synchronously;
(e) when the bundle's CNN is an ensemble (the default: 5 networks), the drain (a) again with a
    copy of the bundle whose CNN is member 0 alone, labelled "one network" (``--no-one-network``
    skips it).

The last output line is one JSON object with ``served`` (the CNN ensemble size),
``throughput_sps``, ``one_network_throughput_sps``, ``baseline_sps``, ``ratio``,
``p99_ms_at_1000`` and ``peak_rss_mb``. ``--quick`` finishes within about a minute.

    .venv/bin/python benchmarks/throughput.py [--quick] [--bundle DIR] [--drain N]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from bench_worker import WorkerProcess, drain_rate, stage_summary
from kafka import TopicPartition
from kafka_clients import SideConsumer
from naive_baseline import run_baseline
from one_network import drain_phase, one_network_bundle

from ingest.streaming import MessageIds
from nirwatch.messages.spectrum import MAGIC, VERSION, SpectrumHeader, encode_spectrum
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import ProbeSpec, TabletLineSimulator, calibration_set
from nirwatch.transport.broker import kafka_bootstrap
from nirwatch.transport.kafka import ensure_topics, make_consumer, make_producer

PROBES = [f"probe-{i:02d}" for i in range(12)]
GRID = "lin:600:1898:2"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- model ---------------------------------------------------------------------------------


def build_bundle(out: Path, quick: bool, members: int) -> Path:
    """Fit a CNN + PLS bundle on simulated calibration spectra into ``out``.

    Throughput depends on the architecture and ensemble size, not on how long the networks were
    trained, so training is short (few epochs, little augmentation) and the plots-heavy report
    is what it is. A bundle directory given with ``--bundle`` is reused when it exists.
    """
    from training.fit import fit_bundle

    X, y, wl = calibration_set(200 if quick else 400, seed=0)
    return fit_bundle(
        X, y, wl, target="api", unit="mg", model="both", out_dir=out,
        cv_folds=5, pls_max_components=12, epochs=2 if quick else 5,
        cnn_members=members, augment_copies=2,
    )  # fmt: skip


def _cnn_members(bundle: Path) -> int | None:
    try:
        meta = json.loads((bundle / "cnn.json").read_text()).get("meta", {})
    except OSError:
        return None
    members = meta.get("members") or meta.get("n_members")
    return int(members) if isinstance(members, int) else None


# -- spectra -------------------------------------------------------------------------------


def spectra_pool(n: int, seed: int = 1) -> np.ndarray:
    """``n`` simulated probe spectra (float32), reused cyclically by the load generators."""
    sim = TabletLineSimulator([ProbeSpec(p) for p in PROBES], seed=seed)
    per = -(-n // len(PROBES))
    return np.concatenate([sim.next_batch(p, per).spectra for p in PROBES])[:n]


class MessageFactory:
    """Spectrum messages stamped when made; the same bytes as ``encode_spectrum`` writes.

    The float32 bodies are converted once and the JSON header is filled from a template, so the
    load generator keeps up with the offered rate on a shared 2-core machine.
    """

    def __init__(self, pool: np.ndarray) -> None:
        # Message ids as nirwatch's instrument adapters mint them (a random prefix per run and a
        # counter), not uuid4: the audit trail indexes them.
        self.ids = MessageIds()
        self.bodies = [row.astype("<f4").tobytes() for row in pool]
        self.n_points = pool.shape[1]
        self.keys = [p.encode() for p in PROBES]
        first = self.make(0, "check")[1]
        header = json.loads(first[8 : 8 + struct.unpack_from("<H", first, 6)[0]])
        want = encode_spectrum(SpectrumHeader(**header), pool[0])
        assert first == want, "message template drifted from nirwatch.messages.spectrum"

    def make(self, i: int, tag: str) -> tuple[bytes, bytes]:
        probe = PROBES[i % len(PROBES)]
        head = (
            f'{{"message_id":"{self.ids()}","instrument_id":"{probe}",'
            f'"sample_id":"{tag}-{i}","timestamp":{time.time()!r},"grid":"{GRID}",'
            f'"n_points":{self.n_points},"product":"tablet-200mg","batch":"",'
            f'"units":"absorbance","extra":{{}}}}'
        ).encode()
        prefix = struct.pack("<4sBBH", MAGIC, VERSION, 0, len(head))
        return self.keys[i % len(PROBES)], prefix + head + self.bodies[i % len(self.bodies)]


def send_batch(
    producer: Any, topic: str, factory: MessageFactory, n: int, start: int, tag: str
) -> None:
    """Send messages ``start .. start + n - 1`` (tagged ``tag``) and wait for their acks."""
    for i in range(start, start + n):
        key, value = factory.make(i, tag)
        producer.send(topic, key=key, value=value)
    producer.flush()


def prefill(kafka: KafkaSettings, topic: str, n: int, factory: MessageFactory) -> float:
    producer = make_producer(kafka, linger_ms=20)
    t0 = time.perf_counter()
    send_batch(producer, topic, factory, n, 0, "drain")
    producer.close()
    return n / (time.perf_counter() - t0)


def offered_load(kafka: KafkaSettings, factory: MessageFactory, rate: int, seconds: float) -> int:
    """Send ``rate`` spectra/s for ``seconds``, timestamped when sent, in 10 ms ticks."""
    producer = make_producer(kafka, linger_ms=1)
    tick = 0.01
    sent, t0 = 0, time.monotonic()
    while True:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        due = int(rate * now)
        while sent < due:
            key, value = factory.make(sent, f"load{rate}")
            producer.send(kafka.topic_spectra, key=key, value=value)
            sent += 1
        producer.flush()
        time.sleep(max(0.0, tick - (time.monotonic() - t0 - now)))
    producer.flush()
    producer.close()
    return sent


class PredictionReader:
    """Reads the predictions topic from the current end and keeps load-phase latencies."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.consumer = make_consumer(kafka, None)
        topic = kafka.topic_predictions
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.latency_ms: dict[str, list[float]] = {}

    def read(self, tag: str, expected: int, timeout: float) -> list[float]:
        """Latencies of ``expected`` predictions whose sample id starts with ``tag-``."""
        got = self.latency_ms.setdefault(tag, [])
        marker = f'"sample_id":"{tag}-'.encode()
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=200, max_records=5000).values():
                for r in records:
                    if marker in r.value:
                        p = json.loads(r.value)
                        got.append(1000 * (p["published_at"] - p["timestamp"]))
        return got


# -- naive baseline ------------------------------------------------------------------------


# -- main ----------------------------------------------------------------------------------


def run_soak(
    worker: WorkerProcess,
    kafka: KafkaSettings,
    factory: MessageFactory,
    rate: int,
    seconds: float,
    total: float,
) -> dict[str, Any]:
    """``rate`` spectra/s for ``seconds`` in bursts; the workers' RSS per minute, and its growth
    after minute 1.

    Memory that grows with the number of spectra served shows as a rising per-minute maximum;
    the first minute is warm-up (allocator pools, torch and kafka-python buffers). The load
    comes as a burst of ``5 * rate`` spectra every 5 s, sent in large producer batches: the
    embedded broker keeps every record in memory, and the paced load's tiny batches (a flush
    every 10 ms) made its fetches slow down until it, not the worker, set the pace (at 300/s it
    used a full core after 10 minutes and the worker had served a fifth of the load).
    """
    log(f"soak: {rate}/s for {seconds:.0f} s, a burst every 5 s")
    t_start = len(worker.rss)
    producer = make_producer(kafka, linger_ms=20)
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        send_batch(producer, kafka.topic_spectra, factory, 5 * rate, sent, "soak")
        sent += 5 * rate
        time.sleep(max(0.0, 5.0 * (sent / (5 * rate)) - (time.monotonic() - t0)))
    producer.close()
    worker.wait_for(total + sent, timeout=900)
    samples = worker.rss[t_start:]
    t0 = samples[0][0] if samples else 0.0
    per_minute: dict[int, float] = {}
    for t, mb in samples:
        minute = int((t - t0) // 60)
        per_minute[minute] = max(per_minute.get(minute, 0.0), mb)
    maxima = [round(per_minute[m], 1) for m in sorted(per_minute)]
    growth = round(max(maxima[1:]) - maxima[1], 1) if len(maxima) > 2 else float("nan")
    log(f"soak: sent {sent}; RSS max per minute {maxima} MiB; growth after minute 1 {growth} MiB")
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": sent,
        "rss_mb_max_per_minute": maxima,
        "growth_after_first_minute_mb": growth,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run, about a minute")
    p.add_argument(
        "--bundle", type=Path, help="bundle to serve; fitted there first if it does not exist"
    )
    p.add_argument("--cnn-members", type=int, help="CNN ensemble size when fitting (5 / quick 1)")
    p.add_argument("--drain", type=int, help="spectra pre-filled and drained (default 200000)")
    p.add_argument("--loads", default="100,1000,5000", help="offered loads, spectra/s")
    p.add_argument("--load-seconds", type=float, help="seconds per offered load")
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--max-wait-ms", type=int, default=10)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--baseline-seconds", type=float)
    p.add_argument("--torch-threads", type=int, help="worker's CNN threads (default: settings)")
    p.add_argument("--soak-seconds", type=float, default=0.0, help="RSS soak after (b)")
    p.add_argument("--soak-rate", type=int, default=2000, help="offered load of the soak")
    p.add_argument("--workers", type=int, default=1, help="worker processes in one consumer group")
    p.add_argument(
        "--no-audit", dest="audit", action="store_false", help="worker without the audit trail"
    )
    p.add_argument(
        "--no-one-network",
        dest="one_network",
        action="store_false",
        help="skip (e): the drain again with member 0 of the bundle's CNN alone",
    )
    p.add_argument(
        "--side-consumer",
        action="store_true",
        help="also time a plain consumer of the spectra during each load (the Kafka path alone)",
    )
    args = p.parse_args(argv)
    drain_n = args.drain or (10_000 if args.quick else 200_000)
    load_s = args.load_seconds or (2.0 if args.quick else 20.0)
    base_s = args.baseline_seconds or (3.0 if args.quick else 15.0)
    loads = [int(x) for x in args.loads.split(",")]
    members = args.cnn_members or (1 if args.quick else 5)
    t_start = time.monotonic()

    with (
        kafka_bootstrap(os.environ.get("NIRWATCH_KAFKA_BOOTSTRAP")) as bootstrap,
        tempfile.TemporaryDirectory() as tmp,
    ):
        tag = uuid.uuid4().hex[:6]
        kafka = KafkaSettings(
            bootstrap=bootstrap,
            topic_spectra=f"bench{tag}.spectra",
            topic_predictions=f"bench{tag}.predictions",
            topic_dead_letter=f"bench{tag}.dlq",
            partitions=6,
        )
        ensure_topics(
            kafka, [kafka.topic_spectra, kafka.topic_predictions, kafka.topic_dead_letter]
        )
        bundle = args.bundle or Path(tmp) / "bundle"
        if not bundle.exists():
            t0 = time.monotonic()
            build_bundle(bundle, args.quick, members)
            log(f"bundle fitted in {time.monotonic() - t0:.1f} s: {bundle}")
        manifest = json.loads((bundle / "manifest.json").read_text())
        models: dict[str, Any] = {
            "cnn": bool(manifest.get("models", {}).get("cnn")),
            "bundle": str(bundle),
        }
        models["cnn_members"] = _cnn_members(bundle)
        pool = spectra_pool(4096)
        factory = MessageFactory(pool)
        prefill_sps = prefill(kafka, kafka.topic_spectra, drain_n, factory)
        log(f"pre-filled {drain_n} spectra ({prefill_sps:.0f}/s)")

        worker = WorkerProcess(kafka, bundle, args, Path(tmp))
        stages: dict[str, dict[str, Any]] = {}
        try:
            before = worker.metrics()
            samples = worker.wait_for(drain_n, timeout=600)
            throughput = drain_rate(samples, drain_n)
            stages["drain"] = stage_summary(before, worker.metrics())
            log(f"(a) drained {drain_n}: {throughput:.0f} spectra/s; stages {stages['drain']}")
            reader = PredictionReader(kafka)
            total = float(drain_n)
            latency: dict[int, dict[str, Any]] = {}
            for rate in loads:
                before = worker.metrics()
                side = (
                    SideConsumer(kafka, kafka.topic_spectra, f"load{rate}")
                    if args.side_consumer
                    else None
                )
                sent = offered_load(kafka, factory, rate, load_s)
                total += sent
                # Above the worker's capacity the backlog drains after the load stops and the
                # latencies measure queueing ("saturated"): wait for it.
                worker.wait_for(total, timeout=900)
                stages[f"load{rate}"] = stage_summary(before, worker.metrics())
                ms = np.asarray(reader.read(f"load{rate}", sent, timeout=120))
                latency[rate] = {
                    "sent": sent,
                    "sent_sps": round(sent / load_s),
                    "saturated": sent / load_s > throughput,
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "max_ms": float(ms.max()),
                }
                log(
                    f"(b) {rate}/s offered: p50 {latency[rate]['p50_ms']:.1f} ms, "
                    f"p99 {latency[rate]['p99_ms']:.1f} ms ({sent} spectra in {load_s:g} s)"
                )
                if side is not None:
                    path = side.stop(sent)
                    latency[rate]["kafka_path_p50_ms"] = float(np.percentile(path, 50))
                    latency[rate]["kafka_path_p99_ms"] = float(np.percentile(path, 99))
                    log(
                        f"    Kafka path alone (plain consumer beside the worker): p50 "
                        f"{latency[rate]['kafka_path_p50_ms']:.1f} ms, p99 "
                        f"{latency[rate]['kafka_path_p99_ms']:.1f} ms"
                    )
            soak: dict[str, Any] = {}
            if args.soak_seconds:
                soak = run_soak(worker, kafka, factory, args.soak_rate, args.soak_seconds, total)
            peak = worker.peak_rss_mb()
            served = worker.served_by()
            log(f"served by: {served}")
        finally:
            worker.stop()
        rss = worker.rss
        log(f"(c) worker peak RSS {peak:.0f} MiB")
        baseline = run_baseline(kafka, bundle, pool, base_s, args.torch_threads, PROBES)
        log(f"(d) naive baseline: {baseline:.1f} spectra/s")
        one: dict[str, Any] = {}
        if args.one_network and (models["cnn_members"] or 1) > 1:
            single = one_network_bundle(bundle, Path(tmp) / "one-network")
            if single is None:
                log(f"(e) skipped: {bundle} is signed, its one-network copy could not be")
            else:
                one = drain_phase(
                    kafka, single, args, Path(tmp), drain_n,
                    lambda k, topic, n: prefill(k, topic, n, factory),
                )  # fmt: skip
                log(
                    f"(e) one network (member 0 of the same bundle): drained {drain_n}: "
                    f"{one['throughput_sps']:.0f} spectra/s; stages {one['stages']}"
                )

    half = len(rss) // 2
    report: dict[str, Any] = {
        "models": models,
        "audit": args.audit,
        "batch_size": args.batch_size,
        "max_wait_ms": args.max_wait_ms,
        "torch_threads": args.torch_threads,
        "workers": args.workers,
        "served_by": served,
        "drain_n": drain_n,
        "prefill_sps": round(prefill_sps),
        "latency": latency,
        "soak": soak,
        "one_network": one,
        # Per micro-batch stage of the worker loop (nirwatch_batch_stage_seconds) per phase.
        "stages": stages,
        "rss_mb_first_half_max": max((r for _, r in rss[:half]), default=float("nan")),
        "rss_mb_second_half_max": max((r for _, r in rss[half:]), default=float("nan")),
        "wall_s": round(time.monotonic() - t_start, 1),
        "cpus": os.cpu_count(),
        "loadavg_1m_end": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=1))
    print(
        json.dumps(
            {
                "served": f"CNN x{models['cnn_members']} + PLS",
                "throughput_sps": round(throughput, 1),
                "one_network_throughput_sps": round(one.get("throughput_sps", float("nan")), 1),
                "baseline_sps": round(baseline, 1),
                "ratio": round(throughput / baseline, 2),
                "p99_ms_at_1000": round(latency.get(1000, {}).get("p99_ms", float("nan")), 2),
                "peak_rss_mb": round(peak, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
