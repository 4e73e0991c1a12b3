"""Every service's settings are documented with their defaults (issue 13, item 12).

docs/SETTINGS.md lists each ``NIRWATCH_*`` variable with its default; the README says how to wire
the parts by hand. A setting added without documentation, or a default changed without its
row, fails here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from inference.opcua.settings import OpcUaServerSettings
from inference.settings import WorkerSettings
from ingest.settings import IngestSettings, OpcUaIngestSettings
from monitoring.drift_monitor import DriftSettings
from nirwatch.apps.cli import COMMANDS, build_parser
from nirwatch.models.registry import RegistrySettings
from nirwatch.records.audit import AuditSettings
from nirwatch.renames import renamed_options
from nirwatch.settings import KafkaSettings
from training.retrain import RetrainSettings
from training.settings import TrainingSettings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_DOC = (ROOT / "docs" / "SETTINGS.md").read_text()
README = (ROOT / "README.md").read_text()

CLASSES: list[type[BaseSettings]] = [
    KafkaSettings,
    IngestSettings,
    WorkerSettings,
    AuditSettings,
    RegistrySettings,
    DriftSettings,
    RetrainSettings,
    TrainingSettings,
    OpcUaServerSettings,
    OpcUaIngestSettings,
]


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, str) and not value:
        return "empty"
    return f"`{value}`"


def _rows() -> list[tuple[str, str]]:
    rows = []
    for cls in CLASSES:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            if field.default_factory is not None:  # nested settings (kafka, registry)
                continue
            env = "NIRWATCH_STATE_DIR" if name == "state_dir" else f"{prefix}{name.upper()}"
            rows.append((env, _default(field.default)))
    return rows


@pytest.mark.parametrize(("env", "default"), _rows())
def test_every_setting_is_documented_with_its_default(env: str, default: str) -> None:
    rows = re.findall(rf"^\| `{env}` \| ([^|]+) \| (.+) \|$", SETTINGS_DOC, re.MULTILINE)
    assert rows, f"{env} is not in docs/SETTINGS.md"
    assert {d.strip() for d, _ in rows} == {default}, f"{env}: documented {rows}, is {default}"
    assert all(meaning.strip() for _, meaning in rows), f"{env} has no meaning in the table"


def test_readme_says_how_to_wire_the_parts_by_hand() -> None:
    lines = README.splitlines()
    # The first two commands stay `make demo` and `make test`.
    commands = [line.split()[:2] for line in lines if line.startswith("make ")]
    assert commands[:2] == [["make", "demo"], ["make", "test"]]
    for needed in (
        "docs/SETTINGS.md",
        "NIRWATCH_STATE_DIR",
        "retrain-service --initial-model --no-kafka --simulated-calibration",
        "NIRWATCH_RETRAIN_WEBHOOK_TOKEN",
        "at least 16 characters",
        "NIRWATCH_RETRAIN_MODEL",
        "9109",
        "NIRWATCH_INGEST_BATCH",
        "--batch",
        "refuses to start",
        "export NIRWATCH_KAFKA_BOOTSTRAP=",
    ):
        assert needed in README, needed


def _renamed() -> list[tuple[str, str]]:
    """Every old name the code still accepts, with its new name."""
    pairs = []
    for cls in CLASSES:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for old, field in getattr(cls, "renamed_env", {}).items():
            pairs.append((old, f"{prefix}{field.upper()}"))
    for command in COMMANDS:
        sub = next(
            a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction)
        )
        for old, new in renamed_options(sub.choices[command]).items():
            pairs.append((f"{command} {old}", f"{command} {new}"))
    return pairs


def test_the_renamed_names_are_known() -> None:
    """The list below is not empty by accident: the renames of the vocabulary decisions."""
    assert ("NIRWATCH_WORKER_MAX_BATCH_SIZE", "NIRWATCH_WORKER_MICRO_BATCH_SIZE") in _renamed()
    assert ("retrain-service --bootstrap", "retrain-service --initial-model") in _renamed()


@pytest.mark.parametrize(("old", "new"), _renamed())
def test_every_renamed_name_is_documented(old: str, new: str) -> None:
    section = SETTINGS_DOC.split("## Renamed names", 1)[-1]
    assert re.search(rf"^\| `{old}` \| `{new}` \| .+ \|$", section, re.MULTILINE), (
        f"{old} -> {new} is not in docs/SETTINGS.md's Renamed names"
    )
