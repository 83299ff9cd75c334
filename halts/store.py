"""The authoritative halt state: the ``PRETRADE_HALTS`` JetStream KV bucket.

One key per scope (``state.*``), per approval request (``request.*``) and per override
(``override.*``), each holding the protobuf record of ``halts.proto``; see
:mod:`halts.subjects` for the names. The bucket is file-backed, replicated (``replicas``)
and keeps ``DEFAULT_HALTS_BUCKET_HISTORY`` revisions per key: the latest revision is the
state. Every write is a compare-and-swap on the revision read (``kv.create`` when the key
must not exist yet, ``kv.update(..., last=revision)`` otherwise), so two operators (or two
managers) acting at once never overwrite each other silently: the loser gets
:class:`~halts.errors.RevisionConflictError` and re-reads.

Events go to the ``PRETRADE_HALT_EVENTS`` stream with the event id as ``Nats-Msg-Id``, so a
re-published event is stored once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from fastpath.codes import Scope
from halts.errors import CorruptRecordError, HaltStoreUnavailableError, RevisionConflictError
from halts.model import scope_from_proto
from halts.subjects import (
    DEFAULT_HALTS_BUCKET_HISTORY,
    EVENTS_STREAM,
    EVENTS_STREAM_SUBJECTS,
    HALTS_BUCKET,
    MSG_ID_HEADER,
    OVERRIDE_KEY_PREFIX,
    REQUEST_KEY_PREFIX,
    STATE_KEY_PREFIX,
    key_kind,
    override_key,
    request_key,
    state_key,
)
from pretrade.v1 import halts_pb2

#: How long one KV or stream operation may take before it counts as unavailable, seconds.
DEFAULT_STORE_TIMEOUT_S = 2.0
#: Replicas of the bucket and the events stream (1 on a single server; 3 in a cluster).
DEFAULT_REPLICAS = 1

#: Key prefix -> the record type its values hold.
RECORD_TYPES: dict[str, type[Message]] = {
    STATE_KEY_PREFIX: halts_pb2.HaltState,
    REQUEST_KEY_PREFIX: halts_pb2.ApprovalRequest,
    OVERRIDE_KEY_PREFIX: halts_pb2.Override,
}

#: JetStream error codes of a write whose expected last subject sequence did not match.
_WRONG_LAST_SEQUENCE = (10071, 10164)
#: Errors of nats-py that mean "the server could not be asked or did not answer".
NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, OSError)

R = TypeVar("R", bound=Message)


@dataclass(frozen=True)
class Versioned(Generic[R]):
    """A record and the KV revision it was read at (the ``last`` of a CAS write)."""

    record: R
    revision: int


@dataclass
class Snapshot:
    """The whole bucket at one moment: the latest record of every key, by key."""

    states: dict[str, Versioned[halts_pb2.HaltState]] = field(default_factory=dict)
    requests: dict[str, Versioned[halts_pb2.ApprovalRequest]] = field(default_factory=dict)
    overrides: dict[str, Versioned[halts_pb2.Override]] = field(default_factory=dict)
    #: Highest revision seen: the bucket stream's last sequence when the snapshot was taken.
    revision: int = 0

    def add(self, key: str, record: Message, revision: int) -> None:
        target = {
            STATE_KEY_PREFIX: self.states,
            REQUEST_KEY_PREFIX: self.requests,
            OVERRIDE_KEY_PREFIX: self.overrides,
        }[key_kind(key)]
        target[key] = Versioned(record, revision)


def decode_record(key: str, value: bytes) -> Message | None:
    """The record a KV value holds, or None for keys outside the halt vocabulary.
    Raises :class:`CorruptRecordError` for a value that does not parse."""
    record_type = RECORD_TYPES.get(key_kind(key))
    if record_type is None:
        return None
    try:
        return record_type.FromString(value)
    except DecodeError as exc:
        raise CorruptRecordError(
            f"KV key {key!r} does not hold a {record_type.DESCRIPTOR.full_name}: {exc}"
        ) from None


def is_removal(entry: KeyValue.Entry) -> bool:
    """Whether a KV entry is a delete or purge marker (the key no longer has a value)."""
    return entry.operation in (KV_DEL, KV_PURGE)


async def open_bucket(
    js, *, replicas: int = DEFAULT_REPLICAS, timeout_s: float = DEFAULT_STORE_TIMEOUT_S
) -> KeyValue:
    """The bucket, created (file storage, ``replicas``, history) if it does not exist yet.
    A fresh bucket means "nothing is halted", which is the truth on a new installation."""
    try:
        return await asyncio.wait_for(js.key_value(HALTS_BUCKET), timeout_s)
    except nats.js.errors.BucketNotFoundError:
        config = KeyValueConfig(
            bucket=HALTS_BUCKET,
            description="pretrade halts: trading states, approval requests, limit overrides",
            history=DEFAULT_HALTS_BUCKET_HISTORY,
            storage=StorageType.FILE,
            replicas=replicas,
        )
        return await asyncio.wait_for(js.create_key_value(config), timeout_s)


class HaltStore:
    """Typed, compare-and-swap access to the bucket plus event publishing."""

    def __init__(self, nc: NatsClient, kv: KeyValue, *, timeout_s: float = DEFAULT_STORE_TIMEOUT_S) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout_s)
        self.kv = kv
        self._timeout_s = timeout_s

    @classmethod
    async def open(
        cls, nc: NatsClient, *, replicas: int = DEFAULT_REPLICAS, timeout_s: float = DEFAULT_STORE_TIMEOUT_S
    ) -> HaltStore:
        """Open (creating if needed) the bucket and the events stream."""
        js = nc.jetstream(timeout=timeout_s)
        try:
            kv = await open_bucket(js, replicas=replicas, timeout_s=timeout_s)
            await asyncio.wait_for(_ensure_events_stream(js, replicas), timeout_s)
        except NATS_ERRORS as exc:
            raise HaltStoreUnavailableError(
                f"cannot open the {HALTS_BUCKET} bucket: {_describe(exc)}"
            ) from None
        return cls(nc, kv, timeout_s=timeout_s)

    # -- reads --------------------------------------------------------------------------------
    async def _get(self, key: str, record_type: type[R]) -> Versioned[R] | None:
        try:
            entry = await asyncio.wait_for(self.kv.get(key), self._timeout_s)
        except nats.js.errors.KeyNotFoundError:
            return None
        except NATS_ERRORS as exc:
            raise HaltStoreUnavailableError(f"cannot read {key}: {_describe(exc)}") from None
        try:
            record = decode_record(key, entry.value)
        except CorruptRecordError as exc:
            raise CorruptRecordError(str(exc), entry.revision) from None
        assert isinstance(record, record_type)
        return Versioned(record, entry.revision)

    async def state(self, scope: Scope, name: str) -> Versioned[halts_pb2.HaltState] | None:
        return await self._get(state_key(scope, name), halts_pb2.HaltState)

    async def request(self, request_id: str) -> Versioned[halts_pb2.ApprovalRequest] | None:
        return await self._get(request_key(request_id), halts_pb2.ApprovalRequest)

    async def snapshot(self) -> Snapshot:
        """Every key's latest record (delete markers left out)."""
        snapshot = Snapshot()
        unreadable = f"cannot read the {HALTS_BUCKET} bucket"
        try:
            watcher = await asyncio.wait_for(self.kv.watchall(), self._timeout_s)
        except NATS_ERRORS as exc:
            raise HaltStoreUnavailableError(f"{unreadable}: {_describe(exc)}") from None
        try:
            while True:
                try:
                    entry = await watcher.updates(self._timeout_s)
                except NATS_ERRORS as exc:
                    raise HaltStoreUnavailableError(f"{unreadable}: {_describe(exc)}") from None
                if entry is None:
                    return snapshot
                snapshot.revision = max(snapshot.revision, entry.revision)
                if not is_removal(entry):
                    record = decode_record(entry.key, entry.value)
                    if record is not None:
                        snapshot.add(entry.key, record, entry.revision)
        finally:
            await _stop_quietly(watcher)

    # -- compare-and-swap writes ----------------------------------------------------------------
    async def _write(self, key: str, record: Message, expected_revision: int) -> int:
        """Write ``record`` if the key is still at ``expected_revision`` (0: must not
        exist); the new revision, or :class:`RevisionConflictError`."""
        payload = record.SerializeToString()
        if expected_revision == 0:
            return await self._compare_and_swap(key, expected_revision, self.kv.create(key, payload))
        update = self.kv.update(key, payload, last=expected_revision)
        return await self._compare_and_swap(key, expected_revision, update)

    async def write_state(self, record: halts_pb2.HaltState, expected_revision: int) -> int:
        key = state_key(scope_from_proto(record.scope), record.name)
        return await self._write(key, record, expected_revision)

    async def write_request(self, record: halts_pb2.ApprovalRequest, expected_revision: int) -> int:
        return await self._write(request_key(record.request_id), record, expected_revision)

    async def write_override(self, record: halts_pb2.Override, expected_revision: int) -> int:
        return await self._write(override_key(record.override_id), record, expected_revision)

    async def remove(self, key: str, expected_revision: int) -> None:
        """Delete ``key`` if it is still at ``expected_revision`` (clean-up of expired
        overrides and old decided requests; the CAS makes exactly one manager do it)."""
        await self._compare_and_swap(key, expected_revision, self.kv.delete(key, last=expected_revision))

    async def _compare_and_swap(self, key: str, expected_revision: int, write: Awaitable[object]):
        try:
            return await asyncio.wait_for(write, self._timeout_s)
        except nats.js.errors.APIError as exc:
            # kv.create/update raise KeyWrongLastSequenceError, kv.delete the raw APIError.
            wrong_revision = isinstance(exc, nats.js.errors.KeyWrongLastSequenceError)
            if wrong_revision or exc.err_code in _WRONG_LAST_SEQUENCE:
                raise RevisionConflictError(f"{key} changed since revision {expected_revision}") from None
            raise HaltStoreUnavailableError(f"cannot write {key}: {_describe(exc)}") from None
        except NATS_ERRORS as exc:
            raise HaltStoreUnavailableError(f"cannot write {key}: {_describe(exc)}") from None

    # -- events -------------------------------------------------------------------------------
    async def publish_event(self, subject: str, event: halts_pb2.HaltEvent) -> None:
        """Publish ``event`` into the events stream and wait for JetStream's ack."""
        try:
            await self.js.publish(
                subject,
                event.SerializeToString(),
                headers={MSG_ID_HEADER: event.event_id},
                timeout=self._timeout_s,
            )
        except NATS_ERRORS as exc:
            raise HaltStoreUnavailableError(
                f"cannot publish event {event.event_id}: {_describe(exc)}"
            ) from None

    async def subscribe_events(self, subject: str, callback: Callable) -> object:
        """A core-NATS subscription to ``subject`` (WatchHalts): events as they happen."""
        return await self.nc.subscribe(subject, cb=callback)


async def _ensure_events_stream(js, replicas: int) -> None:
    """Create the events stream, or leave an existing one as it is."""
    try:
        await js.stream_info(EVENTS_STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=EVENTS_STREAM,
                description="pretrade halt events (pretrade.v1.HaltEvent), for the ledger",
                subjects=list(EVENTS_STREAM_SUBJECTS),
                storage=StorageType.FILE,
                num_replicas=replicas,
            )
        )


async def _stop_quietly(watcher) -> None:
    try:
        await watcher.stop()
    except NATS_ERRORS:
        pass  # the connection is gone; the server drops the ephemeral consumer by itself


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
