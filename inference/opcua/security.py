"""The server's security: its certificate, the client trust list, users, read-only permissions.

Everything cryptographic is asyncua's (and ``cryptography``'s, which it uses): the self-signed
application certificate comes from :mod:`asyncua.crypto.cert_gen`, client certificates are
checked by :class:`asyncua.crypto.validator.CertificateValidator` against a
:class:`~asyncua.crypto.truststore.TrustStore`. What is ours is policy: which security modes and
identity tokens are offered, who a user is, and that no user may write.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen, uacrypto
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from nirwatch.errors import ConfigError

log = logging.getLogger(__name__)

SERVER_CERT = "server_cert.der"
SERVER_KEY = "server_key.pem"
_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")

#: Requests that change the address space or values: refused to everyone.
_WRITES = {
    ua.NodeId(ua.Int32(i))
    for i in (
        ua.ObjectIds.WriteRequest_Encoding_DefaultBinary,
        ua.ObjectIds.HistoryUpdateRequest_Encoding_DefaultBinary,
        ua.ObjectIds.CallRequest_Encoding_DefaultBinary,
    )
}


def ensure_server_certificate(
    cert_dir: Path, application_uri: str, host: str, days: int = 3650
) -> tuple[Path, Path]:
    """The server's certificate and key under ``cert_dir``, generated on first start.

    The certificate is self-signed, names ``application_uri`` and the host in its subject
    alternative names (clients check both) and allows server and client authentication.

    Returns
    -------
    cert_path, key_path : Path
    """
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = cert_dir / SERVER_CERT, cert_dir / SERVER_KEY
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName(socket.gethostname()),
    ]
    try:
        names.append(x509.IPAddress(ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "nirwatch opcua-server",
        {"organizationName": "nirwatch"},
        names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )
    # The key first, private from its creation: the certificate's presence means "complete".
    key_path.touch(mode=0o600)
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    cert_path.write_bytes(uacrypto.der_from_x509(cert))
    log.info("generated the server certificate %s", cert_path)
    return cert_path, key_path


def _certificates(directory: Path) -> dict[str, x509.Certificate]:
    out: dict[str, x509.Certificate] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in _CERT_SUFFIXES:
            continue
        raw = path.read_bytes()
        try:
            cert = (
                x509.load_pem_x509_certificate(raw)
                if raw.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(raw)
            )
        except ValueError as exc:
            raise ConfigError(f"{path}: expected a DER or PEM X.509 certificate: {exc}") from exc
        out[path.stem] = cert
    return out


async def client_validator(trust_dir: Path) -> Callable[..., Any]:
    """Checks a client's application certificate: valid now, right usage, in the trust list.

    With an empty trust list every client certificate is refused (``BadCertificateUntrusted``).
    """
    trust_dir.mkdir(parents=True, exist_ok=True)
    if not _certificates(trust_dir):
        log.warning("no trusted client certificates in %s: every client is refused", trust_dir)

        async def refuse(_cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

        return refuse
    store = TrustStore([trust_dir], [])
    await store.load()
    return CertificateValidator(
        CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT,
        store,
    )


class ReadOnlyRuleset(SimpleRoleRuleset):
    """Every authenticated user may browse, read and subscribe; nobody may write or call."""

    def __init__(self) -> None:
        super().__init__()
        self._allowed = {ua.NodeId(ua.Int32(i)) for i in USER_TYPES} - _WRITES

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        return action_type_id in self._allowed


class UserManager:
    """Who a session's user is: a username with its password, or a known user certificate.

    Parameters
    ----------
    passwords : dict
        name -> password.
    user_certs : dict
        name -> certificate of certificate users.
    allow_anonymous : bool
        Sessions without credentials get the anonymous role (read-only like everyone).
    on_reject : callable, optional
        Called with the kind of login refused (``password``, ``certificate``, ``anonymous``).
    """

    def __init__(
        self,
        passwords: dict[str, str],
        user_certs: dict[str, x509.Certificate],
        *,
        allow_anonymous: bool = False,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self._passwords = {k: v.encode() for k, v in passwords.items()}
        self._certs = {uacrypto.der_from_x509(c): name for name, c in user_certs.items()}
        self.allow_anonymous = allow_anonymous
        self._on_reject = on_reject or (lambda _kind: None)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None:
            expected = self._passwords.get(username)
            given = (password or "").encode()
            # Compare even for an unknown name so timing does not tell which names exist.
            ok = hmac.compare_digest(expected or b"\0" * 32, given) and expected is not None
            if ok:
                return User(role=UserRole.User, name=username)
            log.warning("refused OPC UA login of user %r: wrong name or password", username)
            self._on_reject("password")
            return None
        # A certificate identity token, or an anonymous token on a secure channel: asyncua passes
        # the channel's (proven) certificate for both.
        if certificate is not None and bytes(certificate) in self._certs:
            return User(role=UserRole.User, name=self._certs[bytes(certificate)])
        if self.allow_anonymous:
            return User(role=UserRole.Anonymous)
        self._on_reject("certificate" if certificate is not None else "anonymous")
        return None


def load_user_certificates(user_cert_dir: Path) -> dict[str, x509.Certificate]:
    """Certificate users: ``<name>.der|.pem`` in ``user_cert_dir``."""
    return _certificates(user_cert_dir)
