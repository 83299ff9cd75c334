"""Bearer-token authentication and per-method roles.

Every call carries ``authorization: Bearer <token>`` metadata. Tokens are 32 random bytes,
urlsafe-base64, prefixed ``pt_`` so that a leaked one is recognisable in logs and secret
scanners. The gateway stores only their SHA-256 (a token file of ``[[tokens]]`` entries),
so the file on the server is not itself a credential; lookups compare every stored hash in
constant time.

A token maps to a :class:`Principal` (a name and roles within ``trader``, ``operator``,
``admin``). :class:`AuthInterceptor` checks the method's role table before the servicer
runs and exposes the principal to servicers through :data:`current_principal`.

Revocation without a restart: :func:`reload_token_file` reads the token file again and
swaps it into the interceptor (the gateway and ``pretrade ledger run --listen`` call it on
SIGHUP). A unary call is checked when it starts, so one in flight finishes and the next is
checked against the new file. A stream lives for hours, so it is checked again at every
reload: one whose token left the file ends with UNAUTHENTICATED, one whose principal lost
the roles of its method with PERMISSION_DENIED.

Each reload's outcome is counted in the interceptor's :class:`TokenReloadStats` (plain
numbers, so this module needs no metrics library); ``gateway.metrics.TokenReloadCollector``
exports them, and the tokens and streams in force, when ``/metrics`` is scraped.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import inspect
import logging
import os
import secrets
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import grpc

from pretrade.v1 import gateway_pb2

log = logging.getLogger(__name__)

ROLE_TRADER = "trader"
ROLE_OPERATOR = "operator"
ROLE_ADMIN = "admin"
ROLES = frozenset((ROLE_TRADER, ROLE_OPERATOR, ROLE_ADMIN))

TOKEN_PREFIX = "pt_"
TOKEN_RANDOM_BYTES = 32
AUTHORIZATION_METADATA_KEY = "authorization"

DEMO_TOKENS_FILE = "demo-tokens.toml"  # hashes: the token file the server reads
DEMO_TOKENS_PLAINTEXT_FILE = "demo-tokens.txt"  # the tokens themselves, mode 0600
#: The demo principals ``pretrade up`` creates when no token file is given.
DEMO_PRINCIPALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("trader", (ROLE_TRADER,)),
    ("alice", (ROLE_OPERATOR,)),
    ("bob", (ROLE_OPERATOR,)),
    ("admin", (ROLE_ADMIN,)),
    # the watchdog worker of `pretrade up` asks the halt manager for graduated responses
    ("watchdog:default", (ROLE_OPERATOR,)),
)

_SHA256_HEX_LENGTH = 64
_TOKEN_ENTRY_KEYS = frozenset(("name", "roles", "sha256"))


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token entry's name and roles."""

    name: str
    roles: frozenset[str]

    def may(self, allowed_roles: frozenset[str]) -> bool:
        return not self.roles.isdisjoint(allowed_roles)


#: The authenticated caller of the RPC being served (None outside an RPC or on public methods).
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)


class TokenFileError(ValueError):
    """A token file that cannot be read or has a malformed entry (one-line message naming
    the file and the entry)."""


class InvalidRolesError(ValueError):
    """Roles outside ``trader``, ``operator``, ``admin``, or none at all."""


def parse_roles(roles: Iterable[str]) -> frozenset[str]:
    """The roles as a frozenset, or InvalidRolesError naming the unknown ones."""
    parsed = frozenset(role.strip() for role in roles if role.strip())
    if not parsed:
        raise InvalidRolesError(f"at least one role is required ({', '.join(sorted(ROLES))})")
    unknown = parsed - ROLES
    if unknown:
        raise InvalidRolesError(
            f"unknown role(s) {', '.join(sorted(unknown))}; roles are {', '.join(sorted(ROLES))}"
        )
    return parsed


