"""CPU used by an idle inference worker (issue 16): utime + stime from /proc over a window.

Starts the broker (or uses ``NIRWATCH_KAFKA_BOOTSTRAP``), then for each idle fetch wait given
(``NIRWATCH_WORKER_IDLE_FETCH_MAX_WAIT_MS``; 5 is the wait before issue 16, i.e. no back-off)
runs ``nirwatch worker --bundle DIR`` with nothing to consume, lets it load and pass its
``idle_after_s``, and reports its share of one core (and the embedded broker's, when it is
ours) over ``--seconds``, with the load average.

    .venv/bin/python benchmarks/idle_worker.py --bundle DIR [--seconds 30] [--waits 5,500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nirwatch.settings import KafkaSettings
from nirwatch.transport.broker import EmbeddedBroker, free_port
from nirwatch.transport.kafka import ensure_topics


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=30.0, help="measuring window per wait")
    p.add_argument("--settle", type=float, default=20.0, help="seconds to load, join, go idle")
    p.add_argument("--waits", default="5,500", help="idle fetch waits to compare, ms")
    args = p.parse_args(argv)
    rows = []
    with EmbeddedBroker(port=free_port()) as broker, tempfile.TemporaryDirectory() as tmp:
        kafka = KafkaSettings(bootstrap=broker.bootstrap, partitions=6)
        ensure_topics(
            kafka, [kafka.topic_spectra, kafka.topic_predictions, kafka.topic_dead_letter]
        )
        broker_pid = broker._proc.pid if broker._proc is not None else None
        for wait in args.waits.split(","):
            env = {
                **os.environ,
                **kafka.env(),
                "NIRWATCH_AUDIT_PATH": f"{tmp}/audit.sqlite3",
                "NIRWATCH_WORKER_IDLE_FETCH_MAX_WAIT_MS": wait,
            }
            cmd = [
                sys.executable,
                "-m",
                "nirwatch.apps.cli",
                "worker",
                "--bundle",
                str(args.bundle),
            ]
            cmd += ["--metrics-port", str(free_port()), "--device", "cpu"]
            cmd += ["--group-id", f"idle-{uuid.uuid4().hex[:6]}"]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
            try:
                time.sleep(args.settle)
                if proc.poll() is not None:
                    raise SystemExit(f"worker exited with {proc.returncode}")
                b0 = cpu_seconds(broker_pid) if broker_pid else 0.0
                c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                time.sleep(args.seconds)
                c1, t1 = cpu_seconds(proc.pid), time.monotonic()
                b1 = cpu_seconds(broker_pid) if broker_pid else 0.0
            finally:
                proc.terminate()
                proc.wait(30)
            row = {
                "idle_fetch_max_wait_ms": int(wait),
                "worker_core_pct": round(100 * (c1 - c0) / (t1 - t0), 2),
                "broker_core_pct": round(100 * (b1 - b0) / (t1 - t0), 2),
                "seconds": round(t1 - t0, 1),
                "loadavg": os.getloadavg()[0],
            }
            print(
                f"idle fetch wait {wait} ms: worker {row['worker_core_pct']} % of a core, "
                f"broker {row['broker_core_pct']} % [load {row['loadavg']:.2f}]",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
