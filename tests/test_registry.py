"""Model registry: register, promote, rollback, list, immutability, refusal of bad bundles."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from bundle_support import make_contents

from nirwatch.apps.cli import main
from nirwatch.errors import RegistryError
from nirwatch.models.bundle import bundle_checksum, write_bundle
from nirwatch.models.registry import ModelRegistry


def make_bundle(tmp_path: Path, name: str, hmac_key: str | None = None) -> Path:
    return write_bundle(make_contents(), tmp_path / "out" / name, hmac_key=hmac_key)


def test_register_promote_rollback(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.champion() is None and reg.champion_version() is None and reg.list() == []
    v1 = reg.register(make_bundle(tmp_path, "a"))
    v2 = reg.register(make_bundle(tmp_path, "b"))
    assert v1 != v2
    assert [i.status for i in reg.list()] == ["candidate", "candidate"]
    assert reg.champion_version() is None

    reg.promote(v1)
    assert reg.champion_version() == v1 and reg.champion() == tmp_path / "reg/models" / v1
    reg.promote(v2)
    status = {i.version: i.status for i in reg.list()}
    assert status == {v1: "previous", v2: "champion"}
    champ = json.loads((tmp_path / "reg/champion.json").read_text())
    assert champ["checksum"] == bundle_checksum(reg.champion())  # type: ignore[arg-type]

    assert reg.rollback() == v1
    assert reg.champion_version() == v1
    assert {i.version: i.status for i in reg.list()} == {v1: "champion", v2: "candidate"}
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert [e["event"] for e in reg.events()] == [
        "register",
        "register",
        "promote",
        "promote",
        "rollback",
    ]


def test_register_is_idempotent_and_bundles_are_read_only(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    src = make_bundle(tmp_path, "a")
    v = reg.register(src)
    assert reg.register(src) == v
    assert len(reg.list()) == 1
    modes = [f.stat().st_mode for f in reg.path(v).rglob("*") if f.is_file()]
    assert modes and not any(m & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) for m in modes)


def test_unknown_version_and_double_promote(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    v = reg.register(make_bundle(tmp_path, "a"))
    with pytest.raises(RegistryError, match="unknown model version 'nope'"):
        reg.promote("nope")
    with pytest.raises(RegistryError, match="unknown model version"):
        reg.promote("../out")
    reg.promote(v)
    with pytest.raises(RegistryError, match="already the champion"):
        reg.promote(v)


def test_crash_leftovers_in_staging_are_invisible_and_cleaned(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    leftover = tmp_path / "reg/.staging/dead"
    leftover.mkdir(parents=True)
    (leftover / "pls.npz").write_bytes(b"partial")
    assert reg.list() == []
    v = reg.register(make_bundle(tmp_path, "a"))
    assert [i.version for i in reg.list()] == [v]
    assert not leftover.exists()


def test_list_survives_an_unreadable_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    v = reg.register(make_bundle(tmp_path, "a"))
    (reg.models / "junk").mkdir()
    assert {i.version: i.status for i in reg.list()} == {v: "candidate", "junk": "unreadable"}
    with pytest.raises(RegistryError, match="refusing to promote junk"):
        reg.promote("junk")


def test_tampered_bundle_is_refused(tmp_path: Path) -> None:
    src = make_bundle(tmp_path, "a")
    f = src / "pls.npz"
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    f.write_bytes(bytes(data))
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="pls.npz sha256 mismatch"):
        reg.register(src)
    assert reg.list() == []
    assert not any((tmp_path / "reg/.staging").glob("*"))


def test_hmac_required_by_registry(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", hmac_key="k")
    with pytest.raises(RegistryError, match="signature"):
        reg.register(make_bundle(tmp_path, "unsigned"))
    v = reg.register(make_bundle(tmp_path, "signed", hmac_key="k"))
    reg.promote(v)
    assert reg.champion_version() == v


def test_models_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "reg"
    reg = ModelRegistry(root)
    v1 = reg.register(make_bundle(tmp_path, "a"))
    v2 = reg.register(make_bundle(tmp_path, "b"))
    assert main(["models", "promote", v1, "--registry", str(root)]) == 0
    assert main(["models", "promote", v2, "--registry", str(root)]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--registry", str(root)]) == 0
    out = capsys.readouterr().out
    assert v1 in out and v2 in out and "champion" in out and "previous" in out
    assert main(["models", "rollback", "--registry", str(root)]) == 0
    assert reg.champion_version() == v1
    assert main(["models", "rollback", "--registry", str(root)]) == 1
    assert "nothing to roll back" in capsys.readouterr().err
    assert main(["models", "promote", "missing", "--registry", str(root)]) == 1
    assert main(["models", "list", "--json", "--registry", str(root)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["version"]: r["status"] for r in rows} == {v1: "champion", v2: "candidate"}
    new = make_bundle(tmp_path, "c")
    assert main(["models", "register", str(new), "--registry", str(root)]) == 0
    assert len(reg.list()) == 3
