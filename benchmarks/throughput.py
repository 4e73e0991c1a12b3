"""Throughput and latency of the inference worker against the real broker (issue 4).

One run, one process tree: this process starts (or uses) the broker, fits a model bundle on
simulated calibration spectra, runs ``nirwatch worker`` as a child process and measures:

(a) sustained throughput: a spectra topic pre-filled with ``--drain`` simulated spectra is
    drained into predictions; the rate is the slope of the worker's own
    ``nirwatch_predictions_total`` between its first and last published batch (so the group
    join is excluded);
(b) end-to-end latency (instrument timestamp -> prediction published, from each prediction's
    ``published_at - timestamp``) at paced offered loads, p50 / p99;
(c) the worker's peak RSS (``VmHWM``) and its RSS sampled over the run;
(d) a naive baseline in a child process: kafka-python loop, JSON spectrum per message, model
    called on one spectrum at a time, each prediction published synchronously.

The last output line is one JSON object with ``throughput_sps``, ``baseline_sps``, ``ratio``,
``p99_ms_at_1000`` and ``peak_rss_mb``. ``--quick`` finishes within about a minute.

    .venv/bin/python benchmarks/throughput.py [--quick] [--bundle DIR] [--drain N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from kafka import TopicPartition

from ingest.simulator import ProbeSpec, TabletLineSimulator, calibration_set
from nirwatch.broker import free_port, kafka_bootstrap
from nirwatch.kafka import ensure_topics, make_consumer, make_producer
from nirwatch.settings import KafkaSettings
from nirwatch.wire import MAGIC, VERSION, SpectrumHeader, encode_spectrum

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
        self.bodies = [row.astype("<f4").tobytes() for row in pool]
        self.n_points = pool.shape[1]
        self.keys = [p.encode() for p in PROBES]
        first = self.make(0, "check")[1]
        header = json.loads(first[8 : 8 + struct.unpack_from("<H", first, 6)[0]])
        want = encode_spectrum(SpectrumHeader(**header), pool[0])
        assert first == want, "message template drifted from nirwatch.wire"

    def make(self, i: int, tag: str) -> tuple[bytes, bytes]:
        probe = PROBES[i % len(PROBES)]
        head = (
            f'{{"message_id":"{uuid.uuid4().hex}","instrument_id":"{probe}",'
            f'"sample_id":"{tag}-{i}","timestamp":{time.time()!r},"grid":"{GRID}",'
            f'"n_points":{self.n_points},"product":"tablet-200mg","batch":"",'
            f'"units":"absorbance","extra":{{}}}}'
        ).encode()
        prefix = struct.pack("<4sBBH", MAGIC, VERSION, 0, len(head))
        return self.keys[i % len(PROBES)], prefix + head + self.bodies[i % len(self.bodies)]


def prefill(kafka: KafkaSettings, topic: str, n: int, factory: MessageFactory) -> float:
    producer = make_producer(kafka, linger_ms=20)
    t0 = time.perf_counter()
    for i in range(n):
        key, value = factory.make(i, "drain")
        producer.send(topic, key=key, value=value)
    producer.flush()
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


# -- worker child process ------------------------------------------------------------------


class WorkerProcess:
    """``nirwatch worker`` as a child, with its metrics endpoint and /proc RSS sampling."""

    def __init__(
        self, kafka: KafkaSettings, bundle: Path, args: argparse.Namespace, tmp: Path
    ) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "NIRWATCH_AUDIT_PATH": str(tmp / "audit.sqlite3"),
            "NIRWATCH_KAFKA_BOOTSTRAP": str(kafka.bootstrap),
            "NIRWATCH_KAFKA_TOPIC_SPECTRA": kafka.topic_spectra,
            "NIRWATCH_KAFKA_TOPIC_PREDICTIONS": kafka.topic_predictions,
            "NIRWATCH_KAFKA_TOPIC_DEAD_LETTER": kafka.topic_dead_letter,
            "NIRWATCH_WORKER_SESSION_TIMEOUT_MS": "2000",
            "NIRWATCH_WORKER_HEARTBEAT_INTERVAL_MS": "500",
        }
        cmd = [sys.executable, "-m", "nirwatch.cli", "worker", "--bundle", str(bundle)]
        cmd += ["--metrics-port", str(self.port), "--device", args.device]
        cmd += ["--batch-size", str(args.batch_size), "--max-wait-ms", str(args.max_wait_ms)]
        cmd += ["--group-id", f"bench-{uuid.uuid4().hex[:6]}"]
        cmd += [] if args.audit else ["--no-audit"]
        if args.torch_threads is not None:
            cmd += ["--torch-threads", str(args.torch_threads)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        self.rss: list[tuple[float, float]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _status(self, field: str) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
        except OSError:
            pass
        return float("nan")

    def _sample(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.5) and self.proc.poll() is None:
            self.rss.append((time.monotonic() - t0, self._status("VmRSS")))

    def predictions(self) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("nirwatch_predictions_total{")
        )

    def served_by(self) -> dict[str, float]:
        """Predictions per model and fallbacks per reason so far (from the worker's metrics)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            for metric, label in (
                ("nirwatch_predictions_total{", 'model="'),
                ("nirwatch_fallbacks_total{", 'reason="'),
            ):
                if line.startswith(metric) and label in line:
                    name = line.split(label, 1)[1].split('"', 1)[0]
                    key = ("model:" if "model" in label else "fallback:") + name
                    out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def wait_for(self, total: float, timeout: float) -> list[tuple[float, float]]:
        """Poll the prediction counter until ``total``; returns (time, count) samples."""
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}")
            count = self.predictions()
            samples.append((time.monotonic(), count))
            if count >= total:
                return samples
            time.sleep(0.1)
        raise TimeoutError(f"worker reached {samples[-1][1]:.0f} of {total:.0f} predictions")

    def peak_rss_mb(self) -> float:
        return self._status("VmHWM")

    def stop(self) -> None:
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def drain_rate(samples: list[tuple[float, float]], total: float) -> float:
    """Slope of the counter from its first non-zero sample to the sample reaching ``total``."""
    first = next((t, c) for t, c in samples if c > 0)
    last = samples[-1]
    return (last[1] - first[1]) / (last[0] - first[0])


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


