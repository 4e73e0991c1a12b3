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


def test_env_gives_a_child_process_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    want = load_settings(
        KafkaSettings,
        bootstrap="b1:9092,b2:9092",
        security_protocol="SASL_SSL",
        ssl_check_hostname=False,
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password="s3cret",
        topic_spectra="line7.spectra",
        partitions=3,
    )
    env = want.env()
    assert "NIRWATCH_KAFKA_SSL_CAFILE" not in env  # unset fields are left out
    assert env["NIRWATCH_KAFKA_SSL_CHECK_HOSTNAME"] == "false"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings(KafkaSettings) == want
