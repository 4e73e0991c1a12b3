"""Settings of ``nirwatch opcua-server`` (``NIRWATCH_OPCUA_*``), read once in ``run()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from nirwatch.errors import ConfigError
from nirwatch.settings import KafkaSettings, NirwatchSettings, state_dir_field, under_state_dir


class OpcUaServerSettings(NirwatchSettings):
    """How the OPC UA server consumes predictions and whom it lets in.

    Kafka connection and topics come from ``NIRWATCH_KAFKA_*`` (:class:`KafkaSettings`).
    Secure by default: Basic256Sha256 Sign and SignAndEncrypt only, no anonymous users, loopback.
    """

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_OPCUA_", frozen=True, extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    group_id: str = Field(default="nirwatch-opcua", min_length=1)
    #: Interface to listen on; loopback unless the plant network should reach it.
    host: str = "127.0.0.1"
    port: int = Field(default=4840, ge=1, le=65535)
    #: ApplicationUri of the server, also written into its generated certificate.
    application_uri: str = "urn:nirwatch:opcua-server"
    state_dir: Path = state_dir_field()
    #: Server certificate and key (``server_cert.der``, ``server_key.pem``), made on first start.
    cert_dir: Path = Path("var/opcua/pki/own")
    #: Client application certificates (DER or PEM) that may open a session.
    trust_dir: Path = Path("var/opcua/pki/trusted")
    #: Certificates of certificate users: the file name without extension is the user name.
    user_cert_dir: Path = Path("var/opcua/pki/users")
    #: Username/password users, ``name:password`` pairs separated by commas.
    users: SecretStr | None = None
    allow_anonymous: bool = False
    #: Also offer the unencrypted, unsigned None policy (never on a plant network).
    allow_none_policy: bool = False
    #: A prediction older than this is stale: its value turns Bad.
    stale_after_s: float = Field(default=10.0, gt=0)
    #: How often consumer lag and broker reachability are refreshed.
    health_interval_s: float = Field(default=5.0, gt=0)
    idle_poll_ms: int = Field(default=200, ge=1, le=10_000)
    #: How long the broker may hold a fetch waiting for data: the floor of the latency from a
    #: prediction's publication to its OPC UA value (Tansu waits the full time).
    fetch_max_wait_ms: int = Field(default=20, ge=0, le=10_000)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9111, ge=0, le=65535, description="0: no HTTP endpoint")

    @model_validator(mode="before")
    @classmethod
    def _default_dirs(cls, data: Any) -> Any:
        data = under_state_dir(data, "cert_dir", "opcua/pki/own")
        data = under_state_dir(data, "trust_dir", "opcua/pki/trusted")
        return under_state_dir(data, "user_cert_dir", "opcua/pki/users")

    def user_passwords(self) -> dict[str, str]:
        """``users`` as a name -> password map."""
        out: dict[str, str] = {}
        raw = self.users.get_secret_value() if self.users is not None else ""
        for pair in raw.split(","):
            if not pair.strip():
                continue
            name, sep, password = pair.strip().partition(":")
            if not sep or not name or not password:
                raise ConfigError(
                    "NIRWATCH_OPCUA_USERS: expected name:password pairs separated by commas, "
                    f"got an entry without ':' or with an empty part ({name or '?'}:...)"
                )
            out[name] = password
        return out
