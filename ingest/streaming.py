"""Run loops that pace adapters' spectra into a :class:`~ingest.producer.SpectrumProducer`.

Each spectrum is stamped with the wall-clock time at which it is sent (its acquisition time
for a live probe), so end-to-end latency downstream is measured from this moment.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ingest.pacing import Pacer, ProbeSchedule, RatePacer
from ingest.producer import SpectrumProducer
from nirwatch.messages.lab_result import LabResult
from nirwatch.messages.spectrum import SpectrumHeader
from nirwatch.simulation.simulator import SimulatedBatch, TabletLineSimulator

#: Spectra generated per probe at once: vectorised generation, bounded memory.
MAX_CHUNK = 1000


class MessageIds:
    """Unique 32-hex-digit message ids: a random 64-bit prefix per run and a 64-bit counter.

    ``uuid4()`` per message reads the kernel's random source each time, which costs more than
    encoding the spectrum at thousands of messages per second.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


@dataclass
class StreamStats:
    """What a run loop did."""

    sent: int = 0
    dead_lettered: int = 0
    lab_results: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _ProbeBuffer:
    """Pre-generated spectra of one probe, refilled a chunk at a time."""

    def __init__(self, sim: TabletLineSimulator, instrument_id: str, chunk: int) -> None:
        self.sim, self.instrument_id, self.chunk = sim, instrument_id, chunk
        self.batch: SimulatedBatch | None = None
        self.pos = 0

    def next(self) -> tuple[SimulatedBatch, int]:
        if self.batch is None or self.pos >= len(self.batch.sample_ids):
            self.batch = self.sim.next_batch(self.instrument_id, self.chunk)
            self.pos = 0
        self.pos += 1
        return self.batch, self.pos - 1


def stream_simulator(
    sim: TabletLineSimulator,
    producer: SpectrumProducer,
    *,
    stop: threading.Event,
    duration_s: float | None = None,
    max_lag_s: float = 1.0,
    product: str = "",
    batch: str = "",
    lab_every: int = 0,
    lab_delay_s: float = 0.0,
    target: str = "api_content",
    on_spectrum: Callable[[SimulatedBatch, int], None] | None = None,
) -> StreamStats:
    """Send the simulator's probes at their rates until ``stop`` is set or ``duration_s`` ends.

    Parameters
    ----------
    lab_every : int
        Every ``lab_every``-th sample of each probe is "pulled for the lab": its reference value
        is published to the lab-results topic ``lab_delay_s`` seconds later (0: never).
    on_spectrum : callable, optional
        Called with (batch, row) after each send (e.g. to record the truth in a test).
    """
    schedule = ProbeSchedule(list(sim.probes.values()))
    buffers = {
        pid: _ProbeBuffer(sim, pid, int(np.clip(np.ceil(p.rate_hz * 0.5), 1, MAX_CHUNK)))
        for pid, p in sim.probes.items()
    }
    pacer = Pacer(max_lag_s=max_lag_s, stop=stop)
    pending_lab: deque[tuple[float, LabResult]] = deque()
    new_message_id = MessageIds()
    stats = StreamStats()
    start_dl = producer.dead_lettered
    while True:
        due, pid = schedule.pop()
        if duration_s is not None and due >= duration_s:
            break
        if not pacer.wait_until(due):
            break
        b, row = buffers[pid].next()
        now = time.time()
        header = SpectrumHeader(
            message_id=new_message_id(),
            instrument_id=pid,
            sample_id=b.sample_ids[row],
            timestamp=now,
            grid=sim.grid,
            n_points=sim.n_points,
            product=product,
            batch=batch,
        )
        if producer.send(header, b.spectra[row]):
            stats.sent += 1
        if on_spectrum is not None:
            on_spectrum(b, row)
        if lab_every > 0 and int(b.indices[row]) % lab_every == 0:
            lab = LabResult(
                sample_id=b.sample_ids[row],
                instrument_id=pid,
                target=target,
                value=float(b.reference_mg[row]),
                unit="mg",
                sampled_at=now,
                timestamp=now + lab_delay_s,
                method="hplc",
            )
            pending_lab.append((time.monotonic() + lab_delay_s, lab))
        while pending_lab and pending_lab[0][0] <= time.monotonic():
            producer.send_lab_result(pending_lab.popleft()[1])
            stats.lab_results += 1
    stats.elapsed_s = pacer.elapsed()
    stats.dead_lettered = producer.dead_lettered - start_dl
    return stats


def stream_rows(
    rows: Iterator[tuple[str, str, np.ndarray, dict[str, object]]],
    grid: str,
    producer: SpectrumProducer,
    *,
    rate_hz: float,
    stop: threading.Event,
    max_lag_s: float = 1.0,
    product: str = "",
    batch: str = "",
    lab_target: str | None = None,
    lab_unit: str = "",
) -> StreamStats:
    """Send (instrument_id, sample_id, spectrum, metadata) rows at ``rate_hz`` in order.

    The row's metadata travels in the header's ``extra``; with ``lab_target``, the row's value
    of that column is also published as its lab result (keyed by sample id).
    """
    pacer = RatePacer(rate_hz, max_lag_s=max_lag_s, stop=stop)
    new_message_id = MessageIds()
    stats = StreamStats()
    start_dl = producer.dead_lettered
    for instrument_id, sample_id, spectrum, meta in rows:
        if not pacer.wait():
            break
        now = time.time()
        header = SpectrumHeader(
            message_id=new_message_id(),
            instrument_id=instrument_id,
            sample_id=sample_id,
            timestamp=now,
            grid=grid,
            n_points=int(np.size(spectrum)),
            product=product,
            batch=batch,
            extra=dict(meta),
        )
        if not producer.send(header, spectrum):
            continue
        stats.sent += 1
        ref = meta.get(lab_target) if lab_target else None
        if isinstance(ref, float) and np.isfinite(ref):
            lab = LabResult(
                sample_id, ref, now, instrument_id=instrument_id, target=str(lab_target),
                unit=lab_unit, sampled_at=now, method="hplc",
            )  # fmt: skip
            producer.send_lab_result(lab)
            stats.lab_results += 1
    stats.elapsed_s = pacer.elapsed()
    stats.dead_lettered = producer.dead_lettered - start_dl
    return stats
