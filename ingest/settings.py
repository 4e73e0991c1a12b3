"""Settings of the instrument adapters and the ingest producer (``NIRWATCH_INGEST_*``)."""

from __future__ import annotations

from pydantic import Field
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
