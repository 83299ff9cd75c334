"""Configuration of one gateway process: addresses, files, capacities and timeouts.

One frozen dataclass built by the CLI (or by tests) and handed to :mod:`gateway.app`;
nothing else reads flags or the environment. Every default is a ``DEFAULT_*`` constant with
its unit in the name or the comment.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from gateway.publisher import DEFAULT_PUBLISH_LINGER_S
from gateway.subjects import InvalidSubjectTokenError, validate_gateway_id
from gateway.validation import ValidationLimits

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DATA_DIR = ".pretrade"
FALLBACK_GATEWAY_ID = "gw1"

#: RPCs admitted at once (queued or running, streams included); beyond it gRPC answers
#: RESOURCE_EXHAUSTED instead of letting latency grow without bound.
DEFAULT_MAX_CONCURRENT_RPCS = 4_096
#: Open StreamOrders calls at once; one more is refused with RESOURCE_EXHAUSTED.
DEFAULT_MAX_OPEN_STREAMS = 256
#: Decisions remembered for idempotent retries, keyed by (account, request_id).
DEFAULT_IDEMPOTENCY_CAPACITY = 100_000
#: Execution ids remembered to drop duplicate execution reports.
DEFAULT_EXECUTION_DEDUP_CAPACITY = 1_000_000
#: Seconds in-flight calls and open streams get to finish at shutdown before cancellation.
DEFAULT_SHUTDOWN_GRACE_S = 5.0
#: Seconds the publisher gets at shutdown to hand the outbox to JetStream.
DEFAULT_PUBLISH_FLUSH_TIMEOUT_S = 5.0
#: Longest publish linger accepted, seconds: beyond it decisions would reach the ledger and
#: the watchdogs too late to call it batching.
MAX_PUBLISH_LINGER_S = 1.0
#: Seconds a ``pretrade up``/``serve`` waits for the first NATS connection before reporting
#: it (the gateway keeps retrying in the background and stays NOT_SERVING meanwhile).
DEFAULT_NATS_CONNECT_TIMEOUT_S = 10.0

#: Longest Unix socket path the kernel takes (sun_path is 108 bytes with the NUL).
MAX_UNIX_SOCKET_PATH = 107

OUTBOX_SUBDIR = "outbox"
#: The file in a data directory that names the gateway id it belongs to (one line).
GATEWAY_ID_FILE = "gateway-id"
_POSITIVE_SETTINGS = ("max_concurrent_rpcs", "max_open_streams", "idempotency_capacity", "execution_dedup_capacity")


class ConfigError(ValueError):
    """A configuration value that cannot work (one line naming the setting)."""


class GatewayIdMismatchError(ConfigError):
    """The data directory belongs to another gateway id (see :func:`claim_data_dir`)."""


def claim_data_dir(data_dir: str | os.PathLike[str], gateway_id: str) -> None:
    """Bind ``data_dir`` to ``gateway_id``, or raise :class:`GatewayIdMismatchError`.

    The outboxes in a data directory number decisions in one gateway id's sequence space
    (JetStream de-duplicates, and the ledger checks contiguity, per id). Started under
    another id (a changed ``--gateway-id``, or the host-name default after a move to
    another host) the gateway would publish the old id's pending decisions under the new
    id and continue the old sequences there. The first start writes the id to
    ``<data_dir>/gateway-id``; every later start must match it.
    """
    path = Path(data_dir) / GATEWAY_ID_FILE
    try:
        claimed = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(GATEWAY_ID_FILE + ".tmp")
        staging.write_text(gateway_id + "\n")
        os.replace(staging, path)
        return
    if claimed != gateway_id:
        raise GatewayIdMismatchError(
            f"data directory {data_dir} belongs to gateway id {claimed!r}, not {gateway_id!r} "
            f"(its outbox holds that id's sequences): start it with --gateway-id {claimed}, "
            f"or give {gateway_id!r} its own --data-dir"
        )


def default_gateway_id() -> str:
    """The host name's first label when it is a valid gateway id, else ``gw1``."""
    candidate = socket.gethostname().split(".")[0]
    try:
        return validate_gateway_id(candidate)
    except InvalidSubjectTokenError:
        return FALLBACK_GATEWAY_ID


