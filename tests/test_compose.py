"""docker-compose.yml and Dockerfile: structure and cross-references (no Docker engine needed).

Checks that mounted config files exist, depends_on and scrape/webhook targets name services
and ports that exist, the services' nirwatch commands parse, and every NIRWATCH_* variable is
a field of some settings class.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from pydantic_settings import BaseSettings

from nirwatch.apps.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
ALERTMANAGER = yaml.safe_load((ROOT / "monitoring/alertmanager/alertmanager.yml").read_text())
SETTINGS_MODULES = (
    "nirwatch.settings",
    "nirwatch.models.registry",
    "nirwatch.records.audit",
    "ingest.settings",
    "inference.settings",
    "inference.opcua.settings",
    "training.settings",
    "training.retrain",
    "monitoring.drift_monitor",
)


def _nirwatch_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in SERVICES.items() if s.get("image", "").startswith("nirwatch")}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host source (``./...`` relative to the repo, or a volume name)."""
    out = {}
    for spec in service.get("volumes", []):
        src, dst, *_ = spec.split(":")
        out[dst] = src
    return out


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(p) for p in service.get("expose", [])}
    ports |= {int(str(p).split(":")[-1]) for p in service.get("ports", [])}
    return ports


def _host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repo path that a container path comes from (longest mount prefix), if bind-mounted."""
    for dst, src in sorted(_mounts(service).items(), key=lambda m: -len(m[0])):
        if src.startswith("./") and (container_path == dst or container_path.startswith(dst + "/")):
            return ROOT / src / container_path[len(dst) :].lstrip("/")
    return None


def _settings_env_names() -> set[str]:
    names: set[str] = set()
    seen: list[type[BaseSettings]] = []
    for module in SETTINGS_MODULES:
        mod = importlib.import_module(module)
        seen += [
            c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, BaseSettings)
        ]
    for cls in seen:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            nested = isinstance(field.annotation, type) and issubclass(
                field.annotation, BaseSettings
            )
            if not nested:
                names.add(f"{prefix}{name}".upper())
            # Settings shared across prefixes (NIRWATCH_STATE_DIR) are read by their alias.
            choices = getattr(field.validation_alias, "choices", ())
            names |= {str(c).upper() for c in choices if str(c).upper().startswith("NIRWATCH_")}
    return names


def test_the_stack_has_every_part() -> None:
    assert {
        "kafka", "prometheus", "alertmanager", "grafana", "simulator", "worker", "training",
    } <= set(SERVICES)  # fmt: skip
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "kafka:9092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for dst, src in _mounts(service).items():
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: {src} (mounted at {dst}) is not in the repo"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"


def test_depends_on_and_secrets_name_what_exists() -> None:
    secrets = set(COMPOSE.get("secrets") or {})
    for name, service in SERVICES.items():
        for dep in service.get("depends_on") or {}:
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            assert dep != name
        for secret in service.get("secrets", []):
            assert secret in secrets, f"{name}: unknown secret {secret}"


def test_nirwatch_commands_parse() -> None:
    services = _nirwatch_services()
    assert {"simulator", "worker", "training"} <= set(services)
    for name, service in services.items():
        command = [str(c) for c in service["command"]]
        assert command[0] in COMMANDS, f"{name}: unknown nirwatch command {command[0]}"
        build_parser(command[0]).parse_args(command)  # SystemExit on a bad option


def test_nirwatch_environment_variables_are_settings_fields() -> None:
    known = _settings_env_names()
    for name, service in _nirwatch_services().items():
        for var in service.get("environment", {}):
            if var.startswith("NIRWATCH_"):
                assert var in known, f"{name}: {var} is not a field of any settings class"
    for secret in (COMPOSE.get("secrets") or {}).values():
        assert secret.get("environment") in known | {None}


def test_services_listening_for_others_bind_all_interfaces() -> None:
    for name, service in _nirwatch_services().items():
        env = service.get("environment", {})
        for var, value in env.items():
            if var.endswith("_HOST") and var.startswith("NIRWATCH_"):
                assert value == "0.0.0.0", f"{name}: {var} must be 0.0.0.0 inside the network"
                port = int(env[var.removesuffix("_HOST") + "_PORT"])
                assert port in _container_ports(service), f"{name} does not expose {port}"


def test_prometheus_mounts_config_and_rules_and_targets_exist() -> None:
    prom = SERVICES["prometheus"]
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    config = _host_path(prom, config_arg.split("=", 1)[1])
    assert config is not None and config.resolve() == (
        ROOT / "monitoring/prometheus/prometheus.yml"
    )
    for pattern in PROMETHEUS["rule_files"]:
        host = _host_path(prom, pattern)
        assert host is not None and list(host.parent.glob(host.name)), pattern
    targets = [
        t
        for job in PROMETHEUS["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    targets += [
        t
        for am in PROMETHEUS["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue
        assert host in SERVICES, f"scrape target {target} names no compose service"
        assert int(port) in _container_ports(SERVICES[host]), f"{host} does not expose {port}"
    jobs = {job["job_name"] for job in PROMETHEUS["scrape_configs"]}
    rules = (ROOT / "monitoring/rules/nirwatch.yml").read_text()
    for job in re.findall(r'job="([^"]+)"', rules):
        assert job in jobs, f"alert rules use job {job}, which Prometheus does not scrape"


def test_alertmanager_webhook_reaches_the_training_service_with_the_shared_secret() -> None:
    am = SERVICES["alertmanager"]
    config_arg = next(a for a in am["command"] if a.startswith("--config.file="))
    assert _host_path(am, config_arg.split("=", 1)[1]) == (
        ROOT / "monitoring/alertmanager/alertmanager.yml"
    )
    hooks = [hook for r in ALERTMANAGER["receivers"] for hook in r.get("webhook_configs", [])]
    assert hooks
    for hook in hooks:
        url = urlparse(hook["url"])
        assert url.hostname in SERVICES and url.port is not None
        service = SERVICES[url.hostname]
        env = service["environment"]
        assert int(env["NIRWATCH_RETRAIN_WEBHOOK_PORT"]) == url.port
        assert url.port in _container_ports(service)
        assert url.path == "/alerts"
        token_file = hook["http_config"]["authorization"]["credentials_file"]
        secret = Path(token_file).name
        assert token_file == f"/run/secrets/{secret}"
        assert secret in am.get("secrets", []) and secret in service.get("secrets", [])
        assert env["NIRWATCH_RETRAIN_WEBHOOK_TOKEN_FILE"] == token_file
        assert "retrain-service" in service["command"]


def test_grafana_provisioning_and_dashboards_are_mounted() -> None:
    grafana = SERVICES["grafana"]
    for sub in ("datasources", "dashboards"):
        host = _host_path(grafana, f"/etc/grafana/provisioning/{sub}")
        assert host is not None and list(host.glob("*.yml")), sub
    provider = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/dashboards/nirwatch.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    host = _host_path(grafana, path)
    assert host is not None and list(host.glob("*.json"))
    datasource = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    url = urlparse(datasource["datasources"][0]["url"])
    assert url.hostname in SERVICES and url.port in _container_ports(SERVICES[url.hostname])
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_host = _host_path(grafana, home)
    assert home_host is not None and home_host.exists()


def test_worker_reads_the_registry_the_training_service_writes() -> None:
    worker, training = SERVICES["worker"], SERVICES["training"]
    registry = worker["environment"]["NIRWATCH_REGISTRY_DIR"]
    assert training["environment"]["NIRWATCH_REGISTRY_DIR"] == registry
    assert _mounts(worker)[registry] == _mounts(training)[registry]
    assert any(v.endswith(f"{registry}:ro") for v in worker["volumes"])  # only training writes
    assert worker["depends_on"]["model-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("source", ["nirwatch", "ingest", "inference", "training", "monitoring"])
def test_dockerfile_copies_existing_sources(source: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copies = [
        shlex.split(line)[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY")
    ]
    sources = {s for c in copies for s in c}
    assert source in sources
    for s in sources:
        assert (ROOT / s).exists(), f"Dockerfile copies {s}, which is not in the repo"
    assert 'ENTRYPOINT ["nirwatch"]' in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.M)  # not root at run time