def baseline_child(args: argparse.Namespace) -> None:
    """The naive loop; prints one JSON line with its rate."""
    import torch

    from nirwatch.bundle import load_bundle

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
    kafka: KafkaSettings, bundle: Path, pool: np.ndarray, seconds: float, threads: int | None
) -> float:
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out = f"naive{tag}.spectra", f"naive{tag}.predictions"
    ensure_topics(kafka, [topic_in, topic_out])
    producer = make_producer(kafka, linger_ms=20)
    for i in range(int(seconds * 1000)):  # more than the naive loop can take in `seconds`
        doc = {
            "message_id": uuid.uuid4().hex,
            "instrument_id": PROBES[i % len(PROBES)],
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
        "--baseline-child",
        "--bundle",
        str(bundle),
        "--baseline-seconds",
        str(seconds),
        "--torch-threads",
        str(threads or 1),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["baseline_sps"])


# -- main ----------------------------------------------------------------------------------


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
    p.add_argument(
        "--no-audit", dest="audit", action="store_false", help="worker without the audit trail"
    )
    p.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_child:
        baseline_child(args)
        return 0
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
        models = {"cnn": bool(manifest.get("models", {}).get("cnn")), "bundle": str(bundle)}
        models["cnn_members"] = _cnn_members(bundle)
        pool = spectra_pool(4096)
        factory = MessageFactory(pool)
        prefill_sps = prefill(kafka, kafka.topic_spectra, drain_n, factory)
        log(f"pre-filled {drain_n} spectra ({prefill_sps:.0f}/s)")

        worker = WorkerProcess(kafka, bundle, args, Path(tmp))
        try:
            samples = worker.wait_for(drain_n, timeout=600)
            throughput = drain_rate(samples, drain_n)
            log(f"(a) drained {drain_n}: {throughput:.0f} spectra/s")
            reader = PredictionReader(kafka)
            total = float(drain_n)
            latency: dict[int, dict[str, Any]] = {}
            for rate in loads:
                sent = offered_load(kafka, factory, rate, load_s)
                total += sent
                # Above the worker's capacity the backlog drains after the load stops and the
                # latencies measure queueing ("saturated"): wait for it.
                worker.wait_for(total, timeout=900)
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
            peak = worker.peak_rss_mb()
            served = worker.served_by()
            log(f"served by: {served}")
        finally:
            worker.stop()
        rss = worker.rss
        log(f"(c) worker peak RSS {peak:.0f} MiB")
        baseline = run_baseline(kafka, bundle, pool, base_s, args.torch_threads)
        log(f"(d) naive baseline: {baseline:.1f} spectra/s")

    half = len(rss) // 2
    report: dict[str, Any] = {
        "models": models,
        "audit": args.audit,
        "batch_size": args.batch_size,
        "max_wait_ms": args.max_wait_ms,
        "torch_threads": args.torch_threads,
        "served_by": served,
        "drain_n": drain_n,
        "prefill_sps": round(prefill_sps),
        "latency": latency,
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
                "throughput_sps": round(throughput, 1),
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
