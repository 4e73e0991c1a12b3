"""``nirwatch opcua-server``: security as plants require it, status codes, and Kafka end to end.

The security tests run a real asyncua server (as ``build_server`` configures it) on loopback and
connect real asyncua clients; the end-to-end test feeds it from a real broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaError
from kafka import KafkaConsumer, TopicPartition
from opcua_support import (
    Notifications,
    client_certificate,
    password_client,
    prediction,
    secure_client,
    server_certificate,
    server_settings,
    spectrum_message,
    trusted_client,
    wait_for_node,
)
from prometheus_client import CollectorRegistry

from inference.opcua.bridge import PredictionFeed, build_server, endpoint_url, serve
from inference.opcua.settings import OpcUaServerSettings
from inference.opcua.space import (
    STATUS_NO_VALUE,
    STATUS_NOT_RELEASABLE,
    STATUS_STALE,
    stream_node_id,
)
from nirwatch.errors import ConfigError
from nirwatch.metrics import OpcUaServerMetrics
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics, make_producer

PREDICTION = stream_node_id("probe-1", "ChemometricModel", "Prediction")
SPECTRUM_SHA256 = stream_node_id("probe-1", "AcquisitionData", "SpectrumSha256")


def _run(
    settings: OpcUaServerSettings,
    body: Callable[[Any], Awaitable[None]],
    metrics: OpcUaServerMetrics | None = None,
) -> None:
    """Start the configured server, publish one prediction into it, run ``body(space)``."""

    async def main() -> None:
        server, space = await build_server(settings, metrics)
        async with server:
            await space.update(prediction(), time.monotonic())
            await body(space)

    asyncio.run(main())


async def _refused(client: Client) -> BaseException:
    with pytest.raises((UaError, OSError, asyncio.TimeoutError)) as info:
        async with client:
            pass
    return info.value


def test_password_user_reads_and_wrong_password_is_refused(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    cert = trusted_client(tmp_path, settings)
    metrics = OpcUaServerMetrics(CollectorRegistry())

    async def body(_space: Any) -> None:
        url, server_cert = endpoint_url(settings), server_certificate(settings)
        ok = await secure_client(url, cert, server_cert, user="alice", password="s3cret")
        async with ok:
            assert await ok.get_node(f"ns=2;s={PREDICTION}").read_value() == pytest.approx(201.5)
        for user, password in (("alice", "wrong"), ("mallory", "s3cret")):
            bad = await secure_client(url, cert, server_cert, user=user, password=password)
            exc = await _refused(bad)
            assert isinstance(exc, ua.uaerrors.BadUserAccessDenied), exc

    _run(settings, body, metrics)
    assert (
        metrics.registry.get_sample_value(
            "nirwatch_opcua_rejected_logins_total", {"kind": "password"}
        )
        == 2
    )


def test_anonymous_login_is_refused_unless_enabled(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    cert = trusted_client(tmp_path, settings)

    async def body(_space: Any) -> None:
        anonymous = await secure_client(endpoint_url(settings), cert, server_certificate(settings))
        exc = await _refused(anonymous)
        assert isinstance(exc, ua.uaerrors.BadIdentityTokenRejected), exc

    _run(settings, body)

    enabled = server_settings(tmp_path, allow_anonymous=True, users="")

    async def reads(_space: Any) -> None:
        anonymous = await secure_client(endpoint_url(enabled), cert, server_certificate(enabled))
        async with anonymous:
            assert await anonymous.get_node(f"ns=2;s={PREDICTION}").read_value() == pytest.approx(
                201.5
            )

    _run(enabled, reads)


def test_none_policy_is_not_offered_by_default(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def body(_space: Any) -> None:
        client = Client(endpoint_url(settings), timeout=5)
        client.set_user("alice")
        client.set_password("s3cret")
        endpoints = await client.connect_and_get_server_endpoints()
        modes = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints}
        assert modes == {
            ("Basic256Sha256", ua.MessageSecurityMode.Sign),
            ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt),
        }
        plain = Client(endpoint_url(settings), timeout=5)
        plain.set_user("alice")
        plain.set_password("s3cret")
        await _refused(plain)

    _run(settings, body)


def test_untrusted_client_certificate_is_refused(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    trusted_client(tmp_path, settings, "scada")
    stranger = client_certificate(tmp_path / "elsewhere", "stranger")

    async def body(_space: Any) -> None:
        client = await secure_client(
            endpoint_url(settings),
            stranger,
            server_certificate(settings),
            user="alice",
            password="s3cret",
        )
        exc = await _refused(client)
        assert isinstance(exc, ua.uaerrors.BadCertificateUntrusted), exc

    _run(settings, body)


def test_certificate_user_logs_in_with_sign_only(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, users="")
    cert = trusted_client(tmp_path, settings, "mes")
    other = trusted_client(tmp_path, settings, "historian")
    settings.user_cert_dir.mkdir(parents=True, exist_ok=True)
    (settings.user_cert_dir / "mes.der").write_bytes(cert[0].read_bytes())

    async def body(_space: Any) -> None:
        url, server_cert = endpoint_url(settings), server_certificate(settings)
        sign = ua.MessageSecurityMode.Sign
        client = await secure_client(url, cert, server_cert, mode=sign, certificate_user=True)
        async with client:
            assert await client.get_node(f"ns=2;s={PREDICTION}").read_value() == pytest.approx(
                201.5
            )
        # A trusted application whose certificate is no user's is refused at login.
        stranger = await secure_client(url, other, server_cert, mode=sign, certificate_user=True)
        exc = await _refused(stranger)
        assert isinstance(exc, ua.uaerrors.BadUserAccessDenied), exc

    _run(settings, body)


def test_writes_are_refused(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    cert = trusted_client(tmp_path, settings)

    async def body(_space: Any) -> None:
        client = await password_client(settings, cert)
        async with client:
            node = client.get_node(f"ns=2;s={PREDICTION}")
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await node.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
            assert await node.read_value() == pytest.approx(201.5)

    _run(settings, body)


def test_spectrum_hash_node_names_the_last_spectrums_raw_message(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    cert = trusted_client(tmp_path, settings)
    spectra = [spectrum_message("probe-1", f"s-{i}") for i in range(2)]

    async def body(space: Any) -> None:
        client = await password_client(settings, cert)
        async with client:
            node = client.get_node(f"ns=2;s={SPECTRUM_SHA256}")
            for raw, sha in spectra:
                await space.update(prediction(spectrum_sha256=sha), time.monotonic())
                assert await node.read_value() == hashlib.sha256(raw).hexdigest()
            assert spectra[0][1] != spectra[1][1]
            # A prediction from a nirwatch.prediction/1 record has no hash: unknown, not "".
            await space.update(prediction(), time.monotonic())
            dv = await node.read_data_value(raise_on_bad_status=False)
            assert dv.StatusCode.value == STATUS_NO_VALUE and dv.Value.Value is None

    _run(settings, body)


def test_nobody_able_to_log_in_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NIRWATCH_OPCUA_USERS"):
        asyncio.run(build_server(server_settings(tmp_path, users="")))


def test_server_certificate_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    asyncio.run(build_server(settings))
    cert = server_certificate(settings).read_bytes()
    key = settings.cert_dir / "server_key.pem"
    assert key.stat().st_mode & 0o077 == 0, "the private key must not be readable by others"
    asyncio.run(build_server(settings))
    assert server_certificate(settings).read_bytes() == cert


class _NoConsumer:
    """A consumer with nothing to give: the feed then only checks staleness."""

    def poll(self, timeout_ms: int) -> dict[Any, Any]:
        time.sleep(timeout_ms / 1000)
        return {}

    def assignment(self) -> set[Any]:
        return set()

    def bootstrap_connected(self) -> bool:
        return False


def test_value_status_follows_releasable_missing_and_stale(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, stale_after_s=0.5, idle_poll_ms=50)
    metrics = OpcUaServerMetrics(CollectorRegistry())
    node_id = ua.NodeId(PREDICTION, 2)

    async def body(space: Any) -> None:
        def status() -> int:
            return space.server.read_attribute_value(node_id).StatusCode.value

        assert status() == ua.StatusCodes.Good
        await space.update(prediction(releasable=False, value=250.0), time.monotonic())
        assert status() == STATUS_NOT_RELEASABLE
        assert ua.StatusCode(status()).is_uncertain()
        await space.update(prediction(value=None, releasable=False), time.monotonic())
        assert status() == STATUS_NO_VALUE
        assert ua.StatusCode(status()).is_bad()
        # A diagnostic the prediction lacks (PLS has no interval here) reads BadNoData, not the
        # previous prediction's value.
        low = ua.NodeId(stream_node_id("probe-1", "ChemometricModel", "IntervalLow"), 2)
        await space.update(prediction(interval_low=None, interval_high=None), time.monotonic())
        assert space.server.read_attribute_value(low).StatusCode.value == STATUS_NO_VALUE
        await space.update(prediction(), time.monotonic())
        assert space.server.read_attribute_value(low).Value.Value == pytest.approx(198.0)
        feed = PredictionFeed(settings, space, _NoConsumer(), metrics)  # type: ignore[arg-type]
        await feed.step()
        assert status() == ua.StatusCodes.Good
        await asyncio.sleep(0.6)
        await feed.step()
        dv = space.server.read_attribute_value(node_id)
        assert dv.StatusCode.value == STATUS_STALE and dv.StatusCode.is_bad()
        assert dv.Value.Value is None, "OPC UA: a Bad value carries no value"
        stale_flag = space.server.read_attribute_value(
            ua.NodeId(stream_node_id("probe-1", "Diagnostics", "Stale"), 2)
        )
        assert stale_flag.Value.Value is True
        await space.update(prediction(value=202.0), time.monotonic())
        await feed.step()
        assert status() == ua.StatusCodes.Good

    _run(settings, body, metrics)
    assert (
        metrics.registry.get_sample_value("nirwatch_opcua_value_stale", {"instrument": "probe-1"})
        == 0
    )


@pytest.mark.kafka
@pytest.mark.slow
def test_prediction_on_the_topic_becomes_a_data_change(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.topic_predictions], partitions=1)
    group = f"opcua-e2e-{uuid.uuid4().hex[:8]}"
    settings = server_settings(tmp_path, kafka=kafka_settings, group_id=group, idle_poll_ms=50)
    cert = trusted_client(tmp_path, settings)
    stop = threading.Event()
    raw, sha = spectrum_message("probe-7", "s-42")
    sent = prediction("probe-7", value=199.25, sample_id="s-42", spectrum_sha256=sha)
    changes = Notifications()

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop, on_ready=lambda _s: ready.set()))
        await asyncio.wait_for(ready.wait(), 30)
        producer = make_producer(kafka_settings)
        # A first prediction creates the instrument's nodes; the client then subscribes.
        producer.send(
            kafka_settings.topic_predictions, prediction("probe-7").encode(), key=b"probe-7"
        )
        producer.flush()
        client = await password_client(settings, cert)
        node_id = stream_node_id("probe-7", "ChemometricModel", "Prediction")
        async with client:
            node = await wait_for_node(client, node_id)
            sub = await client.create_subscription(10, changes)
            await sub.subscribe_data_change(node)
            await changes.next(10)  # the initial value
            producer.send(kafka_settings.topic_predictions, sent.encode(), key=b"probe-7")
            producer.flush()
            while True:
                _, dv = await changes.next(30)
                if dv.Value.Value == pytest.approx(199.25):
                    break
            assert dv.StatusCode.is_good()
            assert dv.SourceTimestamp.timestamp() == pytest.approx(sent.timestamp, abs=1e-3)
            sample = client.get_node(
                f"ns=2;s={stream_node_id('probe-7', 'AcquisitionData', 'SampleId')}"
            )
            assert await sample.read_value() == "s-42"
            sha_node = f"ns=2;s={stream_node_id('probe-7', 'AcquisitionData', 'SpectrumSha256')}"
            assert await client.get_node(sha_node).read_value() == hashlib.sha256(raw).hexdigest()
        producer.close()
        stop.set()
        assert await asyncio.wait_for(task, 30) == 2

    asyncio.run(main())
    consumer = KafkaConsumer(**kafka_settings.client_options(), group_id=group)
    tp = TopicPartition(kafka_settings.topic_predictions, 0)
    assert consumer.committed(tp) == 2, "offsets are committed once the values are written"
    consumer.close()


def test_users_setting_is_parsed_and_checked(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, users="alice:s3cret, bob:pa:ss")
    assert settings.user_passwords() == {"alice": "s3cret", "bob": "pa:ss"}
    with pytest.raises(ConfigError, match="name:password"):
        server_settings(tmp_path, users="alice").user_passwords()
