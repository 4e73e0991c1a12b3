"""Small security primitives: bearer tokens, HMAC signatures of manifests, TLS contexts.

Everything that compares a secret goes through :func:`hmac.compare_digest` so that the time
taken does not reveal how many leading characters matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nirwatch.errors import ChecksumMismatchError, ConfigError

#: Prefix of a signature string so that a future algorithm can be told apart.
SIGNATURE_SCHEME = "hmac-sha256"


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def check_bearer_token(header_value: str | bytes | None, expected: str | bytes | None) -> bool:
    """Whether an HTTP ``Authorization`` header carries the expected bearer token.

    Constant time in the token's content. A missing header, another scheme, an empty token,
    non-ASCII junk, or no configured token (``expected`` empty or ``None``) all give ``False``:
    an endpoint without a configured token must refuse everyone, never accept everyone.
    """
    if not expected or header_value is None:
        return False
    try:
        text = header_value.decode("latin-1") if isinstance(header_value, bytes) else header_value
    except (AttributeError, UnicodeDecodeError):  # pragma: no cover - latin-1 never fails
        return False
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(_as_bytes(token), _as_bytes(expected))


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign_bytes(data: bytes, key: str | bytes) -> str:
    """``"hmac-sha256:<64 hex>"`` over ``data``."""
    if not key:
        raise ConfigError("an HMAC signing key must not be empty")
    digest = hmac.new(_as_bytes(key), data, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_SCHEME}:{digest}"


def sign_manifest(manifest: Mapping[str, Any], key: str | bytes) -> str:
    """HMAC-SHA256 signature of a bundle manifest (its canonical JSON).

    The manifest should not contain the signature itself: store the signature in a separate
    field or file and drop it before verifying.
    """
    return sign_bytes(canonical_json(manifest), key)


def verify_bytes(data: bytes, signature: str | None, key: str | bytes) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``signature`` is ``sign_bytes(data, key)``."""
    if not signature:
        raise ChecksumMismatchError("signature missing: the key requires a signed manifest")
    scheme, _, _digest = signature.partition(":")
    if scheme != SIGNATURE_SCHEME:
        raise ChecksumMismatchError(
            f"unknown signature scheme {scheme!r}: expected {SIGNATURE_SCHEME!r}"
        )
    if not hmac.compare_digest(_as_bytes(signature), _as_bytes(sign_bytes(data, key))):
        raise ChecksumMismatchError("HMAC signature does not match: manifest altered or wrong key")


def verify_signature(manifest: Mapping[str, Any], signature: str | None, key: str | bytes) -> None:
    """Check a manifest's HMAC signature; raises :class:`ChecksumMismatchError` on mismatch."""
    verify_bytes(canonical_json(manifest), signature, key)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def server_tls_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context (for HTTP endpoints that serve TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    return ctx


def client_tls_context(
    cafile: str | Path | None = None,
    certfile: str | Path | None = None,
    keyfile: str | Path | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A verifying TLS ≥ 1.2 client context; ``cafile`` None uses the system trust store."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    if certfile:
        ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return ctx
