"""File-drop adapter: spectra files that instrument software writes into a folder, to Kafka.

Many NIR instruments export each measurement (or a run of them) as a file into a folder. This
adapter watches that folder (the *inbox*) for ``.csv`` files (one spectrum per row, numeric
wavelength headers, as :mod:`nirwatch.io.datasets` reads them), ``.npz`` files (keys ``X``,
``wavelengths``, optional per-row metadata) and JCAMP-DX exports (``.jdx``, ``.dx``,
``.jcamp``: :mod:`nirwatch.io.jcamp`), publishes every row through the validating
:class:`~ingest.producer.SpectrumProducer`, and then moves the file:

* ``done/``   every row was published or dead-lettered, and the broker acknowledged them;
* ``failed/`` the file cannot be read as spectra at all. It goes to the dead-letter topic
  (reason ``bad_file``, the file's bytes as the value when they fit in a message), and a
  ``<name>.reason.txt`` beside it says why. Nothing is deleted.

A row that reads but fails validation (NaN/inf, a wavelength grid other than ``expected_grid``)
is dead-lettered on its own with its reason; the other rows of the file go through.

Files are taken oldest first, once their size and modification time have not changed for
``settle_s`` (instruments that write in place), and never while hidden (``.name``) or named
``*.tmp`` / ``*.part`` (those that write, then rename); symbolic links are ignored. A file is moved only after the producer
has flushed: if the broker is down, it stays in the inbox and is tried again (at-least-once).
Message ids are derived from the file's SHA-256 and the row number, so a file published twice
(a crash between flush and move) gives the same message ids: the duplicates are traceable.

Optional columns/keys used per row: ``instrument_id``, ``sample_id``, ``timestamp`` (Unix
seconds; else the file's modification time, the closest thing to the acquisition time),
``product`` and ``batch``; every other metadata column stays in the file only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kafka.errors import KafkaError

from ingest.producer import SpectrumProducer
from ingest.replay import on_even_grid
from nirwatch.errors import DataError
from nirwatch.io.datasets_files import read_csv, read_npz
from nirwatch.io.jcamp import JCAMP_SUFFIXES, read_jcamp
from nirwatch.messages.spectrum import SpectrumHeader
from nirwatch.metrics import FileDropMetrics

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".npz", *JCAMP_SUFFIXES)
#: Larger files are dead-lettered without their bytes (they stay in ``failed/``).
MAX_DEAD_LETTER_FILE_BYTES = 512 * 1024


@dataclass
class DropStats:
    """What the adapter did since it started."""

    files_done: int = 0
    files_failed: int = 0
    files_retried: int = 0
    sent: int = 0
    dead_lettered: int = 0


class Inbox:
    """The files of a folder that are ready to take: settled, visible, of a known kind.

    Parameters
    ----------
    path : Path
        The inbox folder (``done/`` and ``failed/`` are created inside it).
    settle_s : float
        How long a file's size and modification time must stay unchanged.
    clock : callable
        Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, path: Path, settle_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not path.is_dir():
            raise DataError(f"inbox {path} is not a directory")
        self.path = path
        self.done = path / "done"
        self.failed = path / "failed"
        try:
            self.done.mkdir(exist_ok=True)
            self.failed.mkdir(exist_ok=True)
        except OSError as exc:
            # Files are moved into these: an inbox this process cannot write is refused at start.
            raise DataError(
                f"inbox {path}: cannot create done/ and failed/ in it "
                f"({exc.strerror or type(exc).__name__}); the inbox must be writable"
            ) from exc
        self.settle_s = settle_s
        self._clock = clock
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}
        #: Files seen by the last :meth:`ready` that were not ready yet (still settling).
        self.settling = 0
        #: Files seen by the last :meth:`ready`, and the oldest one's modification time (epoch s).
        self.waiting = 0
        self.oldest_mtime: float | None = None

    def ready(self) -> list[Path]:
        """Files to take now, oldest modification time first."""
        now = self._clock()
        found: dict[Path, tuple[int, int]] = {}
        for entry in os.scandir(self.path):
            name = entry.name
            # Symlinks are never followed: a link dropped into a share must not make the adapter
            # publish (or dead-letter, bytes included) a file from elsewhere.
            if (
                not entry.is_file(follow_symlinks=False)
                or name.startswith(".")
                or name.endswith((".tmp", ".part"))
                or not name.lower().endswith(SUFFIXES)
            ):
                continue
            st = entry.stat()
            found[Path(entry.path)] = (st.st_size, st.st_mtime_ns)
        ready = []
        for path, sig in found.items():
            old = self._seen.get(path)
            if old is None or old[0] != sig:
                self._seen[path] = (sig, now)
                if self.settle_s > 0:
                    continue
            if now - self._seen[path][1] >= self.settle_s:
                ready.append((sig[1], path.name, path))
        self._seen = {p: v for p, v in self._seen.items() if p in found}
        self.settling = len(found) - len(ready)
        self.waiting = len(found)
        self.oldest_mtime = min(sig[1] for sig in found.values()) / 1e9 if found else None
        return [p for _, _, p in sorted(ready)]

    def move(self, path: Path, to: Path) -> Path:
        """Rename ``path`` into ``to`` without overwriting an earlier file of the same name."""
        target = to / path.name
        n = 0
        while target.exists():
            n += 1
            target = to / f"{path.stem}-{n}{path.suffix}"
        path.replace(target)
        self._seen.pop(path, None)
        return target