def generate_token() -> str:
    """A new bearer token: ``pt_`` + 32 random bytes, urlsafe-base64 without padding."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_RANDOM_BYTES)


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a token: what a token file stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_entry_toml(name: str, roles: Iterable[str], token: str) -> str:
    """The ``[[tokens]]`` entry that admits ``token`` as ``name`` with ``roles``."""
    role_list = ", ".join(f'"{role}"' for role in sorted(roles))
    escaped_name = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'[[tokens]]\nname = "{escaped_name}"\nroles = [{role_list}]\nsha256 = "{token_sha256(token)}"\n'


@dataclass(frozen=True)
class _TokenEntry:
    digest: bytes
    principal: Principal


class TokenStore:
    """The principals the gateway admits, keyed by token hash."""

    def __init__(self, entries: Mapping[str, Principal]) -> None:
        """``entries``: hex SHA-256 of a token -> principal."""
        self._entries = tuple(
            _TokenEntry(bytes.fromhex(digest), principal) for digest, principal in entries.items()
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenStore:
        """Read a token file; TokenFileError (one line) if it is unreadable or malformed."""
        source = str(path)
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise TokenFileError(f"{source}: cannot read token file: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise TokenFileError(f"{source}: not valid TOML: {exc}") from None
        unknown_tables = set(document) - {"tokens"}
        if unknown_tables:
            unknown = ", ".join(sorted(unknown_tables))
            raise TokenFileError(f"{source}: unknown key(s) {unknown}; expected [[tokens]]")
        raw_entries = document.get("tokens", [])
        if not isinstance(raw_entries, list):
            raise TokenFileError(f"{source}: tokens: must be an array of tables ([[tokens]])")
        entries: dict[str, Principal] = {}
        names: set[str] = set()
        for index, raw in enumerate(raw_entries):
            where = f"{source}: tokens[{index}]"
            if not isinstance(raw, dict):
                raise TokenFileError(f"{where}: must be a table")
            unknown = set(raw) - _TOKEN_ENTRY_KEYS
            if unknown:
                raise TokenFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            name, roles, digest = raw.get("name"), raw.get("roles"), raw.get("sha256")
            if not isinstance(name, str) or not name:
                raise TokenFileError(f"{where}.name: must be a non-empty string (got {name!r})")
            if name in names:
                raise TokenFileError(f"{where}.name: duplicate name {name!r}")
            if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
                raise TokenFileError(f"{where}.roles: must be a list of strings (got {roles!r})")
            try:
                parsed_roles = parse_roles(roles)
            except InvalidRolesError as exc:
                raise TokenFileError(f"{where}.roles: {exc}") from None
            if (
                not isinstance(digest, str)
                or len(digest) != _SHA256_HEX_LENGTH
                or any(char not in "0123456789abcdefABCDEF" for char in digest)
            ):
                raise TokenFileError(
                    f"{where}.sha256: must be {_SHA256_HEX_LENGTH} hex characters (got {digest!r})"
                )
            digest = digest.lower()
            if digest in entries:
                raise TokenFileError(f"{where}.sha256: same token hash as {entries[digest].name!r}")
            names.add(name)
            entries[digest] = Principal(name, parsed_roles)
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None. Every stored hash is compared, in constant
        time, so the time taken says nothing about which entry (if any) matched."""
        return self.principal_of(hashlib.sha256(token.encode("utf-8")).digest())

    def principal_of(self, digest: bytes) -> Principal | None:
        """The principal of the token whose SHA-256 is ``digest``, or None (constant time,
        as :meth:`authenticate`). Open streams keep the digest, never the token, to be
        checked again at a reload."""
        found = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.principal
        return found


# ------------------------------------------------------------------------------------------
# Demo tokens for `pretrade up` without a token file.
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoTokens:
    hashes_path: Path  # the token file the gateway reads
    plaintext_path: Path  # the tokens, mode 0600
    tokens: dict[str, str]  # principal name -> token


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, even if it already existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def _read_demo_plaintext(path: Path) -> dict[str, str]:
    tokens = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 3 and not line.startswith("#"):
            name, _roles, token = fields
            tokens[name] = token
    return tokens


