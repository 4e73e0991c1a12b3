from __future__ import annotations

import pytest

from nirwatch.errors import ConfigError
from nirwatch.settings import KafkaSettings, load_settings


def test_settings_read_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIRWATCH_KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("NIRWATCH_KAFKA_PARTITIONS", "12")
    s = load_settings(KafkaSettings)
    assert s.bootstrap == "broker:9092" and s.partitions == 12
    with pytest.raises(Exception):  # noqa: B017 - frozen: any mutation is refused
        s.partitions = 3  # type: ignore[misc]


def test_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIRWATCH_KAFKA_PARTITIONS", "many")
    with pytest.raises(ConfigError, match="NIRWATCH_KAFKA_PARTITIONS"):
        load_settings(KafkaSettings)


def test_sasl_needs_credentials() -> None:
    s = KafkaSettings(bootstrap="b:9092", security_protocol="SASL_SSL")
    with pytest.raises(ConfigError, match="NIRWATCH_KAFKA_SASL_USERNAME"):
        s.client_options()


def test_missing_bootstrap_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="NIRWATCH_KAFKA_BOOTSTRAP"):
        KafkaSettings(bootstrap=None).client_options()