def read_rows(
    path: Path, *, instrument_id: str, product: str, batch: str
) -> Iterator[tuple[SpectrumHeader, np.ndarray]]:
    """The spectra of one dropped file as wire headers and float32 absorbances.

    Raises
    ------
    DataError
        If the file cannot be read as spectra (not CSV/npz, no numeric wavelength headers,
        a non-numeric absorbance, an uneven axis that cannot be resampled...).
    """
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:20]
    suffix, axis_unit = path.suffix.lower(), "nm"
    if suffix == ".csv":
        X, wl, meta, _ = read_csv(path)
    elif suffix == ".npz":
        X, wl, meta, _, _ = read_npz(path)
    else:
        X, wl, meta, axis_unit = read_jcamp(path)
    spectra, _, grid = on_even_grid(X, wl)
    extra: dict[str, object] = {"file": path.name}
    if axis_unit != "nm":  # grid ids read as nm unless the header says otherwise
        extra["axis_unit"] = axis_unit
    mtime = path.stat().st_mtime
    n = spectra.shape[0]

    def column(name: str, default: object) -> list[object]:
        values = meta.get(name)
        return [default] * n if values is None else np.asarray(values).tolist()

    def text(v: object) -> str:
        # CSV metadata that parses as numbers comes back as floats: probe 7, not "7.0".
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)

    instruments = column("instrument_id", instrument_id)
    samples = column("sample_id", None)
    stamps = column("timestamp", mtime)
    products = column("product", product)
    batches = column("batch", batch)
    for i in range(n):
        header = SpectrumHeader(
            # Same file, same ids: a file published twice gives traceable duplicates.
            message_id=f"{digest}{i:012x}",
            instrument_id=text(instruments[i]),
            sample_id=text(samples[i]) if samples[i] is not None else f"{path.stem}-{i:05d}",
            timestamp=float(stamps[i]),  # type: ignore[arg-type]
            grid=grid,
            n_points=spectra.shape[1],
            product=text(products[i]),
            batch=text(batches[i]),
            extra=dict(extra),
        )
        yield header, spectra[i]


def take_file(
    path: Path,
    inbox: Inbox,
    producer: SpectrumProducer,
    stats: DropStats,
    *,
    instrument_id: str,
    product: str = "",
    batch: str = "",
) -> str:
    """Publish one file and move it; returns ``"done"``, ``"failed"`` or ``"retry"``.

    ``"retry"``: the broker could not be reached or did not acknowledge everything, or the
    file could not be opened; it stays in the inbox and is taken again later.
    """
    try:
        return _take(path, inbox, producer, stats, instrument_id, product, batch)
    except (KafkaError, OSError) as exc:
        log.warning("%s: %s; kept for a retry", path.name, exc)
        stats.files_retried += 1
        return "retry"