def ensure_demo_tokens(data_dir: str | os.PathLike) -> DemoTokens:
    """Demo tokens for a trader, two operators (alice, bob) and an admin in ``data_dir``.

    Reuses the files of an earlier run when both exist and agree (so tokens survive a
    restart), otherwise writes new ones: the hashes to ``demo-tokens.toml`` and the
    plaintext tokens to ``demo-tokens.txt`` (mode 0600). Demo tokens are not for production.
    """
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    hashes_path = directory / DEMO_TOKENS_FILE
    plaintext_path = directory / DEMO_TOKENS_PLAINTEXT_FILE
    if hashes_path.exists() and plaintext_path.exists():
        try:
            tokens = _read_demo_plaintext(plaintext_path)
            store = TokenStore.load(hashes_path)
        except (OSError, TokenFileError):
            tokens, store = {}, None
        if store is not None and {name for name, _ in DEMO_PRINCIPALS} <= set(tokens):
            if all(store.authenticate(tokens[name]) is not None for name, _ in DEMO_PRINCIPALS):
                return DemoTokens(hashes_path, plaintext_path, tokens)
    tokens = {name: generate_token() for name, _ in DEMO_PRINCIPALS}
    hashes = "# pretrade demo token hashes: DEMO ONLY, NOT FOR PRODUCTION. Tokens in demo-tokens.txt.\n\n"
    hashes += "\n".join(token_entry_toml(name, roles, tokens[name]) for name, roles in DEMO_PRINCIPALS)
    plaintext = (
        "# pretrade demo tokens: DEMO ONLY, NOT FOR PRODUCTION.\n"
        "# Send one as gRPC metadata 'authorization: Bearer <token>' (or PRETRADE_TOKEN=<token>).\n"
        "# name roles token\n"
    )
    plaintext += "".join(f"{name} {','.join(roles)} {tokens[name]}\n" for name, roles in DEMO_PRINCIPALS)
    _write_private(plaintext_path, plaintext)
    _write_private(hashes_path, hashes)
    return DemoTokens(hashes_path, plaintext_path, tokens)


# ------------------------------------------------------------------------------------------
# The interceptor.
# ------------------------------------------------------------------------------------------

#: Roles allowed on the order gate and on gateway administration.
GATEWAY_ROLES = frozenset((ROLE_TRADER, ROLE_ADMIN))
ADMIN_ROLES = frozenset((ROLE_ADMIN,))

#: Methods anyone may call without a token: health checks and server reflection.
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def service_method_roles(service_descriptor, roles: frozenset[str]) -> dict[str, frozenset[str]]:
    """``{"/pkg.Service/Method": roles}`` for every method of a service descriptor."""
    return {f"/{service_descriptor.full_name}/{method.name}": roles for method in service_descriptor.methods}


