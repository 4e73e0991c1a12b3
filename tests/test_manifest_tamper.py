"""One-byte edits of manifest.json: every field, every loader path refuses them.

Issue 13 item 3: a negative ``fallback_limit`` made PLS serve everything, a raised upper
bound of the calibrated range silenced the extrapolation flag, and the worker served an
edited registry copy although champion.json recorded another checksum. Each edit below
changes one byte of the manifest (and keeps it valid JSON). Whatever the edit, it is refused
with a key (HMAC), against a recorded checksum (``expected_checksum``, the registry's
champion.json and register event), by promotion and by the worker's hot reload; an edit that
makes a value impossible is refused even with neither, naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import pytest
from bundle_support import make_contents
from prometheus_client import CollectorRegistry

from inference.reload import RegistrySource
from nirwatch.errors import (
    BundleError,
    ChecksumMismatchError,
    ManifestError,
    ModelError,
    RegistryError,
)
from nirwatch.metrics import WorkerMetrics
from nirwatch.models.bundle import BundleContents, bundle_checksum, load_bundle, write_bundle
from nirwatch.models.manifest_schema import FIELDS, validate_manifest
from nirwatch.models.registry import ModelRegistry


class Edit(NamedTuple):
    field: str  # the top-level field whose value the edit changes
    pattern: str  # regex on manifest.json's text; group 1 is kept, the match's rest replaced
    repl: str
    refused_as: str | None  # the field a ManifestError names; None: a valid-looking value


EDITS = {
    "created_at": Edit("created_at", r'("created_at": "\d{4}-)\d', "9", "created_at"),
    "data_hash": Edit("data_hash", r'("data_hash": ")[0-9a-f]', "g", "data_hash"),
    "data_hash_valid": Edit("data_hash", r'("data_hash": ")[0-9a-e]', "f", None),
    "fallback_limit_negative": Edit(
        "fallback_limit", r'("fallback_limit": )', "-", "fallback_limit"
    ),
    "fallback_limit_larger": Edit("fallback_limit", r'("fallback_limit": )1', "9", None),
    "format": Edit("format", r'("format": "nirwatch.models.bundle/)1', "2", "format"),
    "grid": Edit("grid", r'("grid": "lin:600:638:)2', "4", "grid"),
    "metrics": Edit("metrics", r'("rmsecv": 0.)1', "2", None),
    "metrics_key": Edit("metrics", r'("metric)s', "z", "metricz"),
    "models": Edit("models", r'("cn)n": false', 'z": false', "models.cnz"),
    "packages": Edit("packages", r'("numpy": "\d+\.\d+\.)\d', "0", None),
    "statistics_input": Edit(
        "statistics_input", r'("statistics_input": "step)s', "z", "statistics_input"
    ),
    "target_range_upper": Edit("target", r'("range": \[\s*2\.0,\s*)1', "9", None),
    "target_range_reversed": Edit("target", r'("range": \[\s*)2', "92", "target.range"),
    "target_unit": Edit("target", r'("unit": "m)g', "h", None),
    "training": Edit("training", r'("model": "pl)s', "z", None),
    "version": Edit("version", r'("version": "\d{8}T\d{6}Z-)[0-9a-f]', "Z", None),
    "version_path": Edit("version", r'("version": ")\d', ".", "version"),
    "wavelengths": Edit("wavelengths", r'("wavelengths": \[\s*)6', "7", "wavelengths"),
    "files": Edit("files", r'("pls.npz": ")[0-9a-e]', "f", None),
}


def contents() -> BundleContents:
    return dataclasses.replace(make_contents(), target_range=(2.0, 10.0), training={"model": "pls"})


def apply(path: Path, edit: Edit) -> None:
    """Apply ``edit`` to ``path``/manifest.json; checks that it is a one-byte change."""
    f = path / "manifest.json"
    before = f.read_text()
    after, n = re.subn(edit.pattern, lambda m: m.group(1) + edit.repl, before, count=1)
    assert n == 1, f"edit {edit} matches nothing"
    i = next(i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b)
    # One byte replaced or inserted at position i, nothing else.
    assert after[i + 1 :] == before[i + 1 :] or after[i + 1 :] == before[i:]
    json.loads(after)  # still JSON: the refusal is not a parse error
    os.chmod(f, 0o644)  # registry copies are read-only
    f.write_text(after)


def test_every_manifest_field_has_an_edit_and_is_validated(tmp_path: Path) -> None:
    manifest = json.loads((write_bundle(contents(), tmp_path / "b") / "manifest.json").read_text())
    assert set(manifest) <= {e.field for e in EDITS.values()}
    assert set(manifest) <= set(FIELDS)
    validate_manifest(manifest)  # what write_bundle writes is valid


@pytest.mark.parametrize("name", sorted(EDITS))
def test_one_byte_edit_is_refused_with_a_key(tmp_path: Path, name: str) -> None:
    path = write_bundle(contents(), tmp_path / "b", hmac_key="k")
    apply(path, EDITS[name])
    with pytest.raises(ChecksumMismatchError, match=r"manifest\.json"):
        load_bundle(path, hmac_key="k", device="cpu")


@pytest.mark.parametrize("name", sorted(EDITS))
def test_one_byte_edit_is_refused_against_the_recorded_checksum(tmp_path: Path, name: str) -> None:
    path = write_bundle(contents(), tmp_path / "b")
    recorded = bundle_checksum(path)
    assert load_bundle(path, device="cpu", expected_checksum=recorded).checksum == recorded
    apply(path, EDITS[name])
    with pytest.raises(ChecksumMismatchError, match=r"manifest\.json sha256 mismatch"):
        load_bundle(path, device="cpu", expected_checksum=recorded)


@pytest.mark.parametrize("name", sorted(n for n, e in EDITS.items() if e.refused_as))
def test_impossible_value_is_refused_naming_the_field(tmp_path: Path, name: str) -> None:
    path = write_bundle(contents(), tmp_path / "b")
    apply(path, EDITS[name])
    field = EDITS[name].refused_as
    with pytest.raises(BundleError) as exc:
        load_bundle(path, device="cpu")  # no key, no recorded checksum: the values alone
    if field == "format":
        assert "nirwatch.models.bundle/2" in str(exc.value)
    else:
        assert isinstance(exc.value, ManifestError) and exc.value.field == field
        assert repr(field) in str(exc.value) and "manifest.json" in str(exc.value)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('"fallback_limit": 1.0', '"fallback_limit": NaN', "fallback_limit"),
        ("10.0\n", "Infinity\n", "target.range[1]"),
        ("2.0,\n", "-Infinity,\n", "target.range[0]"),
        ('"fallback_limit": 1.0', '"fallback_limit": "1.0"', "fallback_limit"),
        ('"fallback_limit": 1.0', '"fallback_limit": true', "fallback_limit"),
    ],
)
def test_non_finite_and_mistyped_values_are_refused(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    path = write_bundle(contents(), tmp_path / "b")
    f = path / "manifest.json"
    text = f.read_text()
    assert old in text
    f.write_text(text.replace(old, new, 1))
    with pytest.raises(ManifestError) as exc:
        load_bundle(path, device="cpu")
    assert exc.value.field == field


NEW_FIELDS_OK = {
    "serving": {"model": "blend", "cnn_weight": 0.5},
    "interval": {
        "method": "conformal",
        "level": 0.9,
        "quantile": 1.2,
        "scale": "leverage",
        "scale_floor": 0.1,
    },
    "max_interval_width": None,
    "extrapolation": {"model": "pls", "margin": 0.0},
    "selection": {"anything": [1, 2, {"free": "form"}]},
}


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("serving", {"model": "svm"}, "serving.model"),
        ("serving", {"model": "blend", "cnn_weight": 1.5}, "serving.cnn_weight"),
        ("serving", {"model": "cnn", "weight": 1}, "serving.weight"),
        ("interval", {**NEW_FIELDS_OK["interval"], "level": 1.0}, "interval.level"),
        ("interval", {**NEW_FIELDS_OK["interval"], "quantile": -0.1}, "interval.quantile"),
        ("interval", {**NEW_FIELDS_OK["interval"], "scale": "none"}, "interval.scale"),
        ("interval", {**NEW_FIELDS_OK["interval"], "scale_floor": 0.0}, "interval.scale_floor"),
        ("interval", {**NEW_FIELDS_OK["interval"], "method": "bootstrap"}, "interval.method"),
        ("max_interval_width", 0.0, "max_interval_width"),
        ("max_interval_width", float("inf"), "max_interval_width"),
        ("extrapolation", {"model": "pls", "margin": -1.0}, "extrapolation.margin"),
        ("extrapolation", {"model": "x", "margin": 1.0}, "extrapolation.model"),
        ("selection", ["not", "a", "dict"], "selection"),
    ],
)
def test_newer_optional_fields_are_validated_when_present(
    tmp_path: Path, field: str, value: object, named: str
) -> None:
    manifest = json.loads((write_bundle(contents(), tmp_path / "b") / "manifest.json").read_text())
    validate_manifest({**manifest, **NEW_FIELDS_OK})
    validate_manifest({**manifest, **NEW_FIELDS_OK, "max_interval_width": 2.5})
    with pytest.raises(ManifestError) as exc:
        validate_manifest({**manifest, **NEW_FIELDS_OK, field: value})
    assert exc.value.field == named


# ---- the registry and the worker


def registry_with(tmp_path: Path, n: int) -> tuple[ModelRegistry, list[str]]:
    reg = ModelRegistry(tmp_path / "reg")
    versions = [reg.register(write_bundle(contents(), tmp_path / f"src{i}")) for i in range(n)]
    return reg, versions


@pytest.mark.parametrize("name", sorted(EDITS))
def test_promotion_refuses_an_edited_registry_copy(tmp_path: Path, name: str) -> None:
    reg, (v1, v2) = registry_with(tmp_path, 2)
    reg.promote(v1)
    apply(reg.path(v2), EDITS[name])
    with pytest.raises(RegistryError, match=f"refusing to promote {v2}"):
        reg.promote(v2)
    assert reg.champion_version() == v1


def test_rollback_refuses_an_edited_previous_champion(tmp_path: Path) -> None:
    reg, (v1, v2) = registry_with(tmp_path, 2)
    reg.promote(v1)
    reg.promote(v2)
    apply(reg.path(v1), EDITS["fallback_limit_larger"])
    with pytest.raises(RegistryError, match=r"refusing to roll back.*manifest\.json sha256"):
        reg.rollback()
    assert reg.champion_version() == v2


@pytest.mark.parametrize("name", sorted(EDITS))
def test_worker_never_serves_an_edited_champion(tmp_path: Path, name: str) -> None:
    reg, (v1, v2) = registry_with(tmp_path, 2)
    reg.promote(v1)
    clock = [0.0]
    metrics = WorkerMetrics(CollectorRegistry())
    source = RegistrySource(
        reg, lambda p: load_bundle(p, device="cpu"), metrics, interval_s=1, clock=lambda: clock[0]
    )
    served = source.current()
    champion = json.loads((reg.root / "champion.json").read_text())
    # The predictions' bundle_checksum is the digest champion.json records.
    assert served.checksum == champion["checksum"]

    reg.promote(v2)
    apply(reg.path(v2), EDITS[name])  # edited after promotion, behind the registry's back
    clock[0] = 5
    assert source.current() is served and source.version == v1
    failed = metrics.registry.get_sample_value(
        "nirwatch_model_reloads_total", {"outcome": "failed"}
    )
    assert failed == 1

    # A worker starting now has nothing it may serve.
    fresh = RegistrySource(reg, lambda p: load_bundle(p, device="cpu"), metrics)
    with pytest.raises(ModelError, match="no model to serve"):
        fresh.current()


def test_a_fixed_bundle_is_served_only_with_its_pinned_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from inference.cli import predictor_source
    from inference.settings import WorkerSettings

    monkeypatch.delenv("NIRWATCH_REGISTRY_HMAC_KEY", raising=False)
    path = write_bundle(contents(), tmp_path / "b")
    recorded = bundle_checksum(path)
    metrics = WorkerMetrics(CollectorRegistry())

    def settings(checksum: str | None) -> WorkerSettings:
        return WorkerSettings(bundle_path=path, bundle_checksum=checksum, device="cpu")

    assert predictor_source(settings(recorded), metrics).current().checksum == recorded
    apply(path, EDITS["fallback_limit_larger"])  # a valid-looking edit: only the pin sees it
    with pytest.raises(ChecksumMismatchError, match=r"manifest\.json sha256 mismatch"):
        predictor_source(settings(recorded), metrics)
    with caplog.at_level("WARNING"):
        assert predictor_source(settings(None), metrics).current().checksum != recorded
    assert "bundle_unpinned" in caplog.text  # unpinned and unsigned: served, with a warning
    with pytest.raises(ValueError, match="bundle_checksum is for a fixed bundle"):
        WorkerSettings(registry_dir=tmp_path, bundle_checksum=recorded)
