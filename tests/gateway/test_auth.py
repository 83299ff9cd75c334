"""Unit tests of tokens, the token file, demo tokens and the auth interceptor.

The interceptor is exercised over loopback with a real ``grpc.aio`` server whose handlers
are trivial generic handlers registered under the real service and method names, so the
role table is tested as deployed without an engine.
"""

from __future__ import annotations

import asyncio
import base64
import os
import stat

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.auth import (
    DEFAULT_METHOD_ROLES,
    TOKEN_PREFIX,
    AuthInterceptor,
    InvalidRolesError,
    Principal,
    TokenFileError,
    TokenStore,
    bearer_token,
    current_principal,
    ensure_demo_tokens,
    generate_token,
    parse_roles,
    token_entry_toml,
    token_sha256,
)

pytestmark = pytest.mark.timeout(30)

TRADER_TOKEN = generate_token()
OPERATOR_TOKEN = generate_token()
ADMIN_TOKEN = generate_token()


def write_token_file(path, *entries: str):
    path.write_text("\n".join(entries))
    return path


@pytest.fixture
def token_file(tmp_path):
    return write_token_file(
        tmp_path / "tokens.toml",
        token_entry_toml("tina", ["trader"], TRADER_TOKEN),
        token_entry_toml("alice", ["operator"], OPERATOR_TOKEN),
        token_entry_toml("root", ["admin"], ADMIN_TOKEN),
    )


def test_tokens_are_prefixed_32_random_bytes():
    token = generate_token()
    assert token.startswith(TOKEN_PREFIX)
    body = token.removeprefix(TOKEN_PREFIX)
    assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == 32
    assert generate_token() != token


def test_store_authenticates_by_hash(token_file):
    store = TokenStore.load(token_file)
    assert len(store) == 3
    assert store.authenticate(TRADER_TOKEN) == Principal("tina", frozenset({"trader"}))
    assert store.authenticate(ADMIN_TOKEN).roles == frozenset({"admin"})
    assert store.authenticate("pt_not-a-token") is None
    assert store.authenticate("") is None
    assert TRADER_TOKEN not in token_file.read_text()  # only hashes are stored
    assert token_sha256(TRADER_TOKEN) in token_file.read_text()


