"""``nirwatch worker``: run the inference worker until SIGTERM/SIGINT.

Settings are read once here (``NIRWATCH_WORKER_*``, ``NIRWATCH_KAFKA_*``,
``NIRWATCH_REGISTRY_*``; command-line options override them) and passed down.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from inference.reload import PredictorSource, RegistrySource, StaticSource
from inference.settings import WorkerSettings
from inference.worker import InferenceWorker
from nirwatch.errors import ConfigError
from nirwatch.logs import log_event
from nirwatch.metrics import WorkerMetrics
from nirwatch.ports import start_metrics_server
from nirwatch.records.audit import AuditSettings, open_audit_trail
from nirwatch.renames import add_renamed_option
from nirwatch.settings import load_settings, options_given, require_bootstrap
from nirwatch.signals import stop_on_signals

log = logging.getLogger(__name__)

#: command-line option -> WorkerSettings field
_OVERRIDES = {
    "registry": "registry_dir",
    "bundle": "bundle_path",
    "bundle_checksum": "bundle_checksum",
    "micro_batch_size": "micro_batch_size",
    "max_wait_ms": "max_wait_ms",
    "device": "device",
    "metrics_host": "metrics_host",
    "metrics_port": "metrics_port",
    "group_id": "group_id",
    "audit": "audit",
    "torch_threads": "torch_threads",
}


def configure(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--registry", type=Path, help="registry root: serve and hot-reload its champion"
    )
    src.add_argument("--bundle", type=Path, help="serve this one bundle directory")
    p.add_argument(
        "--bundle-checksum",
        help="with --bundle: refuse it unless its checksum (manifest SHA-256) is this one",
    )
    p.add_argument(
        "--micro-batch-size", type=int, help="most spectra per micro-batch (default 2000)"
    )
    add_renamed_option(p, "--batch-size", "--micro-batch-size")
    p.add_argument("--max-wait-ms", type=int, help="max wait after a micro-batch's first spectrum")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where the CNN runs (default auto)"
    )
    p.add_argument("--torch-threads", type=int, help="CPU threads for the CNN (0: torch default)")
    p.add_argument("--metrics-host", help="Prometheus endpoint address (default 127.0.0.1)")
    p.add_argument(
        "--metrics-port", type=int, help="Prometheus endpoint port (default 9108; 0: none)"
    )
    p.add_argument("--group-id", help="Kafka consumer group (default nirwatch-worker)")
    p.add_argument(
        "--no-audit",
        dest="audit",
        action="store_false",
        default=None,
        help="do not append publications to the audit trail (NIRWATCH_AUDIT_*)",
    )


def predictor_source(settings: WorkerSettings, metrics: WorkerMetrics) -> PredictorSource:
    """The fixed bundle or the registry's champion, as configured.

    Raises
    ------
    ConfigError
        When neither a bundle nor a registry is configured.
    NirwatchError
        When the model cannot be loaded (bad checksum, no champion...).
    """
    from nirwatch.models.bundle import load_bundle
    from nirwatch.models.registry import ModelRegistry, RegistrySettings

    reg = load_settings(RegistrySettings)
    loader = functools.partial(load_bundle, hmac_key=reg.key(), device=settings.device)
    if settings.bundle_path is not None:
        predictor = loader(settings.bundle_path, expected_checksum=settings.bundle_checksum)
        log_event(log, "model_loaded", bundle=settings.bundle_path, checksum=predictor.checksum)
        if settings.bundle_checksum is None and reg.key() is None:
            # The registry records each champion's checksum; a fixed bundle has no such
            # record unless one is given, so an edited manifest would be served unnoticed.
            log_event(
                log, "bundle_unpinned", level=logging.WARNING,
                why="nothing vouches for this bundle's manifest: set --bundle-checksum "
                "(NIRWATCH_WORKER_BUNDLE_CHECKSUM) or a signing key (NIRWATCH_REGISTRY_HMAC_KEY)",
            )  # fmt: skip
        return StaticSource(predictor)
    root = settings.registry_dir or reg.dir
    if root is None:
        raise ConfigError(
            "no model: set --bundle DIR or --registry DIR (NIRWATCH_WORKER_BUNDLE_PATH, "
            "NIRWATCH_WORKER_REGISTRY_DIR or NIRWATCH_REGISTRY_DIR)"
        )
    source = RegistrySource(
        ModelRegistry(root, hmac_key=reg.key()), loader, metrics, settings.reload_interval_s
    )
    source.current()  # fail at start, not at the first spectrum, when there is no champion
    return source


def freeze_startup_objects() -> None:
    """Exempt what was built at start (torch, numpy, the model) from garbage collection.

    A full collection walks every tracked object: about 260,000 once torch and a bundle are
    loaded, 65-75 ms on the 2-core machine, with the GIL held, so it stopped the whole worker
    loop at random and showed as the latency tail (docs/results/throughput.md). Per-batch
    objects are freed by reference counting; objects of a hot-reloaded model are collected
    as usual.
    """
    gc.collect()
    gc.freeze()


def run(args: argparse.Namespace) -> int:
    settings = load_settings(WorkerSettings, **options_given(args, _OVERRIDES))
    bootstrap = require_bootstrap(settings.kafka, "worker")  # before the slow model load
    audit_settings = load_settings(AuditSettings) if settings.audit else None
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    with stop_on_signals() as stop:
        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        # Opened first: an unwritable audit path stops the worker at start, naming the variable
        # (closed below; if the start fails, exiting closes the SQLite file, its WAL stays valid).
        audit = open_audit_trail(audit_settings) if audit_settings is not None else None
        if audit_settings is not None:
            where = audit_settings.path if audit_settings.backend == "sqlite" else "PostgreSQL"
            log_event(log, "audit_trail", backend=audit_settings.backend, path=where)
        server = start_metrics_server(
            registry, settings.metrics_host, settings.metrics_port, "--metrics-port "
            "or NIRWATCH_WORKER_METRICS_PORT (0: no endpoint)",
        )  # fmt: skip
        if server is not None:
            print(f"metrics: http://{settings.metrics_host}:{settings.metrics_port}/metrics")
        try:
            source = predictor_source(settings, metrics)
            print(f"worker consuming {settings.kafka.topic_spectra} on {bootstrap}")
            worker = InferenceWorker(settings, source, metrics, stop, audit=audit)
            freeze_startup_objects()
            try:
                worker.run()
            finally:
                if audit is not None:
                    audit.close()
            print(f"worker stopped: {worker.published} predictions in {worker.batches} batches")
        finally:
            if server is not None:
                server.shutdown()
    return 0
