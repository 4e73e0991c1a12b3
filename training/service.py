"""``nirwatch retrain-service``: retrain on a schedule and when Alertmanager asks.

Threads:

* an HTTP server (uvicorn + Starlette, :mod:`training.webhook`, with request-size, header
  and body time limits and optional TLS; bind address from settings, loopback by default):
  ``POST /alerts`` takes Alertmanager's webhook JSON and requires
  ``Authorization: Bearer <token>`` (constant-time comparison); anything else is answered 401,
  logged and triggers nothing. ``GET /healthz`` and ``GET /metrics`` (Prometheus text) need no
  token.
* a retrain worker running one :func:`training.retrain.retrain` at a time; requests that
  arrive while one runs are coalesced into one follow-up; alert-triggered retrains respect a
  cool-down so an alert storm cannot train back to back.
* a scheduler (``NIRWATCH_RETRAIN_SCHEDULE_SECONDS`` > 0) and, unless ``--no-kafka``, a
  consumer joining spectra with lab results into the buffer of recent labelled spectra.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from nirwatch.errors import ConfigError
from nirwatch.io.datasets import load_spectra
from nirwatch.logs import log_event
from nirwatch.metrics import RetrainMetrics
from nirwatch.models.registry import ModelRegistry, RegistrySettings
from nirwatch.ports import port_error
from nirwatch.renames import add_renamed_option
from nirwatch.security import check_bearer_token
from nirwatch.settings import KafkaSettings, load_settings, require_bootstrap
from nirwatch.signals import stop_on_signals
from nirwatch.statedirs import writable_dir
from training.labelled import Dataset, LabelledBuffer
from training.retrain import Fitter, RetrainRequest, RetrainSettings, fit_bundle_fitter, retrain
from training.settings import TrainingSettings
from training.webhook import WebhookServer

log = logging.getLogger(__name__)


class RetrainService:
    """Webhook, scheduler and retrain worker around :func:`training.retrain.retrain`."""

    def __init__(
        self,
        settings: RetrainSettings,
        registry: ModelRegistry,
        calibration: Dataset,
        fitter: Fitter,
        token: str,
        workdir: Path,
        buffer: LabelledBuffer | None = None,
        metrics: RetrainMetrics | None = None,
    ) -> None:
        if not token:
            raise ConfigError("the retrain webhook needs a token")
        self.settings = settings
        self.registry = registry
        self.calibration = calibration
        self.fitter = fitter
        self.workdir = workdir
        self.buffer = buffer or LabelledBuffer(calibration.wavelengths, settings.recent_max)
        self.metrics = metrics or RetrainMetrics(CollectorRegistry())
        self._token = token
        self._cond = threading.Condition()
        self._pending: RetrainRequest | None = None
        self._busy = False
        self._last_alert_retrain = -float("inf")
        self._stop = threading.Event()
        self.reports: deque[dict[str, Any]] = deque(maxlen=100)
        self._threads: list[threading.Thread] = []
        self._http = WebhookServer(self)

    @property
    def address(self) -> tuple[str, int]:
        return self._http.address

    def start(self) -> RetrainService:
        self._http.start()
        targets = [self._work]
        if self.settings.schedule_seconds > 0:
            targets.append(self._schedule)
        for target in targets:
            t = threading.Thread(target=target, name=f"retrain-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        host, port = self.address
        scheme = "https" if self._http.tls else "http"
        log_event(
            log, "retrain_service_started", webhook=f"{scheme}://{host}:{port}/alerts",
            policy=self.settings.policy, margin=self.settings.margin, model=self.settings.model,
            schedule_s=self.settings.schedule_seconds, cooldown_s=self.settings.cooldown_seconds,
            registry=self.registry.root, reports=self.settings.reports_dir,
            calibration_spectra=len(self.calibration),
        )  # fmt: skip
        return self

    def stop(self, timeout: float = 600.0) -> None:
        """Stop accepting requests; a retrain in progress finishes first."""
        self._stop.set()
        self._http.stop()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def request(self, req: RetrainRequest) -> str:
        """Queue a retrain; returns ``queued``, ``coalesced`` or ``cooldown``."""
        outcome = self._enqueue(req)
        log_event(log, "retrain_requested", trigger=req.trigger, outcome=outcome, reason=req.reason)
        return outcome

    def _enqueue(self, req: RetrainRequest) -> str:
        with self._cond:
            if req.trigger == "webhook":
                since = time.monotonic() - self._last_alert_retrain
                if since < self.settings.cooldown_seconds:
                    return "cooldown"
                self._last_alert_retrain = time.monotonic()
            outcome = "coalesced" if self._pending is not None else "queued"
            if self._pending is not None:
                req.alerts = [*self._pending.alerts, *req.alerts]
                req.reason = f"{self._pending.reason}; {req.reason}"
            self._pending = req
            self._cond.notify_all()
            return outcome

    def wait_idle(self, timeout: float) -> bool:
        """Block until no retrain is queued or running (for tests and ``--once``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set() or self._pending is None:
                    return  # a queued request is dropped on shutdown
                req, self._pending, self._busy = self._pending, None, True
            try:
                recent = self.buffer.dataset()
                log_event(
                    log, "retrain_started", trigger=req.trigger, reason=req.reason,
                    recent_labelled=len(recent), calibration=len(self.calibration),
                    model=self.settings.model, policy=self.settings.policy,
                )  # fmt: skip
                report = retrain(
                    req, self.calibration, recent, self.registry, self.fitter,
                    self.settings, self.workdir,
                )  # fmt: skip
                self.reports.append(report)
                log_decision(report)
                self.metrics.retrains.labels(report["decision"]).inc()
                self.metrics.last_retrain.set_to_current_time()
            except Exception:  # the service must outlive a failing retrain
                log.exception("retrain crashed")
                self.metrics.retrains.labels("crashed").inc()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _schedule(self) -> None:
        while not self._stop.wait(self.settings.schedule_seconds):
            self.request(RetrainRequest("schedule", "periodic retrain"))

    # ---- HTTP (called by training.webhook.WebhookServer)

    def authorised(self, header: str | None) -> bool:
        return check_bearer_token(header, self._token)

    def handle_alerts(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return 400, {"error": "body is not JSON"}
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            return 400, {"error": "expected Alertmanager webhook JSON with an alerts list"}
        firing = [
            a for a in payload["alerts"] if isinstance(a, dict) and a.get("status") == "firing"
        ]
        if not firing:
            return 200, {"triggered": False, "why": "no firing alerts"}
        alerts = [
            {"labels": a.get("labels", {}), "startsAt": a.get("startsAt")} for a in firing[:50]
        ]
        names = sorted({str(a["labels"].get("alertname", "?")) for a in alerts})
        outcome = self.request(RetrainRequest("webhook", "alerts: " + ", ".join(names), alerts))
        if outcome == "cooldown":
            return 200, {"triggered": False, "why": "cool-down after the last alert retrain"}
        return 202, {"triggered": True, "outcome": outcome}


def log_decision(report: dict[str, Any]) -> None:
    """One line for a retrain's outcome: candidate, promoted or kept, and why."""
    log_event(
        log, "retrain_decision", level=logging.WARNING if report.get("decision") == "failed"
        else logging.INFO, decision=report.get("decision"), candidate=report.get("candidate"),
        champion_before=report.get("champion_before"), champion=report.get("champion_after"),
        why=report.get("why"), seconds=report.get("seconds"), report=report.get("path"),
    )  # fmt: skip


def consume_labelled(
    kafka: KafkaSettings,
    buffer: LabelledBuffer,
    grid: str,
    stop: threading.Event,
    group_id: str = "nirwatch-retrain",
    **consumer_options: Any,
) -> None:
    """Join spectra and lab results from Kafka into ``buffer`` until ``stop`` is set.

    Spectra on another grid than ``grid``, and anything undecodable, are skipped (logged at
    DEBUG: a line may carry products this model does not serve).
    """
    from nirwatch.messages.lab_result import decode_lab_result
    from nirwatch.messages.spectrum import decode_spectrum
    from nirwatch.transport.kafka import ensure_topics, make_consumer, poll_decoded

    ensure_topics(kafka, [kafka.topic_spectra, kafka.topic_lab_results])
    consumer = make_consumer(
        kafka, group_id, kafka.topic_spectra, kafka.topic_lab_results,
        **{"enable_auto_commit": True, **consumer_options},
    )  # fmt: skip
    decoders: dict[str, Callable[[bytes | None], Any]] = {
        kafka.topic_spectra: functools.partial(decode_spectrum, expected_grid=grid),
        kafka.topic_lab_results: decode_lab_result,
    }
    try:
        while not stop.is_set():
            polled = poll_decoded(consumer, decoders, timeout_ms=500, log_level=logging.DEBUG)
            for header, spectrum in polled.get(kafka.topic_spectra, []):
                buffer.add_spectrum(header.sample_id, spectrum)
            for lab in polled.get(kafka.topic_lab_results, []):
                buffer.add_lab(lab.sample_id, lab.value)
    finally:
        consumer.close()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, help="registry dir (NIRWATCH_REGISTRY_DIR)")
    parser.add_argument(
        "--calibration", type=Path, help="calibration CSV/npz (NIRWATCH_RETRAIN_CALIBRATION_DATA)"
    )
    parser.add_argument(
        "--simulated-calibration",
        type=int,
        metavar="N",
        help="without a calibration file: N spectra from the tablet-line simulator",
    )
    parser.add_argument("--once", action="store_true", help="retrain once now, then exit")
    parser.add_argument(
        "--initial-model",
        action="store_true",
        help="fit and register a first model when the registry has no champion, then exit",
    )
    add_renamed_option(parser, "--bootstrap", "--initial-model")  # "bootstrap" is Kafka's
    parser.add_argument(
        "--no-kafka", action="store_true", help="do not collect recent labelled spectra"
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(RetrainSettings)
    reg_settings = load_settings(RegistrySettings)
    root = args.registry or reg_settings.dir
    if root is None:
        raise ConfigError("no registry: pass --registry DIR or set NIRWATCH_REGISTRY_DIR")
    kafka = None
    if not (args.no_kafka or args.initial_model):
        kafka = load_settings(KafkaSettings)
        require_bootstrap(kafka, "retrain-service (or pass --no-kafka)")
    # Both are written (bundles, reports): refused at start when they cannot be.
    writable_dir(root, "NIRWATCH_REGISTRY_DIR")
    writable_dir(settings.reports_dir, "NIRWATCH_RETRAIN_REPORTS_DIR")
    calibration = _calibration(args, settings)
    registry = ModelRegistry(root, hmac_key=reg_settings.key())
    fitter = fit_bundle_fitter(
        target=settings.target, unit=settings.unit, model=settings.model,
        settings=load_settings(TrainingSettings), hmac_key=reg_settings.key(),
    )  # fmt: skip
    if args.initial_model:
        return _initial_model(settings, registry, calibration, fitter)
    workdir = settings.reports_dir / "bundles"
    token = settings.token()
    try:
        service = RetrainService(settings, registry, calibration, fitter, token, workdir)
    except OSError as exc:  # the webhook's port
        hint = "choose another port with NIRWATCH_RETRAIN_WEBHOOK_PORT"
        raise port_error(exc, settings.webhook_host, settings.webhook_port, hint) from None
    _serve(service, kafka, once=args.once)
    last = service.reports[-1] if service.reports else None
    if last is not None:
        print(json.dumps({k: last.get(k) for k in ("decision", "why", "candidate", "path")}))
    return 0 if last is None or last["decision"] != "failed" else 1


def _serve(service: RetrainService, kafka: KafkaSettings | None, once: bool) -> None:
    """Start ``service``, run until a stop signal (or one retrain with ``once``), stop it."""
    stop = threading.Event()
    # The handlers go in before start() logs retrain_service_started: a supervisor (or a test)
    # that signals as soon as it reads that line must find them installed, or Ctrl-C would
    # raise in the middle of start-up and SIGTERM would kill the process without a stop.
    with stop_on_signals(stop):  # SIGTERM or Ctrl-C
        service.start()
        try:
            if kafka is not None:
                from nirwatch.grid import grid_id_for

                grid = grid_id_for(service.calibration.wavelengths)
                threading.Thread(
                    target=consume_labelled, args=(kafka, service.buffer, grid, stop), daemon=True
                ).start()
            if once:
                service.request(RetrainRequest("manual", "nirwatch retrain-service --once"))
                # A stop signal ends the wait; the retrain in progress still finishes first.
                while not service.wait_idle(timeout=1.0) and not stop.is_set():
                    pass
            else:
                stop.wait()
        finally:
            stop.set()
            service.stop()


def _calibration(args: argparse.Namespace, settings: RetrainSettings) -> Dataset:
    data_path = args.calibration or settings.calibration_data
    if data_path is not None:
        return Dataset.from_spectra(load_spectra(data_path, target=settings.target))
    if args.simulated_calibration:
        from nirwatch.simulation.simulator import calibration_set

        X, y, wl = calibration_set(args.simulated_calibration, seed=settings.seed)
        return Dataset(X.astype(float), y, wl)
    raise ConfigError(
        "no calibration data: pass --calibration FILE, --simulated-calibration N or set "
        "NIRWATCH_RETRAIN_CALIBRATION_DATA"
    )


def _initial_model(
    settings: RetrainSettings, registry: ModelRegistry, calibration: Dataset, fitter: Fitter
) -> int:
    """First model of an empty registry (the stack's init step); no-op when one serves."""
    champion = registry.champion_version()
    if champion is not None:
        why = f"champion {champion} already serves"
        log_event(log, "initial_model_skipped", champion=champion, why=why)
        print(json.dumps({"decision": "none", "why": why}))
        return 0
    log_event(
        log, "initial_model_started", registry=registry.root, model=settings.model,
        calibration_spectra=len(calibration), reports=settings.reports_dir,
    )  # fmt: skip
    empty = calibration.subset(np.arange(0))
    report = retrain(
        RetrainRequest("initial_model", "empty registry"), calibration, empty, registry, fitter,
        settings, settings.reports_dir / "bundles",
    )  # fmt: skip
    log_decision(report)
    print(json.dumps({k: report.get(k) for k in ("decision", "why", "candidate", "path")}))
    return 0 if report["decision"] != "failed" else 1