@pytest.mark.parametrize(
    "text, words",
    [
        ("[[tokens]]\nname = 'a'\nroles = ['trader']\n", "tokens[0].sha256"),
        ("[[tokens]]\nroles = ['trader']\nsha256 = '" + "a" * 64 + "'\n", "tokens[0].name"),
        ("[[tokens]]\nname = 'a'\nroles = ['king']\nsha256 = '" + "a" * 64 + "'\n", "unknown role(s) king"),
        ("[[tokens]]\nname = 'a'\nroles = []\nsha256 = '" + "a" * 64 + "'\n", "at least one role"),
        ("[[tokens]]\nname = 'a'\nroles = ['trader']\nsha256 = 'xyz'\n", "64 hex characters"),
        (
            "[[tokens]]\nname = 'a'\nroles = ['trader']\nsha256 = '" + "a" * 64 + "'\nextra = 1\n",
            "unknown key(s) extra",
        ),
        ("[[tokens]]\nname = 'a'\nroles = ['trader']\nsha256 = '" + "a" * 64 + "'\n"
         "[[tokens]]\nname = 'a'\nroles = ['trader']\nsha256 = '" + "b" * 64 + "'\n", "duplicate name"),
        ("[[tokens]]\nname = 'a'\nroles = ['trader']\nsha256 = '" + "a" * 64 + "'\n"
         "[[tokens]]\nname = 'b'\nroles = ['trader']\nsha256 = '" + "A" * 64 + "'\n", "same token hash"),
        ("tokens = 3\n", "array of tables"),
        ("[other]\n", "unknown key(s) other"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_malformed_token_files_fail_with_one_line_naming_the_entry(tmp_path, text, words):
    path = write_token_file(tmp_path / "bad.toml", text)
    with pytest.raises(TokenFileError) as caught:
        TokenStore.load(path)
    message = str(caught.value)
    assert words in message
    assert message.startswith(str(path))
    assert "\n" not in message


def test_missing_token_file(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read token file"):
        TokenStore.load(tmp_path / "absent.toml")


def test_parse_roles():
    assert parse_roles(["trader", " admin "]) == frozenset({"trader", "admin"})
    with pytest.raises(InvalidRolesError):
        parse_roles(["", " "])


@pytest.mark.parametrize(
    "metadata, token",
    [
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("authorization", "Basic abc"),), None),
        ((("authorization", "Bearer "),), None),
        ((("x-other", "Bearer abc"),), None),
        ((), None),
        (None, None),
    ],
)
def test_bearer_token_parsing(metadata, token):
    assert bearer_token(metadata) == token


def test_demo_tokens_are_written_private_and_reused(tmp_path):
    demo = ensure_demo_tokens(tmp_path / "data")
    assert set(demo.tokens) == {"trader", "alice", "bob", "admin", "watchdog:default"}
    assert stat.S_IMODE(os.stat(demo.plaintext_path).st_mode) == 0o600
    store = TokenStore.load(demo.hashes_path)
    assert store.authenticate(demo.tokens["alice"]).roles == frozenset({"operator"})
    assert store.authenticate(demo.tokens["admin"]).roles == frozenset({"admin"})
    assert store.authenticate(demo.tokens["watchdog:default"]).roles == frozenset({"operator"})
    assert demo.tokens["trader"] in demo.plaintext_path.read_text()
    assert "NOT FOR PRODUCTION" in demo.plaintext_path.read_text()
    again = ensure_demo_tokens(tmp_path / "data")
    assert again.tokens == demo.tokens
    demo.plaintext_path.unlink()
    fresh = ensure_demo_tokens(tmp_path / "data")
    assert fresh.tokens["trader"] != demo.tokens["trader"]


def test_role_table_covers_every_rpc():
    assert DEFAULT_METHOD_ROLES["/pretrade.v1.GatewayService/CheckOrder"] == frozenset({"trader", "admin"})
    assert DEFAULT_METHOD_ROLES["/pretrade.v1.GatewayService/StreamOrders"] == frozenset({"trader", "admin"})
    assert DEFAULT_METHOD_ROLES["/pretrade.v1.AdminService/ReloadRules"] == frozenset({"admin"})
    assert len(DEFAULT_METHOD_ROLES) == 7


# -- the interceptor over loopback ----------------------------------------------------------


def _identity(request: bytes) -> bytes:
    return request


async def _whoami(request: bytes, context) -> bytes:
    principal = current_principal.get()
    return principal.name.encode() if principal else b"-"


async def _whoami_stream(request_iterator, context):
    async for _ in request_iterator:
        yield current_principal.get().name.encode()


def _generic(service: str, **methods):
    handlers = {
        name: (
            grpc.stream_stream_rpc_method_handler(behavior, _identity, _identity)
            if name.startswith("Stream")
            else grpc.unary_unary_rpc_method_handler(behavior, _identity, _identity)
        )
        for name, behavior in methods.items()
    }
    return grpc.method_handlers_generic_handler(service, handlers)


@pytest.fixture
async def auth_server(token_file):
    server = grpc.aio.server(interceptors=[AuthInterceptor(TokenStore.load(token_file))])
    server.add_generic_rpc_handlers(
        (
            _generic("pretrade.v1.GatewayService", CheckOrder=_whoami, StreamOrders=_whoami_stream),
            _generic("pretrade.v1.AdminService", ReloadRules=_whoami),
            _generic("pretrade.v1.Unlisted", Anything=_whoami),
        )
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(0)


async def call(channel, method: str, token: str | None) -> tuple[grpc.StatusCode, str]:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    stub = channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)
    try:
        response = await stub(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, response.decode()


async def test_missing_token_is_unauthenticated(auth_server):
    code, details = await call(auth_server, "/pretrade.v1.GatewayService/CheckOrder", None)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "missing bearer token" in details


async def test_unknown_token_is_unauthenticated(auth_server):
    code, details = await call(auth_server, "/pretrade.v1.GatewayService/CheckOrder", generate_token())
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")


async def test_good_token_reaches_the_servicer_with_its_principal(auth_server):
    assert await call(auth_server, "/pretrade.v1.GatewayService/CheckOrder", TRADER_TOKEN) == (
        grpc.StatusCode.OK,
        "tina",
    )
    assert await call(auth_server, "/pretrade.v1.GatewayService/CheckOrder", ADMIN_TOKEN) == (
        grpc.StatusCode.OK,
        "root",
    )
    assert await call(auth_server, "/pretrade.v1.AdminService/ReloadRules", ADMIN_TOKEN) == (
        grpc.StatusCode.OK,
        "root",
    )


@pytest.mark.parametrize(
    "method, token",
    [
        ("/pretrade.v1.GatewayService/CheckOrder", OPERATOR_TOKEN),
        ("/pretrade.v1.AdminService/ReloadRules", TRADER_TOKEN),
        ("/pretrade.v1.AdminService/ReloadRules", OPERATOR_TOKEN),
        ("/pretrade.v1.Unlisted/Anything", ADMIN_TOKEN),
    ],
)
async def test_wrong_role_is_permission_denied(auth_server, method, token):
    code, details = await call(auth_server, method, token)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert method in details


async def test_streams_are_authenticated_too(auth_server):
    stub = auth_server.stream_stream(
        "/pretrade.v1.GatewayService/StreamOrders",
        request_serializer=_identity,
        response_deserializer=_identity,
    )
    refused = stub(iter([b"x"]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await refused.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    admitted = stub(iter([b"x", b"y"]), metadata=(("authorization", f"Bearer {TRADER_TOKEN}"),), timeout=5)
    assert [response async for response in admitted] == [b"tina", b"tina"]


async def test_health_needs_no_token(auth_server):
    response = await asyncio.wait_for(
        health_pb2_grpc.HealthStub(auth_server).Check(health_pb2.HealthCheckRequest()), 5
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
