"""The ingest edge's own cost per spectrum: ``SpectrumProducer.send`` without a broker.

Every adapter publishes through :class:`ingest.producer.SpectrumProducer`, which validates and
encodes each spectrum before handing the bytes to the Kafka client. This times that part alone:
the Kafka client is replaced by one that acknowledges at once, so the figure is the producer's
CPU per spectrum (validation, encoding, bookkeeping), not the broker's. Spectra are the tablet
simulator's (650 points, ``lin:600:1898:2``), headers as ``ingest.streaming`` builds them.

The last output line is one JSON object: ``us_per_spectrum`` (best of ``--repeats`` runs of
``--spectra`` sends) and ``spectra_per_s``.

    .venv/bin/python benchmarks/ingest_producer.py [--spectra 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from ingest.producer import SpectrumProducer
from ingest.settings import IngestSettings
from ingest.streaming import MessageIds
from nirwatch.messages.spectrum import SpectrumHeader
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import GRID, ProbeSpec, TabletLineSimulator


class _Acked:
    """A send future that is already acknowledged."""

    def add_callback(self, fn: Callable[[object], None]) -> None:
        fn(None)

    def add_errback(self, fn: Callable[[BaseException], None]) -> None:
        pass


class _NullProducer:
    """Stands in for ``KafkaProducer``: keeps nothing, acknowledges every send."""

    _acked = _Acked()

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> _Acked:
        return self._acked

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def run(n: int, repeats: int) -> dict[str, Any]:
    sim = TabletLineSimulator([ProbeSpec("probe-1")], seed=0)
    batch = sim.next_batch("probe-1", min(n, 2000))
    settings = IngestSettings(kafka=KafkaSettings(bootstrap="127.0.0.1:1"))
    producer = SpectrumProducer(settings, producer_factory=_NullProducer)  # type: ignore[arg-type]
    ids = MessageIds()
    rows = len(batch.sample_ids)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            header = SpectrumHeader(
                message_id=ids(),
                instrument_id="probe-1",
                sample_id=batch.sample_ids[i % rows],
                timestamp=time.time(),
                grid=GRID,
                n_points=sim.n_points,
                product="tablet-200mg",
                batch="LOT-1",
            )
            producer.send(header, batch.spectra[i % rows])
        best = min(best, time.perf_counter() - t0)
    assert producer.dead_lettered == 0 and producer.sent == n * repeats
    return {
        "spectra": n,
        "repeats": repeats,
        "us_per_spectrum": round(best / n * 1e6, 2),
        "spectra_per_s": round(n / best),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spectra", type=int, default=20_000, help="sends per run")
    p.add_argument("--repeats", type=int, default=5, help="runs; the best is reported")
    args = p.parse_args(argv)
    print(json.dumps(run(args.spectra, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
