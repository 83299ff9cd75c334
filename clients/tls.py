"""TLS for gateway connections: the one way to build channel credentials, and the PEM
checks the gateway's own ``--tls-*`` flags share.

``tls_credentials(ca_path)`` trusts the gateway certificate's CA (server-authenticated
TLS); with ``cert_path`` and ``key_path`` the client also presents a certificate (mutual
TLS, for a gateway started with ``--tls-client-ca``). Pass the result as ``credentials=``
to :class:`clients.GatewayClient` or :class:`clients.AsyncGatewayClient`. A missing,
unreadable or malformed file, or a key that does not belong to its certificate, raises
:class:`TlsFileError` (one line naming the file) before any connection is tried.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization


class TlsFileError(ValueError):
    """A TLS file that cannot be used. ``setting`` names the parameter (or CLI flag) it
    came from, ``path`` the file; the message is one line naming both."""

    def __init__(self, setting: str, path: str, problem: str) -> None:
        super().__init__(f"{setting} {path}: {problem}")
        self.setting = setting
        self.path = path
        self.problem = problem


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(setting, path, f"cannot read: {exc.strerror or exc}") from None


def read_certificates(path: str, setting: str) -> bytes:
    """The bytes of a PEM file holding at least one X.509 certificate."""
    data = _read(path, setting)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TlsFileError(setting, path, "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)")
    return data


def read_key_pair(cert_path: str, key_path: str, cert_setting: str, key_setting: str) -> tuple[bytes, bytes]:
    """``(certificate chain PEM, private key PEM)``, checked to belong together (the key is
    the private half of the first certificate's public key). The key must be unencrypted."""
    cert_data = read_certificates(cert_path, cert_setting)
    key_data = _read(key_path, key_setting)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TlsFileError(key_setting, key_path, "the key is encrypted (give an unencrypted key)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(key_setting, key_path, "not a PEM private key") from None
    leaf = x509.load_pem_x509_certificates(cert_data)[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise TlsFileError(key_setting, key_path, f"does not match the certificate {cert_path}")
    return cert_data, key_data


_SETTINGS = ("ca_path", "cert_path", "key_path")


def tls_credentials(
    ca_path: str,
    cert_path: str | None = None,
    key_path: str | None = None,
    *,
    settings: tuple[str, str, str] = _SETTINGS,
) -> grpc.ChannelCredentials:
    """Channel credentials trusting the CA in ``ca_path``; with ``cert_path`` and
    ``key_path`` (both or neither) the client presents that certificate (mutual TLS).
    ``settings`` names the three inputs in error messages (the CLI passes its flags)."""
    ca_setting, cert_setting, key_setting = settings
    if (cert_path is None) != (key_path is None):
        given, missing = (cert_setting, key_setting) if key_path is None else (key_setting, cert_setting)
        raise TlsFileError(given, cert_path or key_path or "", f"needs {missing} too")
    root = read_certificates(ca_path, ca_setting)
    if cert_path is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    chain, key = read_key_pair(cert_path, key_path, cert_setting, key_setting)
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
