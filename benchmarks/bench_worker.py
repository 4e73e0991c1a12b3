"""The worker under test as a child process, read through its metrics endpoint and /proc."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from nirwatch.settings import KafkaSettings
from nirwatch.transport.broker import free_port

STAGES = ("poll", "decode", "predict", "audit", "publish", "commit")


def parse_metrics(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a Prometheus text exposition (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _stage_series(m: dict[str, float]) -> dict[tuple[str, str, str], float]:
    """``(stage, suffix, le) -> value`` of the stage histogram in a parsed exposition."""
    out: dict[tuple[str, str, str], float] = {}
    prefix = "nirwatch_batch_stage_seconds_"
    for key, value in m.items():
        if not key.startswith(prefix) or "{" not in key:
            continue
        suffix, _, labels = key[len(prefix) :].partition("{")
        kv = dict(item.split("=", 1) for item in labels.rstrip("}").split(","))
        stage, le = kv.get("stage", '""').strip('"'), kv.get("le", '""').strip('"')
        out[(stage, suffix, le)] = value
    return out


def stage_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, dict]:
    """Per worker stage between two metric snapshots: batches, mean ms, share of batches > 50 ms.

    From the ``nirwatch_batch_stage_seconds`` histogram, so "> 50 ms" is exact at that bucket
    bound; ``max_le_ms`` is the smallest bucket bound that holds every batch of the window.
    """
    b, a = _stage_series(before), _stage_series(after)
    out: dict[str, dict] = {}
    for stage in STAGES:

        def delta(suffix: str, le: str = "", _stage: str = stage) -> float:
            return a.get((_stage, suffix, le), 0.0) - b.get((_stage, suffix, le), 0.0)

        n = delta("count")
        if n <= 0:
            continue
        bounds = sorted(
            float(le) for st, suf, le in a if st == stage and suf == "bucket" and le != "+Inf"
        )
        max_le = next((x for x in bounds if delta("bucket", _le(x, a, stage)) >= n), float("inf"))
        out[stage] = {
            "batches": int(n),
            "mean_ms": round(1000 * delta("sum") / n, 2),
            "share_over_50ms": round((n - delta("bucket", _le(0.05, a, stage))) / n, 4),
            "max_le_ms": 1000 * max_le,
        }
    return out


def _le(bound: float, series: dict[tuple[str, str, str], float], stage: str) -> str:
    """The exposition's spelling of bucket bound ``bound``."""
    for st, suf, le in series:
        if st == stage and suf == "bucket" and le != "+Inf" and float(le) == bound:
            return le
    raise KeyError(f"no bucket le={bound} for stage {stage}")


class WorkerProcess:
    """``--workers`` x ``nirwatch worker`` as children in one consumer group (one per core is
    how a deployment scales past the GIL), read through their metrics endpoints and /proc.

    Counters and histograms are summed over the children; RSS is sampled per child.
    """

    def __init__(
        self, kafka: KafkaSettings, bundle: Path, args: argparse.Namespace, tmp: Path
    ) -> None:
        env = {
            **os.environ,
            **kafka.env(),
            "NIRWATCH_AUDIT_PATH": str(tmp / "audit.sqlite3"),
            "NIRWATCH_WORKER_SESSION_TIMEOUT_MS": "2000",
            "NIRWATCH_WORKER_HEARTBEAT_INTERVAL_MS": "500",
        }
        group = f"bench-{uuid.uuid4().hex[:6]}"
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for _ in range(max(1, getattr(args, "workers", 1))):
            port = free_port()
            cmd = [sys.executable, "-m", "nirwatch.apps.cli", "worker", "--bundle", str(bundle)]
            cmd += ["--metrics-port", str(port), "--device", args.device]
            cmd += [
                "--micro-batch-size",
                str(args.batch_size),
                "--max-wait-ms",
                str(args.max_wait_ms),
            ]
            cmd += ["--group-id", group]
            cmd += [] if args.audit else ["--no-audit"]
            if args.torch_threads is not None:
                cmd += ["--torch-threads", str(args.torch_threads)]
            self.ports.append(port)
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
        #: (seconds since start, RSS MiB summed over the children)
        self.rss: list[tuple[float, float]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _status(self, field: str) -> list[float]:
        out = []
        for proc in self.procs:
            value = float("nan")
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        value = int(line.split()[1]) / 1024  # kB -> MiB
            except OSError:
                pass
            out.append(value)
        return out

    def _sample(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.5) and all(p.poll() is None for p in self.procs):
            self.rss.append((time.monotonic() - t0, sum(self._status("VmRSS"))))

    def metrics(self) -> dict[str, float]:
        """The children's metrics now, summed (a child that does not answer adds nothing)."""
        total: dict[str, float] = {}
        for port in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    one = parse_metrics(r.read().decode())
            except OSError:
                continue
            for key, value in one.items():
                total[key] = total.get(key, 0.0) + value
        return total

    def predictions(self) -> float:
        m = self.metrics()
        return sum(v for k, v in m.items() if k.startswith("nirwatch_predictions_total{"))

    def served_by(self) -> dict[str, float]:
        """Predictions per model and fallbacks per reason so far (from the workers' metrics)."""
        out: dict[str, float] = {}
        for key, value in self.metrics().items():
            for metric, label in (
                ("nirwatch_predictions_total{", 'model="'),
                ("nirwatch_fallbacks_total{", 'reason="'),
            ):
                if key.startswith(metric) and label in key:
                    name = key.split(label, 1)[1].split('"', 1)[0]
                    tag = ("model:" if "model" in label else "fallback:") + name
                    out[tag] = out.get(tag, 0.0) + value
        return out

    def wait_for(self, total: float, timeout: float) -> list[tuple[float, float]]:
        """Poll the prediction counter until ``total``; returns (time, count) samples."""
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}")
            count = self.predictions()
            samples.append((time.monotonic(), count))
            if count >= total:
                return samples
            time.sleep(0.1)
        raise TimeoutError(f"workers reached {samples[-1][1]:.0f} of {total:.0f} predictions")

    def peak_rss_mb(self) -> float:
        """The largest child's peak RSS (``VmHWM``)."""
        return max(self._status("VmHWM"))

    def stop(self) -> None:
        self._stop.set()
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(30)


def drain_rate(samples: list[tuple[float, float]], total: float) -> float:
    """Slope of the counter from its first non-zero sample to the sample reaching ``total``."""
    first = next((t, c) for t, c in samples if c > 0)
    last = samples[-1]
    return (last[1] - first[1]) / (last[0] - first[0])
