"""Settings of the inference worker (``NIRWATCH_WORKER_*``), read once in ``main()``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from nirwatch.settings import KafkaSettings, NirwatchSettings


class WorkerSettings(NirwatchSettings):
    """How the inference worker consumes, batches, predicts and reports.

    Kafka connection and topics come from ``NIRWATCH_KAFKA_*`` (:class:`KafkaSettings`).
    Exactly one model source is used: ``registry_dir`` (the champion, hot-reloaded) or
    ``bundle_path`` (one fixed bundle); with neither set, ``NIRWATCH_REGISTRY_DIR`` is used, and
    the bundle signing key is ``NIRWATCH_REGISTRY_HMAC_KEY`` (:class:`RegistrySettings`).
    """

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_WORKER_", frozen=True, extra="ignore")
    #: "batch" alone is a production batch (README, Vocabulary)
    renamed_env: ClassVar[dict[str, str]] = {"NIRWATCH_WORKER_MAX_BATCH_SIZE": "micro_batch_size"}

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    group_id: str = Field(default="nirwatch-worker", min_length=1)
    micro_batch_size: int = Field(
        default=2000, ge=1, le=50_000, description="most spectra per micro-batch"
    )
    max_wait_ms: int = Field(
        default=10, ge=0, le=60_000, description="wait after a micro-batch's first record"
    )
    idle_poll_ms: int = Field(
        default=200, ge=1, le=10_000, description="poll timeout while idle (stop checks)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: torch intra-op threads on CPU (0: torch's default, one per core). One thread is faster
    #: on a small or shared machine: the worker's Kafka I/O needs a core, and idle OpenMP
    #: threads spin-waiting for a descheduled sibling made a 1-spectrum CNN call take 30 ms
    #: instead of 1.5 ms on the 2-core machine (docs/results/throughput.md).
    torch_threads: int = Field(default=1, ge=0, le=256)

    registry_dir: Path | None = None
    bundle_path: Path | None = None
    bundle_checksum: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="with bundle_path: the approved bundle's checksum (its manifest's SHA-256, "
        "`nirwatch models list`); any other bundle is refused",
    )
    reload_interval_s: float = Field(
        default=5.0, gt=0, description="check the champion version at most this often"
    )

    #: Append every publication to the audit trail (``NIRWATCH_AUDIT_*``: SQLite by default).
    audit: bool = True

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="0: no HTTP endpoint")

    #: Back-pressure: bytes the consumer may fetch ahead of the batch in hand. The producer holds
    #: at most one batch, as every batch is flushed before the next poll.
    max_in_flight_bytes: int = Field(default=64 << 20, ge=1 << 20)
    #: How long the broker may hold a fetch waiting for data: the floor of idle latency.
    fetch_max_wait_ms: int = Field(default=5, ge=0, le=10_000)
    #: The fetch wait once no record has come for ``idle_after_s`` (back to
    #: ``fetch_max_wait_ms`` at the first record): what an idle worker costs (a fetch round per
    #: wait: 20 % of a core at 5 ms, 2 % at 500 ms on the 2-core machine) against the extra
    #: latency of the first spectrum after a silence.
    idle_fetch_max_wait_ms: int = Field(default=500, ge=0, le=10_000)
    idle_after_s: float = Field(default=5.0, ge=0, description="silence before the idle wait")
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    producer_linger_ms: int = Field(default=5, ge=0)
    #: A consumer whose group join has not completed for this long is closed and made anew.
    #: kafka-python 3.0.12 can wait on a SyncGroup answer that never comes after the broker
    #: lost the group (seen with the in-memory broker restarted); a new member joins cleanly.
    #: Keep it above max_poll_interval_ms: a healthy rebalance may wait that long for a busy
    #: member.
    group_stall_s: float = Field(default=330.0, ge=1.0)

    #: A predictor that raises for a whole batch is retried this many times with exponential
    #: backoff; then the batch's spectra go to the dead-letter topic (reason
    #: ``predictor_error``) so the line does not stall and nothing is lost.
    predict_attempts: int = Field(default=5, ge=1, le=20)
    predict_backoff_s: float = Field(default=0.5, ge=0)
    predict_backoff_max_s: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        if self.registry_dir is not None and self.bundle_path is not None:
            raise ValueError("set registry_dir or bundle_path, not both")
        if self.bundle_checksum is not None and self.bundle_path is None:
            raise ValueError("bundle_checksum is for a fixed bundle: set bundle_path too")
        return self
