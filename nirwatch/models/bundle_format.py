"""The bundle format: file names and verification.

:func:`verify_bundle` checks the HMAC (when a key is given) and every file's SHA-256 against the
manifest; :func:`read_verified` returns the verified bytes so that a bundle is deserialised from
exactly what was checked. Writing and loading are in :mod:`nirwatch.models.bundle`, which re-exports
the public names of this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nirwatch.errors import BundleError, ChecksumMismatchError
from nirwatch.models.manifest_schema import validate_manifest
from nirwatch.security import sha256_file, verify_bytes

FORMAT = "nirwatch.models.bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_name(name: str) -> None:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or name in (MANIFEST, SIGNATURE) or not name:
        raise BundleError(f"invalid bundle file name {name!r}")


def _parse_manifest(data: bytes, where: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{where}: expected format {FORMAT!r}, got {got!r}")
    return manifest


def _manifest_bytes(root: Path) -> bytes:
    try:
        return (root / MANIFEST).read_bytes()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise BundleError(f"{root} is not a model bundle: no {MANIFEST}") from exc


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The bundle's manifest, unverified (cheap; use :func:`load_bundle` before trusting it)."""
    root = Path(path)
    return _parse_manifest(_manifest_bytes(root), root / MANIFEST)


def bundle_checksum(path: str | Path) -> str:
    """SHA-256 of the bundle's manifest (which pins every other file's checksum)."""
    return sha256_file(Path(path) / MANIFEST)


def read_verified(
    root: Path, hmac_key: bytes | str | None, expected_checksum: str | None = None
) -> tuple[dict[str, Any], str, dict[str, bytes]]:
    """(manifest, bundle checksum, {file: bytes}), every byte checked against the manifest.

    The files are read once and deserialised from these same bytes, so a file swapped
    between verification and loading cannot slip through. ``expected_checksum`` is the
    manifest's digest as recorded elsewhere (the registry's champion.json, a prediction's
    ``bundle_checksum``): without a key, it is what catches a consistent edit of the manifest.
    Every manifest field is then validated (:mod:`nirwatch.models.manifest_schema`).
    """
    manifest_bytes = _manifest_bytes(root)
    checksum = sha256_bytes(manifest_bytes)
    if expected_checksum is not None and checksum != expected_checksum:
        raise ChecksumMismatchError(
            f"{root}: {MANIFEST} sha256 mismatch: expected {expected_checksum} "
            f"(as recorded), got {checksum}"
        )
    if hmac_key:
        sig_path = root / SIGNATURE
        signature = sig_path.read_text().strip() if sig_path.exists() else None
        try:
            verify_bytes(manifest_bytes, signature, hmac_key)
        except ChecksumMismatchError as exc:
            raise ChecksumMismatchError(f"{root}: {MANIFEST}: {exc}") from exc
    manifest = _parse_manifest(manifest_bytes, root / MANIFEST)
    validate_manifest(manifest, where=str(root / MANIFEST))
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise BundleError(f"{root}/{MANIFEST} lists no files")
    files: dict[str, bytes] = {}
    for name, expected in listed.items():
        check_name(name)
        try:
            data = (root / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ChecksumMismatchError(
                f"{root}: {name} is missing (expected sha256 {expected})"
            ) from exc
        got = sha256_bytes(data)
        if got != expected:
            raise ChecksumMismatchError(
                f"{root}: {name} sha256 mismatch: expected {expected}, got {got}"
            )
        files[name] = data
    return manifest, checksum, files


def verify_bundle(
    path: str | Path,
    hmac_key: bytes | str | None = None,
    *,
    expected_checksum: str | None = None,
) -> dict[str, Any]:
    """Check the HMAC (when a key is given), the manifest's own digest (when one is
    expected), every manifest field and every file's SHA-256; return the manifest.

    Raises
    ------
    BundleError
        Not a bundle (no or malformed manifest).
    ChecksumMismatchError
        Naming the file, the expected and the actual digest (or the failed signature).
    ManifestError
        A manifest field is missing, unknown or invalid (the message names it).
    """
    return read_verified(Path(path), hmac_key, expected_checksum)[0]
