"""Settings shared by every service.

Each service owns one frozen settings object (``NIRWATCH_`` env prefix) that it reads once in
``main()`` with :func:`load_settings` and passes down explicitly. Nothing deeper reads
``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from nirwatch.errors import BrokerNotConfiguredError, ConfigError
from nirwatch.renames import renamed_env_sources

S = TypeVar("S", bound=BaseSettings)

#: Where services keep local state unless a setting says otherwise (``NIRWATCH_STATE_DIR``):
#: the audit trail, retrain reports. Relative paths are relative to the working directory.
DEFAULT_STATE_DIR = Path("var")


def state_dir_field() -> Any:
    """A ``state_dir`` field read from ``NIRWATCH_STATE_DIR`` whatever the class's prefix."""
    return Field(
        default=DEFAULT_STATE_DIR,
        validation_alias=AliasChoices("state_dir", "NIRWATCH_STATE_DIR"),
        description="directory for local state (NIRWATCH_STATE_DIR)",
    )


def under_state_dir(data: Any, field: str, name: str) -> Any:
    """For a ``mode="before"`` validator: ``field`` unset becomes ``<state_dir>/<name>``."""
    if isinstance(data, dict) and data.get(field) in (None, ""):
        state = data.get("state_dir") or data.get("NIRWATCH_STATE_DIR") or DEFAULT_STATE_DIR
        data = {**data, field: Path(state) / name}
    return data


class NirwatchSettings(BaseSettings):
    """Base class: frozen, ``NIRWATCH_`` prefix, unknown variables ignored.

    ``renamed_env`` maps a variable's old name to its field: still read, below the new name,
    with a warning (:mod:`nirwatch.renames`).
    """

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_", frozen=True, extra="ignore")
    renamed_env: ClassVar[dict[str, str]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = (init_settings, env_settings, dotenv_settings, file_secret_settings)
        return renamed_env_sources(settings_cls, sources)


class KafkaSettings(NirwatchSettings):
    """How to reach Kafka and which topics to use (``NIRWATCH_KAFKA_*``).

    ``bootstrap`` is required by every service (:func:`require_bootstrap`); only ``nirwatch
    demo`` and tests start a broker when it is empty (see :mod:`nirwatch.transport.broker`).
    """

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_KAFKA_", frozen=True, extra="ignore")

    bootstrap: str | None = Field(default=None, description="host:port[,host:port]")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    topic_spectra: str = "nirwatch.spectra"
    topic_predictions: str = "nirwatch.predictions"
    topic_dead_letter: str = "nirwatch.spectra.dlq"
    topic_lab_results: str = "nirwatch.lab-results"
    partitions: int = Field(default=6, ge=1, description="partitions when nirwatch creates topics")

    def env(self) -> dict[str, str]:
        """``NIRWATCH_KAFKA_*`` variables that give a child process these settings.

        Unset fields are left out; the SASL password is passed in clear (it is the child's
        own configuration, as it would be in its environment).
        """
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[f"NIRWATCH_KAFKA_{name.upper()}"] = str(value)
        return out

    def client_options(self) -> dict[str, Any]:
        """Connection keyword arguments shared by kafka-python producers, consumers and admins."""
        if not self.bootstrap:
            raise ConfigError(
                "NIRWATCH_KAFKA_BOOTSTRAP is not set: expected host:port of a Kafka broker "
                "(`nirwatch broker` starts one and prints the export line)"
            )
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ConfigError(
                    "NIRWATCH_KAFKA_SECURITY_PROTOCOL="
                    f"{self.security_protocol} needs NIRWATCH_KAFKA_SASL_MECHANISM, "
                    "NIRWATCH_KAFKA_SASL_USERNAME and NIRWATCH_KAFKA_SASL_PASSWORD"
                )
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return opts


def require_bootstrap(kafka: KafkaSettings, command: str) -> str:
    """The configured bootstrap address, or a refusal naming the variable to set.

    Parameters
    ----------
    kafka : KafkaSettings
        The service's Kafka settings.
    command : str
        The command that needs the broker (``worker``, ``simulate``...), for the message.

    Raises
    ------
    BrokerNotConfiguredError
        When ``NIRWATCH_KAFKA_BOOTSTRAP`` is not set: services fail closed.
    """
    if kafka.bootstrap:
        return kafka.bootstrap
    raise BrokerNotConfiguredError(
        f"NIRWATCH_KAFKA_BOOTSTRAP is not set: nirwatch {command} needs a Kafka broker and "
        "never starts one of its own. Start one with `nirwatch broker` and run the line it "
        "prints (export NIRWATCH_KAFKA_BOOTSTRAP=127.0.0.1:9092), or set "
        "NIRWATCH_KAFKA_BOOTSTRAP=host:port of your cluster; `nirwatch demo` runs everything "
        "on an embedded broker."
    )


def options_given(args: Any, fields: dict[str, str]) -> dict[str, Any]:
    """Settings overrides from command-line options: ``{field: value}`` for each option in
    ``fields`` (option name -> settings field) that was given (not None)."""
    return {
        field: getattr(args, opt)
        for opt, field in fields.items()
        if getattr(args, opt, None) is not None
    }


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment (plus explicit overrides), naming bad variables.

    Raises
    ------
    ConfigError
        With one line per invalid field, spelled as the environment variable to fix.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            got = err.get("input")
            lines.append(f"{prefix}{name}: {err['msg']} (got {got!r})")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from exc
