"""The OPC UA adapter: subscribe to an analyser's spectrum node and publish each new spectrum.

The analyser's server (an ADI analyser, or anything exposing a spectrum array) is read with an
asyncua client subscription on the spectrum node; the optional timestamp, sample id, instrument
id and wavelength nodes are read when the spectrum changes (the analyser writes them before the
array). Each spectrum goes through the validating :class:`~ingest.producer.SpectrumProducer`:
a wrong length or NaN is dead-lettered with its reason, the adapter keeps running.

Connection loss: asyncua's client reconnects with exponential backoff and re-creates the
subscription (``auto_reconnect``); a first connection that fails is retried with the same
backoff here. A re-created subscription delivers the current value again, so every spectrum
gets a message id derived from (instrument, sample id, timestamp): the same spectrum read twice
has the same id, and the adapter skips ids it published recently. Nothing is published twice
under a new id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from asyncua import Client, Node, ua

from ingest.producer import SpectrumProducer
from ingest.replay import on_even_grid
from ingest.settings import OpcUaIngestSettings
from nirwatch.errors import ConfigError, DataError
from nirwatch.logs import log_event
from nirwatch.messages.spectrum import SpectrumHeader, encode_spectrum_unchecked
from nirwatch.metrics import OpcUaIngestMetrics

log = logging.getLogger(__name__)


def spectrum_message_id(instrument: str, sample_id: str, timestamp: float) -> str:
    """A UUIDv7-shaped id (32 hex) fixed by the spectrum itself: its time, then a hash.

    Time-ordered like :func:`nirwatch.messages.spectrum.new_message_id`, but the same spectrum read
    again (after a reconnect) gets the same id.
    """
    # Milliseconds: the time survives OPC UA's DateTime (100 ns ticks) and float round trips.
    ms = round(timestamp * 1000) & ((1 << 48) - 1)
    digest = hashlib.sha256(f"{instrument}\0{sample_id}\0{ms}".encode()).digest()
    r = int.from_bytes(digest[:10], "big")
    rand_a, rand_b = (r >> 68) & 0xFFF, r & ((1 << 62) - 1)
    return f"{(ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b:032x}"


def check_settings(settings: OpcUaIngestSettings) -> None:
    """Refuse settings that cannot work, naming the variables to set.

    Raises
    ------
    ConfigError
    """
    if not settings.url or not settings.spectrum_node:
        raise ConfigError(
            "nirwatch opcua-ingest needs NIRWATCH_OPCUA_INGEST_URL (opc.tcp://host:port) and "
            "NIRWATCH_OPCUA_INGEST_SPECTRUM_NODE (e.g. ns=2;s=Spectrum)"
        )
    if not settings.grid and not settings.wavelengths_node:
        raise ConfigError(
            "nirwatch opcua-ingest needs NIRWATCH_OPCUA_INGEST_GRID (lin:first:last:step) or "
            "NIRWATCH_OPCUA_INGEST_WAVELENGTHS_NODE"
        )
    if not settings.instrument_id and not settings.instrument_id_node:
        raise ConfigError(
            "nirwatch opcua-ingest needs NIRWATCH_OPCUA_INGEST_INSTRUMENT_ID or "
            "NIRWATCH_OPCUA_INGEST_INSTRUMENT_ID_NODE"
        )


@dataclass
class IngestStats:
    sent: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    overwritten: int = 0
    connects: int = 0


class _Handler:
    """asyncua subscription handler: queue each spectrum DataValue for the publishing task."""

    def __init__(self, queue: asyncio.Queue[ua.DataValue]) -> None:
        self.queue = queue

    def datachange_notification(self, _node: Node, _val: Any, data: Any) -> None:
        self.queue.put_nowait(data.monitored_item.Value)


class OpcUaIngest:
    """Reads spectra from one analyser server and publishes them.

    Parameters
    ----------
    settings : OpcUaIngestSettings
    producer : SpectrumProducer
    metrics : OpcUaIngestMetrics, optional
    """

    def __init__(
        self,
        settings: OpcUaIngestSettings,
        producer: SpectrumProducer,
        metrics: OpcUaIngestMetrics | None = None,
    ) -> None:
        check_settings(settings)
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.stats = IngestStats()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.connected = asyncio.Event()

    # -- connection -------------------------------------------------------------------------
    async def _client(self) -> Client:
        s = self.settings
        client = Client(
            s.url, timeout=10, auto_reconnect=True, reconnect_max_delay=s.reconnect_max_s
        )
        client.application_uri = s.application_uri
        if s.username:
            client.set_user(s.username)
            if s.password is not None:
                client.set_password(s.password.get_secret_value())
        if s.security:
            await client.set_security_string(s.security)
        return client

    async def run(self, stop: threading.Event) -> IngestStats:
        """Read and publish until ``stop`` is set; connection failures are retried with backoff."""
        delay = 0.5
        while not stop.is_set():
            client = await self._client()
            try:
                await client.connect()
            except (TimeoutError, OSError, ua.UaError) as exc:
                log_event(
                    log,
                    "analyser_unreachable",
                    level=logging.WARNING,
                    url=self.settings.url,
                    error=repr(exc),
                    retry_s=delay,
                )
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            delay = 0.5
            try:
                await self._session(client, stop)
            except ua.uaerrors.BadNodeIdUnknown as exc:
                raise ConfigError(
                    f"the analyser at {self.settings.url} has no node "
                    f"{self.settings.spectrum_node!r} (NIRWATCH_OPCUA_INGEST_SPECTRUM_NODE) or one "
                    f"of the other configured nodes: {exc}"
                ) from exc
            finally:
                self.connected.clear()
                if self.metrics is not None:
                    self.metrics.connected.set(0)
                try:
                    await client.disconnect()
                except Exception:  # noqa: BLE001 - a lost connection may fail to close
                    log.debug("disconnect failed", exc_info=True)
        return self.stats

    async def _session(self, client: Client, stop: threading.Event) -> None:
        self.stats.connects += 1
        queue: asyncio.Queue[ua.DataValue] = asyncio.Queue()

        async def lost(exc: Exception) -> None:
            log_event(
                log, "analyser_lost", level=logging.WARNING, url=self.settings.url, error=repr(exc)
            )
            self.connected.clear()
            if self.metrics is not None:
                self.metrics.connected.set(0)

        client.connection_lost_callback = lost
        sub = await client.create_subscription(
            self.settings.publishing_interval_ms, _Handler(queue)
        )
        spectrum = client.get_node(self.settings.spectrum_node)
        await sub.subscribe_data_change(spectrum, queuesize=self.settings.queue_size)
        log_event(
            log, "analyser_connected", url=self.settings.url, node=self.settings.spectrum_node
        )
        self.connected.set()
        if self.metrics is not None:
            self.metrics.connected.set(1)
        while not stop.is_set():
            try:
                value = await asyncio.wait_for(queue.get(), 0.2)
            except TimeoutError:
                continue
            if not self.connected.is_set():  # the subscription was re-created: connected again
                self.connected.set()
                if self.metrics is not None:
                    self.metrics.connected.set(1)
                    self.metrics.reconnects.inc()
            await self._publish(client, value)

    # -- one spectrum -----------------------------------------------------------------------
    async def _metadata(self, client: Client, value: ua.DataValue) -> dict[str, Any]:
        """The spectrum's id, time, instrument and axis; with any of their nodes configured,
        also the spectrum array itself (``meta["spectrum"]``), read in the same request.

        The notification brings only the array; the other nodes are read after it arrives.
        Were they read alone, an analyser that took its next spectrum in between would have
        the older array published under the newer spectrum's id. One Read request of all
        nodes gives one consistent spectrum, the analyser writing them together.
        """
        s = self.settings
        names = [
            n
            for n in ("timestamp", "sample_id", "instrument_id", "wavelengths")
            if getattr(s, f"{n}_node")
        ]
        if names:
            names.append("spectrum")
        read = (
            await client.read_values([client.get_node(getattr(s, f"{n}_node")) for n in names])
            if names
            else []
        )
        meta = dict(zip(names, read, strict=True))
        ts = meta.get("timestamp") or value.SourceTimestamp or value.ServerTimestamp
        if isinstance(ts, datetime):
            ts = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
        meta["timestamp"] = float(ts) if ts is not None else datetime.now(UTC).timestamp()
        meta.setdefault("instrument_id", s.instrument_id)
        meta["instrument_id"] = str(meta["instrument_id"])
        if meta.get("sample_id") in (None, ""):
            meta["sample_id"] = f"{meta['instrument_id']}@{meta['timestamp']:.3f}"
        meta["sample_id"] = str(meta["sample_id"])
        return meta

    async def _publish(self, client: Client, value: ua.DataValue) -> None:
        raw = value.Value.Value if value.Value is not None else None
        if raw is None or (isinstance(raw, list | tuple) and not raw):
            log.debug("spectrum node has no value yet")
            return
        meta = await self._metadata(client, value)
        raw = self._consistent(raw, meta.pop("spectrum", raw))
        message_id = spectrum_message_id(
            meta["instrument_id"], meta["sample_id"], meta["timestamp"]
        )
        if message_id in self._recent:
            self.stats.duplicates += 1
            if self.metrics is not None:
                self.metrics.spectra.labels("duplicate").inc()
            return
        self._remember(message_id)
        absorbances, grid, detail = self._on_grid(meta.get("wavelengths"), raw)
        header = SpectrumHeader(
            message_id=message_id,
            instrument_id=meta["instrument_id"],
            sample_id=meta["sample_id"],
            timestamp=meta["timestamp"],
            grid=grid,
            n_points=int(absorbances.size),
            product=self.settings.ingest.product,
            batch=self.settings.ingest.batch,
            extra={"source": "opcua"},
        )
        if detail:
            self.producer.dead_letter(
                encode_spectrum_unchecked(header, absorbances),
                header.instrument_id,
                "length_mismatch",
                detail,
            )
            ok = False
        else:
            ok = self.producer.send(header, absorbances)
        result = "sent" if ok else "dead_lettered"
        if ok:
            self.stats.sent += 1
        else:
            self.stats.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.spectra.labels(result).inc()

    def _consistent(self, notified: Any, read: Any) -> Any:
        """The array read with the metadata; counted and logged when it is not the notified
        one (the analyser overwrote that spectrum before it could be read: it is lost, never
        published under another spectrum's id)."""
        if read is None or np.array_equal(np.asarray(read), np.asarray(notified)):
            return notified if read is None else read
        self.stats.overwritten += 1
        if self.metrics is not None:
            self.metrics.spectra.labels("overwritten").inc()
        log_event(
            log, "spectrum_overwritten", level=logging.WARNING, url=self.settings.url,
            why="the analyser took its next spectrum before this one's id and time were read; "
            "publishing interval or analyser cycle too short",
        )  # fmt: skip
        return read

    def _on_grid(self, wavelengths: Any, raw: Any) -> tuple[np.ndarray, str, str]:
        """The absorbances on a grid, its id, and (when the axis does not fit) why not.

        Without a wavelength node the configured grid is used as is (the producer checks the
        length); with one, the axis names the grid, resampled to an even one if it is uneven.
        """
        absorbances = np.asarray(raw, dtype=np.float64).reshape(-1)
        if wavelengths is None:
            return absorbances, self.settings.grid, ""
        fallback = self.settings.grid or "unknown"
        axis = np.asarray(wavelengths, dtype=float).reshape(-1)
        if axis.size != absorbances.size:
            detail = f"wavelength axis has {axis.size} points, the spectrum {absorbances.size}"
            return absorbances, fallback, detail
        try:
            spectra, _, grid = on_even_grid(absorbances.reshape(1, -1), axis)
        except DataError as exc:
            return absorbances, fallback, f"wavelength axis unusable: {exc}"
        return spectra[0], grid, ""

    def _remember(self, message_id: str) -> None:
        self._recent[message_id] = None
        while len(self._recent) > self.settings.recent_ids:
            self._recent.popitem(last=False)


async def _sleep_unless(stop: threading.Event, seconds: float) -> None:
    end = asyncio.get_running_loop().time() + seconds
    while not stop.is_set() and asyncio.get_running_loop().time() < end:
        await asyncio.sleep(min(0.1, seconds))