#: Full method name -> roles allowed to call it. A method in no table and not public is
#: refused to everyone (fail closed): a new service must declare its roles.
DEFAULT_METHOD_ROLES: dict[str, frozenset[str]] = {
    **service_method_roles(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"], GATEWAY_ROLES),
    **service_method_roles(gateway_pb2.DESCRIPTOR.services_by_name["AdminService"], ADMIN_ROLES),
}

Before = Callable[[grpc.aio.ServicerContext], object]
After = Callable[[grpc.aio.ServicerContext, object, BaseException | None], None]


def wrap_method_handler(handler: grpc.RpcMethodHandler, before: Before, after: After | None = None):
    """``handler`` with its behavior run between ``before(context)`` and
    ``after(context, state, error)`` (``state`` is what ``before`` returned; ``error`` the
    exception the behavior ended with, or None). Works for all four RPC kinds and for
    streaming responses written by an async generator or by ``context.write``."""

    def wrap(behavior):
        if inspect.isasyncgenfunction(behavior):

            async def wrapped_stream(request, context):
                state = before(context)
                error = None
                try:
                    async for response in behavior(request, context):
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    if after is not None:
                        after(context, state, error)

            return wrapped_stream
        if not inspect.iscoroutinefunction(behavior):
            raise TypeError(f"{behavior!r} is not an async servicer method")

        async def wrapped(request, context):
            state = before(context)
            error = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                if after is not None:
                    after(context, state, error)

        return wrapped

    return _with_behavior(handler, wrap)


def _with_behavior(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    """``handler`` with ``wrap`` applied to whichever behavior it has."""
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    for behavior, factory in kinds:
        if behavior is not None:
            return factory(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise TypeError("method handler without a behavior")


def _refusing_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as ``handler`` that ends the call with ``code``."""

    async def refuse(request, context):
        await context.abort(code, message)

    return _with_behavior(handler, lambda _behavior: refuse)


def bearer_token(metadata) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry, or None."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_METADATA_KEY:
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class _OpenStream:
    """One admitted streaming call, for :meth:`AuthInterceptor.replace_store`: its token's
    digest, its method, the task serving it and, once a reload revoked it, how it ends."""

    __slots__ = ("digest", "method", "principal", "task", "in_servicer", "ending")

    def __init__(self, digest: bytes, method: str, principal: Principal) -> None:
        self.digest = digest
        self.method = method
        self.principal = principal
        self.task: asyncio.Task | None = None
        #: True while the servicer's code runs (awaits): cancelling the task then lands in
        #: it. False while gRPC writes a message a generator yielded.
        self.in_servicer = False
        #: (code, message) once a reload revoked the stream.
        self.ending: tuple[grpc.StatusCode, str] | None = None

    def end(self, code: grpc.StatusCode, message: str) -> None:
        """End the call with ``code``: cancel the servicer where it waits (reading the next
        request, waiting for a halt event, writing a response) and let the wrapper turn the
        cancellation into that status, after the servicer's own clean-up ran."""
        self.ending = (code, message)
        if self.in_servicer and self.task is not None:
            self.task.cancel()


def _streams_until_revoked(handler: grpc.RpcMethodHandler, stream: _OpenStream, open_streams: set[_OpenStream]):
    """``handler`` (a streaming method) registered in ``open_streams`` while it runs, and
    ended with ``stream.ending`` once a reload revoked it.

    The servicer is stopped by cancelling its task, not by aborting the call from the
    reloading task, so that its ``finally`` blocks (StreamOrders releases the stream's
    cancel-on-disconnect orders) run before the status goes out. It can only be cancelled
    at an ``await``: a decision being made is finished and recorded first (the order path
    does not await between deciding and recording). A decision recorded but whose response
    write was cut is in the outbox and published like any other; the client gets it again by
    retrying with the same request id."""

    async def abort_if_revoked(context) -> None:
        if stream.ending is not None:
            await context.abort(*stream.ending)

    def wrap(behavior):
        if inspect.isasyncgenfunction(behavior):

            async def revocable_stream(request, context):
                stream.task = asyncio.current_task()
                open_streams.add(stream)
                responses = behavior(request, context)
                try:
                    while True:
                        await abort_if_revoked(context)  # revoked while gRPC wrote the last one
                        stream.in_servicer = True
                        try:
                            response = await anext(responses)
                        except StopAsyncIteration:
                            break
                        except asyncio.CancelledError:
                            if stream.ending is None:
                                raise
                            stream.task.uncancel()
                            break
                        finally:
                            stream.in_servicer = False
                        yield response
                finally:
                    open_streams.discard(stream)
                    await responses.aclose()
                await abort_if_revoked(context)  # also if the servicer swallowed the cancellation

            return revocable_stream
        if not inspect.iscoroutinefunction(behavior):
            raise TypeError(f"{behavior!r} is not an async servicer method")

        async def revocable(request, context):
            stream.task = asyncio.current_task()
            open_streams.add(stream)
            stream.in_servicer = True
            response = None
            try:
                response = await behavior(request, context)
            except asyncio.CancelledError:
                if stream.ending is None:
                    raise
                stream.task.uncancel()
            finally:
                stream.in_servicer = False
                open_streams.discard(stream)
            await abort_if_revoked(context)  # also if the servicer swallowed the cancellation
            return response

        return revocable

    return _with_behavior(handler, wrap)


@dataclass
class TokenReloadStats:
    """What the token reloads of one interceptor did, for the metrics: a failed reload
    leaves the old tokens in force (a revoked token still works), so it has to be visible to
    an alert, not only in the log. Written by :func:`reload_token_file` on the event loop,
    read at scrape time."""

    succeeded: int = 0
    failed: int = 0
    #: Unix time of the last reload that took effect, seconds; 0.0 until one has.
    last_success_unix_s: float = 0.0
    #: Streams ended by reloads, by status code name (UNAUTHENTICATED, PERMISSION_DENIED).
    streams_ended: Counter[str] = field(default_factory=Counter)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits a call if its bearer token names a principal with a role the method allows.

    No or unknown token: UNAUTHENTICATED. Known principal without an allowed role (or a
    method missing from the role table): PERMISSION_DENIED. Public methods (health,
    reflection) need no token.

    Streaming calls stay registered while they run; :meth:`replace_store` (a token reload)
    ends those the new store no longer admits.
    """

    def __init__(
        self,
        store: TokenStore,
        method_roles: Mapping[str, frozenset[str]] = DEFAULT_METHOD_ROLES,
        public_method_prefixes: tuple[str, ...] = PUBLIC_METHOD_PREFIXES,
    ) -> None:
        self._store = store
        self._method_roles = dict(method_roles)
        self._public = public_method_prefixes
        self._open_streams: set[_OpenStream] = set()
        self.reload_stats = TokenReloadStats()

    @property
    def store(self) -> TokenStore:
        return self._store

    @property
    def open_streams(self) -> int:
        """Authenticated streaming calls open now."""
        return len(self._open_streams)

    def _refusal(self, principal: Principal, method: str) -> str | None:
        """Why ``principal`` may not call ``method`` (None: it may)."""
        allowed = self._method_roles.get(method)
        if allowed is not None and principal.may(allowed):
            return None
        needed = " or ".join(sorted(allowed)) if allowed else "a role table entry"
        return f"{principal.name} (roles: {', '.join(sorted(principal.roles))}) may not call {method}: needs {needed}"

    def replace_store(self, store: TokenStore) -> Counter[str]:
        """Admit ``store``'s tokens from now on, and end every open stream it no longer
        admits: UNAUTHENTICATED if its token is gone, PERMISSION_DENIED if its principal's
        roles no longer allow its method. Returns how many streams were ended, by status
        code name.

        The swap is one reference assignment and needs no lock: the interceptor and every
        call it wraps run on the event loop thread, and this runs there too, so no call is
        checked against half a store; a call admitted before the assignment and still
        running is a stream (checked below) or a unary call, which finishes.
        """
        self._store = store
        ended: Counter[str] = Counter()
        for stream in list(self._open_streams):
            if stream.ending is not None:
                continue
            principal = store.principal_of(stream.digest)
            if principal is None:
                stream.end(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"token of {stream.principal.name} revoked at token reload: {stream.method} ended",
                )
            elif refusal := self._refusal(principal, stream.method):
                stream.end(grpc.StatusCode.PERMISSION_DENIED, f"roles changed at token reload: {refusal}")
            else:
                continue
            log.warning("ending a stream at token reload: %s", stream.ending[1])
            ended[stream.ending[0].name] += 1
        return ended

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._public):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return _refusing_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing bearer token: send metadata 'authorization: Bearer <token>'",
            )
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        principal = self._store.principal_of(digest)
        if principal is None:
            return _refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        if refusal := self._refusal(principal, method):
            return _refusing_handler(handler, grpc.StatusCode.PERMISSION_DENIED, refusal)
        admitted = wrap_method_handler(handler, lambda _context: current_principal.set(principal))
        if handler.request_streaming or handler.response_streaming:
            return _streams_until_revoked(admitted, _OpenStream(digest, method, principal), self._open_streams)
        return admitted


async def reload_token_file(interceptor: AuthInterceptor, path: str | os.PathLike) -> bool:
    """Read the token file ``path`` again and swap it into ``interceptor`` (SIGHUP of the
    gateway and of ``pretrade ledger run --listen``). The whole file is parsed and checked
    before anything changes: on any problem the tokens in force stay, one ERROR line names
    the file and the problem (TokenStore.load's message) and the result is False. The file
    is read off the event loop thread (a slow disk must not pause the order path); the swap
    is on it (:meth:`AuthInterceptor.replace_store`). Either outcome, and the streams ended,
    is counted in ``interceptor.reload_stats``."""
    stats = interceptor.reload_stats
    try:
        store = await asyncio.to_thread(TokenStore.load, path)
    except TokenFileError as exc:
        stats.failed += 1
        log.error("token reload failed, keeping the %d tokens in force: %s", len(interceptor.store), exc)
        return False
    ended = interceptor.replace_store(store)
    stats.succeeded += 1
    stats.last_success_unix_s = time.time()
    stats.streams_ended.update(ended)
    log.info("tokens reloaded from %s: %d tokens, %d open streams ended", path, len(store), ended.total())
    return True
