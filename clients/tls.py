"""TLS for gateway connections: the one way to build channel credentials (clients) and
server credentials (the gateway's port and the standalone ledger's ``--listen``), with the
PEM checks they share.

``tls_credentials(ca_path)`` trusts the gateway certificate's CA (server-authenticated
TLS); with ``cert_path`` and ``key_path`` the client also presents a certificate (mutual
TLS, for a gateway started with ``--tls-client-ca``). Pass the result as ``credentials=``
to :class:`clients.GatewayClient` or :class:`clients.AsyncGatewayClient`. A missing,
unreadable or malformed file, or a key that does not belong to its certificate, raises
:class:`TlsFileError` (one line naming the file) before any connection is tried.

:func:`optional_tls_credentials` is the same for settings that may all be absent (CLI
flags, an adapter's configuration file): None means plaintext. :func:`server_tls_credentials`
builds a server's credentials from ``--tls-cert``/``--tls-key``/``--tls-client-ca``, so that
every pretrade server speaks TLS the same way.
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


def optional_tls_credentials(
    ca_path: str | None, cert_path: str | None, key_path: str | None, *, settings: tuple[str, str, str]
) -> grpc.ChannelCredentials | None:
    """:func:`tls_credentials` for settings that may be unset (CLI flags, a configuration
    file's keys, named by ``settings``): None when none is set (plaintext). A client
    certificate or key without a CA is an error: it would otherwise be silently ignored."""
    ca_setting, cert_setting, key_setting = settings
    if ca_path is None:
        if cert_path is not None or key_path is not None:
            setting, path = (cert_setting, cert_path) if cert_path is not None else (key_setting, key_path)
            raise TlsFileError(setting, path, f"needs {ca_setting} (the CA that signed the gateway's certificate)")
        return None
    return tls_credentials(ca_path, cert_path, key_path, settings=settings)


#: The server flags' names, used in error messages.
SERVER_TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-client-ca")


def server_tls_credentials(
    cert_path: str | None, key_path: str | None, client_ca_path: str | None = None
) -> grpc.ServerCredentials | None:
    """A server's credentials from its ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca``
    (None: plaintext). Certificate and key come together; with a client CA every client must
    present a certificate that CA signed (mutual TLS). The files are read and checked here,
    before the server starts, so that a bad file is one line naming the flag and the file."""
    cert_setting, key_setting, ca_setting = SERVER_TLS_FLAGS
    if (cert_path is None) != (key_path is None):
        (given, path), missing = (
            ((cert_setting, cert_path), key_setting) if key_path is None else ((key_setting, key_path), cert_setting)
        )
        raise TlsFileError(given, path, f"needs {missing} too (TLS takes a certificate and its key)")
    if cert_path is None:
        if client_ca_path is not None:
            raise TlsFileError(
                ca_setting, client_ca_path, f"needs {cert_setting} and {key_setting} (mutual TLS is TLS first)"
            )
        return None
    chain, key = read_key_pair(cert_path, key_path, cert_setting, key_setting)
    client_ca = read_certificates(client_ca_path, ca_setting) if client_ca_path is not None else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