def parse_host_port(listen: str, setting: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a tuple, or ConfigError naming ``setting``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{setting}: expected host:port, got {listen!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one gateway process needs to start. ``nats_url=None`` means "start an
    embedded nats-server in the data dir" (``pretrade up``); ``metrics_listen=None`` turns
    the metrics endpoint off; ``tokens_path`` is required (``pretrade up`` writes demo
    tokens and passes their file)."""

    rules_path: str
    tokens_path: str
    listen: str = DEFAULT_LISTEN
    nats_url: str | None = DEFAULT_NATS_URL
    data_dir: str = DEFAULT_DATA_DIR
    gateway_id: str = field(default_factory=default_gateway_id)
    metrics_listen: str | None = DEFAULT_METRICS_LISTEN
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    max_open_streams: int = DEFAULT_MAX_OPEN_STREAMS
    idempotency_capacity: int = DEFAULT_IDEMPOTENCY_CAPACITY
    execution_dedup_capacity: int = DEFAULT_EXECUTION_DEDUP_CAPACITY
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    publish_flush_timeout_s: float = DEFAULT_PUBLISH_FLUSH_TIMEOUT_S
    #: How long the publisher lets decisions gather before publishing them (see
    #: ``gateway.publisher.DEFAULT_PUBLISH_LINGER_S`` for the trade-off), seconds; 0 = at once.
    publish_linger_s: float = DEFAULT_PUBLISH_LINGER_S
    nats_connect_timeout_s: float = DEFAULT_NATS_CONNECT_TIMEOUT_S
    validation: ValidationLimits = field(default_factory=ValidationLimits)
    #: Keyword arguments for ``fastpath.engine.Engine``: capacities (max_orders,
    #: max_positions, client_order_id_memory) or, in tests, kernel_class.
    engine_options: dict[str, object] = field(default_factory=dict)
    #: Run the halt manager and serve HaltService on this gateway's port (``pretrade up``).
    #: Every gateway follows the halt state either way.
    host_halt_manager: bool = False
    #: Run the ledger ingest worker in this process and serve LedgerService on this port
    #: (``pretrade up``; at production order rates run ``pretrade ledger run`` apart).
    host_ledger: bool = False
    #: TLS on the gRPC port: the server's certificate chain and its private key (PEM, both
    #: or neither; neither = plaintext, for localhost only). With ``tls_client_ca_path``
    #: every client must present a certificate signed by that CA (mutual TLS). Checked, files
    #: included, by ``gateway.server.server_credentials`` (the one check, shared with the
    #: standalone ledger's ``--listen``), before the server starts.
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    tls_client_ca_path: str | None = None
    #: A Unix socket (path) also served, in plaintext, for the companions ``pretrade up``
    #: runs in this process when the port has TLS (they have no client certificate). Made
    #: mode 0600: only this user can connect; calls still need a token.
    companion_socket: str | None = None

    def __post_init__(self) -> None:
        parse_host_port(self.listen, "--listen")
        if self.companion_socket is not None and len(self.companion_socket.encode()) > MAX_UNIX_SOCKET_PATH:
            raise ConfigError(
                f"companion socket {self.companion_socket}: path longer than {MAX_UNIX_SOCKET_PATH} bytes "
                "(use a shorter --data-dir)"
            )
        if self.metrics_listen is not None:
            parse_host_port(self.metrics_listen, "--metrics-listen")
        try:
            validate_gateway_id(self.gateway_id)
        except InvalidSubjectTokenError as exc:
            raise ConfigError(f"--gateway-id: {exc}") from None
        if not 0 <= self.publish_linger_s <= MAX_PUBLISH_LINGER_S:
            raise ConfigError(
                f"--publish-linger-ms: must be 0 .. {MAX_PUBLISH_LINGER_S * 1000:.0f} (got {self.publish_linger_s * 1000:g})"
            )
        for name in _POSITIVE_SETTINGS:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0 (got {getattr(self, name)})")

    @property
    def tls(self) -> bool:
        """Whether the gRPC port serves TLS."""
        return self.tls_cert_path is not None

    @property
    def outbox_path(self) -> Path:
        return Path(self.data_dir) / OUTBOX_SUBDIR