def _take(
    path: Path,
    inbox: Inbox,
    producer: SpectrumProducer,
    stats: DropStats,
    instrument_id: str,
    product: str,
    batch: str,
) -> str:
    dead_before = producer.dead_lettered
    try:
        rows = list(read_rows(path, instrument_id=instrument_id, product=product, batch=batch))
    except OSError:
        raise  # cannot open it now (locked, vanished): take_file keeps it for a retry
    except Exception as exc:  # noqa: BLE001 - whatever a file's content does, the adapter lives
        detail = str(exc) if path.name in str(exc) else f"{path.name}: {type(exc).__name__}: {exc}"
        size = path.stat().st_size
        value = path.read_bytes() if size <= MAX_DEAD_LETTER_FILE_BYTES else None
        if value is None:
            detail += f" (file of {size} bytes kept in failed/, not in the dead letter)"
        producer.dead_letter(value, instrument_id, "bad_file", detail)
        if not producer.flush():
            stats.files_retried += 1
            return "retry"  # the dead letter is not acknowledged: keep the file, try again
        moved = inbox.move(path, inbox.failed)
        moved.with_name(moved.name + ".reason.txt").write_text(detail + "\n", encoding="utf-8")
        log.warning("%s -> failed/: %s", path.name, exc)
        stats.files_failed += 1
        stats.dead_lettered += 1
        return "failed"
    sent = sum(producer.send(h, x) for h, x in rows)
    if not producer.flush():
        log.warning("%s: the broker did not acknowledge every row; kept for a retry", path.name)
        stats.files_retried += 1
        return "retry"
    inbox.move(path, inbox.done)
    stats.files_done += 1
    stats.sent += sent
    stats.dead_lettered += producer.dead_lettered - dead_before
    log.info("%s -> done/: %d spectra sent, %d dead-lettered", path.name, sent, len(rows) - sent)
    return "done"


def watch_inbox(
    inbox: Inbox,
    producer: SpectrumProducer,
    *,
    stop: threading.Event,
    instrument_id: str,
    product: str = "",
    batch: str = "",
    poll_s: float = 1.0,
    once: bool = False,
    metrics: FileDropMetrics | None = None,
) -> DropStats:
    """Take ready files until ``stop`` is set.

    With ``once``, return when the inbox holds no file that is ready or settling, or when a
    pass took none of its files (the broker did not acknowledge them: they stay for later).
    """
    stats = DropStats()
    while not stop.is_set():
        outcomes = []
        before = (stats.sent, stats.dead_lettered)
        ready = inbox.ready()
        if metrics is not None:
            _observe_inbox(metrics, inbox)
        for path in ready:
            if stop.is_set():
                break
            outcomes.append(
                take_file(
                    path,
                    inbox,
                    producer,
                    stats,
                    instrument_id=instrument_id,
                    product=product,
                    batch=batch,
                )
            )
        if metrics is not None:
            _observe_pass(
                metrics, outcomes, stats.sent - before[0], stats.dead_lettered - before[1]
            )
        progress = any(o != "retry" for o in outcomes)
        if once and (not progress and (outcomes or inbox.settling == 0)):
            break
        if not progress:
            stop.wait(poll_s)  # nothing ready, or the broker is away: do not spin
    return stats


def _observe_inbox(metrics: FileDropMetrics, inbox: Inbox) -> None:
    metrics.inbox_files.set(inbox.waiting)
    oldest = inbox.oldest_mtime
    metrics.oldest_file_age_seconds.set(0.0 if oldest is None else max(0.0, time.time() - oldest))


def _observe_pass(
    metrics: FileDropMetrics, outcomes: list[str], sent: int, dead_lettered: int
) -> None:
    for outcome in outcomes:
        metrics.files.labels(outcome).inc()
    metrics.spectra.labels("sent").inc(sent)
    metrics.spectra.labels("dead_lettered").inc(dead_lettered)
