from __future__ import annotations

import pytest

from nirwatch.errors import ChecksumMismatchError, ConfigError, NirwatchError
from nirwatch.security import (
    check_bearer_token,
    sign_bytes,
    sign_manifest,
    verify_bytes,
    verify_signature,
)

TOKEN = "s3cret-token-value"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"  Bearer   {TOKEN}  ", True),
        (f"Bearer {TOKEN}".encode(), True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        (TOKEN, False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        ("Bearer wrong", False),
        ("Bearer \u00e9\u00e8\u2603", False),
        (b"Bearer \xff\xfe", False),
    ],
)
def test_check_bearer_token(header: str | bytes | None, ok: bool) -> None:
    assert check_bearer_token(header, TOKEN) is ok


@pytest.mark.parametrize("expected", [None, ""])
def test_no_configured_token_refuses_everyone(expected: str | None) -> None:
    assert check_bearer_token("Bearer ", expected) is False
    assert check_bearer_token("Bearer anything", expected) is False


def test_manifest_signature_round_trip_and_tamper() -> None:
    manifest = {"files": {"pls.npz": "ab" * 32, "cnn.safetensors": "cd" * 32}, "version": "7"}
    sig = sign_manifest(manifest, "key-1")
    assert sig.startswith("hmac-sha256:") and len(sig) == len("hmac-sha256:") + 64
    # Key order does not matter (canonical JSON).
    verify_signature(dict(reversed(list(manifest.items()))), sig, "key-1")
    with pytest.raises(ChecksumMismatchError, match="does not match"):
        verify_signature({**manifest, "version": "8"}, sig, "key-1")
    with pytest.raises(ChecksumMismatchError, match="does not match"):
        verify_signature(manifest, sig, "key-2")
    with pytest.raises(ChecksumMismatchError, match="missing"):
        verify_signature(manifest, None, "key-1")
    with pytest.raises(ChecksumMismatchError, match="scheme"):
        verify_signature(manifest, "md5:" + "0" * 32, "key-1")
    with pytest.raises(NirwatchError):
        verify_bytes(b"x", sig[:-1] + ("0" if sig[-1] != "0" else "1"), "key-1")


def test_empty_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        sign_bytes(b"data", "")
