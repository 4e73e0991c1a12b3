"""Settings of the instrument adapters and the ingest producer (``NIRWATCH_INGEST_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from nirwatch.settings import KafkaSettings, NirwatchSettings


class IngestSettings(NirwatchSettings):
    """How spectra are produced to Kafka; read once in ``main()`` and passed down.

    Kafka connection and topics come from ``NIRWATCH_KAFKA_*`` (:class:`KafkaSettings`).
    """

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_INGEST_", frozen=True, extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    #: When the sender falls this far behind its schedule (slow broker, paused process), the
    #: schedule restarts from now instead of bursting the backlog out at full speed.
    max_lag_s: float = Field(default=1.0, gt=0)
    #: A send the broker has not acknowledged after this long fails; the producer is then
    #: recreated (needed after a Tansu restart) and the message re-sent.
    delivery_timeout_ms: int = Field(default=30_000, ge=1000)
    #: How long ``send`` may block for metadata or buffer space before it counts as failed.
    max_block_ms: int = Field(default=10_000, ge=100)
    #: Unacknowledged messages kept for re-sending after a producer is recreated.
    max_retry_buffer: int = Field(default=100_000, ge=0)
    #: Prometheus endpoint of the adapters that export metrics (``file-drop``); port 0: none.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    product: str = "tablet-200mg"
    batch: str = ""
    seed: int = 0


class OpcUaIngestSettings(NirwatchSettings):
    """``nirwatch opcua-ingest``: which analyser server and nodes to read (``NIRWATCH_OPCUA_INGEST_*``).

    The producer side (timeouts, product, batch) comes from ``NIRWATCH_INGEST_*``
    (:class:`IngestSettings`), the broker from ``NIRWATCH_KAFKA_*``.
    """

    model_config = SettingsConfigDict(
        env_prefix="NIRWATCH_OPCUA_INGEST_", frozen=True, extra="ignore"
    )

    ingest: IngestSettings = Field(default_factory=IngestSettings)

    #: The analyser's endpoint, e.g. ``opc.tcp://analyser:4840``.
    url: str = ""
    #: asyncua security string ``Policy,Mode,client_cert,client_key[,server_cert]``, e.g.
    #: ``Basic256Sha256,SignAndEncrypt,cert.der,key.pem,server.der``; empty: no security.
    security: str = ""
    username: str = ""
    password: SecretStr | None = None
    application_uri: str = "urn:nirwatch:opcua-ingest"
    #: Node ids (``ns=2;s=...``): the spectrum array is the trigger; the others are read when
    #: it changes (the analyser writes them before the array).
    spectrum_node: str = ""
    wavelengths_node: str = ""
    #: Grid id of the spectrum (``lin:first:last:step``) when no wavelength node is given.
    grid: str = ""
    timestamp_node: str = ""
    sample_id_node: str = ""
    instrument_id_node: str = ""
    #: Instrument id when no instrument node is given.
    instrument_id: str = ""
    publishing_interval_ms: int = Field(default=100, ge=10, le=60_000)
    #: Spectra the server queues per subscription between two publishes (none are dropped).
    queue_size: int = Field(default=100, ge=1, le=10_000)
    #: Longest wait between two reconnect attempts (backoff doubles from 0.5 s).
    reconnect_max_s: float = Field(default=30.0, gt=0)
    #: Spectra remembered so a re-read after a reconnect is not published again.
    recent_ids: int = Field(default=10_000, ge=1)
