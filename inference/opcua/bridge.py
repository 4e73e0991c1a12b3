"""The OPC UA server's life: build it securely, feed it from the predictions topic, close it.

At-least-once: offsets are committed only once everything polled is in the address space
(asynchronously after each poll, synchronously at close; :func:`poll_decoded` skips and logs
records that are not predictions), so a crash between the write and the
commit re-delivers them (the same value is written again, which an OPC UA client sees as one
more data change with the same SourceTimestamp).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asyncua import Server, ua
from asyncua.server.internal_session import InternalSession
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from inference.opcua.security import (
    ReadOnlyRuleset,
    UserManager,
    client_validator,
    ensure_server_certificate,
    load_user_certificates,
)
from inference.opcua.settings import OpcUaServerSettings
from inference.opcua.space import AddressSpace
from nirwatch.errors import ConfigError
from nirwatch.logs import log_event
from nirwatch.messages.prediction import decode_prediction
from nirwatch.metrics import OpcUaServerMetrics
from nirwatch.transport.kafka import make_consumer, poll_decoded

log = logging.getLogger(__name__)

_SECURE = [
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Basic256Sha256_Sign,
]


def endpoint_url(settings: OpcUaServerSettings) -> str:
    return f"opc.tcp://{settings.host}:{settings.port}/nirwatch/"


async def build_server(
    settings: OpcUaServerSettings, metrics: OpcUaServerMetrics | None = None
) -> tuple[Server, AddressSpace]:
    """A configured, not yet started server with the nirwatch address space.

    Raises
    ------
    ConfigError
        When no way to log in is configured (no users, no user certificates, no anonymous).
    """
    passwords = settings.user_passwords()
    user_certs = load_user_certificates(settings.user_cert_dir)
    tokens: list[type] = []
    if passwords:
        tokens.append(ua.UserNameIdentityToken)
    if user_certs:
        tokens.append(ua.X509IdentityToken)
    if settings.allow_anonymous:
        tokens.append(ua.AnonymousIdentityToken)
    if not tokens:
        raise ConfigError(
            "nirwatch opcua-server: nobody could log in: set NIRWATCH_OPCUA_USERS=name:password, "
            f"put user certificates into {settings.user_cert_dir} "
            "(NIRWATCH_OPCUA_USER_CERT_DIR), or set NIRWATCH_OPCUA_ALLOW_ANONYMOUS=true"
        )

    def rejected(kind: str) -> None:
        if metrics is not None:
            metrics.rejected_logins.labels(kind).inc()

    users = UserManager(
        passwords, user_certs, allow_anonymous=settings.allow_anonymous, on_reject=rejected
    )
    server = Server(user_manager=users)  # type: ignore[arg-type]
    await server.init()
    server.set_endpoint(endpoint_url(settings))
    server.set_server_name("nirwatch opcua-server")
    await server.set_application_uri(settings.application_uri)
    cert, key = ensure_server_certificate(
        settings.cert_dir, settings.application_uri, settings.host
    )
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    policies = list(_SECURE)
    if settings.allow_none_policy:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    server.set_security_policy(policies, permission_ruleset=ReadOnlyRuleset())
    server.set_identity_tokens(tokens)
    server.set_certificate_validator(await client_validator(settings.trust_dir))
    space = await AddressSpace.create(server)
    return server, space


class PredictionFeed:
    """Consumes predictions into an :class:`AddressSpace`; commits after writing."""

    def __init__(
        self,
        settings: OpcUaServerSettings,
        space: AddressSpace,
        consumer: KafkaConsumer,
        metrics: OpcUaServerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.space = space
        self.consumer = consumer
        self.metrics = metrics
        self.written = 0
        #: The last step wrote everything it polled: the consumer's positions may be committed.
        self._clean = True
        self._next_health = 0.0

    def close(self) -> None:
        """Commit what was written (synchronously) and close the consumer."""
        try:
            if self._clean:
                self.consumer.commit()
        except KafkaError as exc:  # re-delivered after a restart: at least once
            log.warning("final commit failed: %s", exc)
        finally:
            self.consumer.close(autocommit=False)

    async def step(self) -> int:
        """One poll: write what came, commit, check staleness and (now and then) health."""
        topic = self.settings.kafka.topic_predictions
        self._clean = False
        decoded = await asyncio.to_thread(
            poll_decoded, self.consumer, {topic: decode_prediction}, self.settings.idle_poll_ms
        )
        n = 0
        for prediction in decoded.get(topic, []):
            await self.space.update(prediction, time.monotonic())
            n += 1
            if self.metrics is not None:
                self.metrics.publishes.labels(self.metrics.label(prediction.instrument_id)).inc()
                self.metrics.latency_seconds.observe(
                    max(0.0, time.time() - prediction.published_at)
                )
        self._clean = True
        if decoded:
            # Everything polled is in the address space now. Asynchronous: the next poll need
            # not wait for the broker's answer; a lost commit re-delivers (at least once).
            self.consumer.commit_async()
        self.written += n
        await self._check_stale()
        if time.monotonic() >= self._next_health:
            self._next_health = time.monotonic() + self.settings.health_interval_s
            await self._check_health()
        return n

    async def _check_stale(self) -> None:
        now = time.monotonic()
        for instrument, nodes in self.space.instruments.items():
            age = now - nodes.received_at
            if age > self.settings.stale_after_s and not nodes.stale:
                log_event(
                    log,
                    "opcua_value_stale",
                    level=logging.WARNING,
                    instrument=instrument,
                    age_s=round(age, 1),
                )
                await self.space.mark_stale(instrument)
            if self.metrics is not None:
                label = self.metrics.label(instrument)
                self.metrics.value_age_seconds.labels(label).set(age)
                self.metrics.stale.labels(label).set(1.0 if nodes.stale else 0.0)

    async def _check_health(self) -> None:
        def lag() -> int | None:
            assigned = list(self.consumer.assignment())
            if not assigned:
                return 0 if self.consumer.bootstrap_connected() else None
            try:  # a round trip to the broker: is it there?
                self.consumer.end_offsets(assigned, timeout_ms=2000)
            except KafkaError:
                return None
            # The lag itself from the fetch responses' high-water marks: Tansu's ListOffsets
            # under-reports (nirwatch.transport.broker).
            marks = {tp: self.consumer.highwater(tp) for tp in assigned}
            return sum(
                max(0, hw - self.consumer.position(tp))
                for tp, hw in marks.items()
                if hw is not None
            )

        behind = await asyncio.to_thread(lag)
        reachable = behind is not None
        await self.space.set_health("BrokerReachable", reachable)
        await self.space.set_health("PredictionsReceived", self.written)
        if reachable:
            await self.space.set_health("ConsumerLag", behind)
        if self.metrics is not None:
            self.metrics.broker_reachable.set(1.0 if reachable else 0.0)
            if reachable:
                self.metrics.consumer_lag.set(float(behind or 0))
            self.metrics.sessions.set(float(InternalSession._current_connections))


async def serve(
    settings: OpcUaServerSettings,
    stop: threading.Event,
    *,
    metrics: OpcUaServerMetrics | None = None,
    on_ready: Callable[[Server], Awaitable[Any] | None] | None = None,
) -> int:
    """Run the server until ``stop`` is set; returns the number of predictions written."""
    server, space = await build_server(settings, metrics)
    kafka = settings.kafka
    consumer = make_consumer(
        kafka,
        settings.group_id,
        kafka.topic_predictions,
        max_poll_records=500,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    feed = PredictionFeed(settings, space, consumer, metrics)
    try:
        async with server:
            log_event(
                log,
                "opcua_server_started",
                endpoint=endpoint_url(settings),
                topic=kafka.topic_predictions,
            )
            if on_ready is not None:
                result = on_ready(server)
                if asyncio.iscoroutine(result):
                    await result
            while not stop.is_set():
                await feed.step()
    finally:
        await asyncio.to_thread(feed.close)
    return feed.written
