"""The gateway's side of halts: follow the ``PRETRADE_HALTS`` bucket into the kernel.

A :class:`HaltFollower` runs in every gateway, on the gateway's event loop (the engine is
not thread-safe; everything here runs on that loop):

* :meth:`HaltFollower.start` reads the whole bucket and applies every trading state to the
  engine (``engine.set_trading_state(scope, name, state)``) and the overrides in force
  (``reload_rules(overrides)``) *before* it returns; the gateway turns health SERVING only
  after that. If NATS cannot be reached it keeps retrying (it never returns with state
  unread); cancel it to give up.
* it then watches the bucket (a KV watch: an ordered push consumer) and applies each
  change as it arrives, typically within a millisecond of the manager's write;
* the kill switch (a FIRM state with ``cancel_all`` and a request id not seen before)
  calls ``on_cancel_all(ControlMessage)`` once the HALTED state is applied. A kill that
  happened before this gateway started is not replayed (the gateway had no streams); one
  that happened during an outage is delivered on the resync that ends it;
* overrides leave force by this gateway's own clock: a timer fires at the earliest
  expiry and reloads the rules without it, whether or not any manager is running.

Fail closed: :attr:`HaltFollower.ready` is True only while the follower is known to be
current. A probe (every ``probe_interval_s``) compares the bucket's last revision with the
last revision the watch delivered; the follower counts as current when the probe answers
and the watch has caught up. If that has not been confirmed for longer than
``staleness_bound_s`` (NATS lost, the watch dead or stuck, the bucket unreadable),
``ready`` turns False and ``on_ready_change(False)`` is called: the gateway then rejects
every order with ``HALT_STATE_UNAVAILABLE`` and reports NOT_SERVING. The follower keeps
trying to reload the whole bucket; when it has, ``ready`` turns True again. After every
NATS reconnect the follower reloads the bucket at once, without waiting for the bound.

Confirmation: the follower tells the halt manager what this gateway enforces, so that the
operator's answer can say which gateways hold a change. It publishes a ``HaltsApplied``
(gateway id, the bucket revision applied up to, ``ready``) on
``pretrade.v1.halts.applied.<gateway_id>`` right after it applies a change or a reload,
and every ``applied_heartbeat_s`` so that the manager knows the gateway is alive. While
NATS is not connected it publishes nothing (a stale report buffered for the reconnect
would claim a currency the gateway may have lost).

The hooks (sync functions or coroutine functions):

``reload_rules(overrides: Sequence[fastpath.rules.LimitOverride])``
    Recompile the gateway's rules file with these overrides on top
    (``load_rules(path, engine.interner, overrides)``) and swap them into the engine.
    Called with the full set in force (oldest first) whenever that set changes, never
    concurrently. If it raises a ``RulesError`` whose ``source`` names one override (this
    gateway's rules do not declare its account, say), the follower logs it and reloads
    without that override.
``on_cancel_all(message: pretrade.v1.ControlMessage)``
    Send the CANCEL_ALL message to every open order stream (``broadcast_control``).
    Run as a task, so a slow stream never delays the next state change.
``on_ready_change(ready: bool)``
    Optional: health SERVING / NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence

from nats.aio.client import Client as NatsClient

from fastpath.codes import Scope, TradingState
from fastpath.errors import RulesError
from fastpath.rules import LimitOverride
from gateway.aio import wait_until
from halts.errors import CorruptRecordError, HaltStoreUnavailableError
from halts.model import (
    control_message,
    limit_override,
    overrides_in_force,
    scope_from_proto,
    scope_label,
    state_from_proto,
    state_to_proto,
)
from halts.store import NATS_ERRORS, decode_record, is_removal, open_bucket
from halts.subjects import (
    DEFAULT_APPLIED_HEARTBEAT_S,
    HALTS_BUCKET,
    HALTS_BUCKET_STREAM,
    OVERRIDE_KEY_PREFIX,
    STATE_KEY_PREFIX,
    applied_subject,
    key_kind,
)
from pretrade.v1 import halts_pb2

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000

#: Longest the follower may go without confirming it is current before it fails closed, s.
DEFAULT_STALENESS_BOUND_S = 2.0
#: Seconds between probes of the bucket's last revision.
DEFAULT_PROBE_INTERVAL_S = 0.25
#: Longest one probe, or one load of the whole bucket, may take, seconds.
DEFAULT_LOAD_TIMEOUT_S = 2.0
#: Seconds between attempts to load the bucket while it cannot be read.
DEFAULT_RETRY_INTERVAL_S = 0.25


class HaltFollower:
    """Applies the halt bucket to one engine; see the module docstring."""

    def __init__(
        self,
        nc: NatsClient,
        engine,
        *,
        gateway_id: str,
        reload_rules: Callable[[Sequence[LimitOverride]], object],
        on_cancel_all: Callable[[object], object],
        on_ready_change: Callable[[bool], object] | None = None,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        staleness_bound_s: float = DEFAULT_STALENESS_BOUND_S,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
        applied_heartbeat_s: float = DEFAULT_APPLIED_HEARTBEAT_S,
    ) -> None:
        """``nc``: a connected NATS client that reconnects forever (``allow_reconnect=True,
        max_reconnect_attempts=-1``); ``gateway_id``: whom the ``HaltsApplied`` reports
        speak for; ``clock``: Unix epoch ns, for override expiry; ``monotonic``: seconds,
        for staleness."""
        self._nc = nc
        self._gateway_id = gateway_id
        self._applied_subject = applied_subject(gateway_id)
        self._applied_heartbeat_s = applied_heartbeat_s
        self._js = nc.jetstream(timeout=load_timeout_s)
        self._engine = engine
        self._reload_rules = reload_rules
        self._on_cancel_all = on_cancel_all
        self._on_ready_change = on_ready_change
        self._clock = clock
        self._monotonic = monotonic
        self._staleness_bound_s = staleness_bound_s
        self._probe_interval_s = probe_interval_s
        self._load_timeout_s = load_timeout_s
        self._retry_interval_s = retry_interval_s

        self._ready = False
        self._stopping = False
        self._states: dict[str, halts_pb2.HaltState] = {}  # state key -> record applied
        self._overrides: dict[str, halts_pb2.Override] = {}  # override key -> record
        self._applied_overrides: tuple[LimitOverride, ...] = ()
        self._rejected_overrides: set[str] = set()  # ids this gateway's rules refused
        self._seen_kills: set[str] = set()
        self._seen_revision = 0
        #: Set, then replaced, whenever _seen_revision moves (wakes wait_applied).
        self._revision_moved = asyncio.Event()
        self._confirmed_at = 0.0
        self._needs_reload = False  # set when the watch delivered something unreadable
        self._reconnects_seen = 0
        self._kv = None
        self._watcher = None
        self._watch_task: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None
        self._reload_task: asyncio.Task | None = None
        self._reload_wanted = False
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._side_tasks: set[asyncio.Task] = set()

    # -- what the gateway reads ----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether orders may pass: the halt state is loaded and known to be current."""
        return self._ready

    @property
    def limit_overrides(self) -> tuple[LimitOverride, ...]:
        """The overrides last handed to ``reload_rules``: pass them to every other rules
        reload (SIGHUP, AdminService.ReloadRules) so that a reload does not drop them."""
        return self._applied_overrides

    def trading_states(self) -> dict[tuple[Scope, str], TradingState]:
        """The states applied to the engine that are not ACTIVE, by (scope, name)."""
        applied = {}
        for record in self._states.values():
            state = state_from_proto(record.state)
            if state not in (None, TradingState.ACTIVE):
                applied[scope_from_proto(record.scope), record.name] = state
        return applied

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the whole bucket and apply it, retrying until that succeeds; then follow it."""
        while True:
            try:
                await self._load(replay_kills=False)
                break
            except (HaltStoreUnavailableError, CorruptRecordError) as exc:
                log.warning("halt state not loaded yet (orders stay blocked), retrying: %s", exc)
                await asyncio.sleep(self._retry_interval_s)
        self._reconnects_seen = self._nc.stats["reconnects"]
        self._supervisor = asyncio.create_task(self._supervise(), name="halt-follower-supervisor")
        self._heartbeat = asyncio.create_task(self._heartbeat_forever(), name="halt-follower-heartbeat")

    async def stop(self) -> None:
        """Stop following: ``ready`` turns False (without calling ``on_ready_change``: the
        gateway is shutting down). Waits at most ``load_timeout_s`` for the background tasks
        to end."""
        self._stopping = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        tasks = [
            task
            for task in (
                self._supervisor,
                self._heartbeat,
                self._watch_task,
                self._reload_task,
                *self._side_tasks,
            )
            if task is not None and not task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            _, still_running = await asyncio.wait(tasks, timeout=self._load_timeout_s)
            for task in still_running:
                log.warning("halt follower task %s did not stop in time", task.get_name())
        self._watch_task = None
        await self._stop_watcher()
        self._ready = False

    # -- loading and watching ------------------------------------------------------------------
    async def _load(self, *, replay_kills: bool) -> None:
        """Read every key with a fresh watch, apply the snapshot, then keep the watch
        running for changes. Raises HaltStoreUnavailableError / CorruptRecordError."""
        await self._stop_watcher()
        try:
            if self._kv is None:
                self._kv = await open_bucket(self._js, timeout_s=self._load_timeout_s)
            watcher = await asyncio.wait_for(self._kv.watchall(), self._load_timeout_s)
        except NATS_ERRORS as exc:
            raise HaltStoreUnavailableError(f"cannot watch the {HALTS_BUCKET} bucket: {exc!r}") from None
        states: dict[str, halts_pb2.HaltState] = {}
        overrides: dict[str, halts_pb2.Override] = {}
        revision = 0
        try:
            while True:
                try:
                    entry = await watcher.updates(self._load_timeout_s)
                except NATS_ERRORS as exc:
                    raise HaltStoreUnavailableError(
                        f"cannot read the {HALTS_BUCKET} bucket: {exc!r}"
                    ) from None
                if entry is None:
                    break
                revision = max(revision, entry.revision)
                kind = key_kind(entry.key)
                if is_removal(entry) or kind not in (STATE_KEY_PREFIX, OVERRIDE_KEY_PREFIX):
                    continue
                record = decode_record(entry.key, entry.value)
                if kind == STATE_KEY_PREFIX:
                    states[entry.key] = _checked_state(entry.key, record)
                else:
                    overrides[entry.key] = record
        except BaseException:
            with contextlib.suppress(*NATS_ERRORS):
                await watcher.stop()
            raise

        for key in self._states.keys() - states.keys():
            self._apply_state(key, None)
        for key, record in sorted(states.items()):
            self._apply_state(key, record, replay_kill=replay_kills)
        self._overrides = overrides
        self._overrides_changed()
        self._watcher = watcher
        self._revision_applied(revision)
        self._confirmed_at = self._monotonic()
        self._needs_reload = False
        self._watch_task = asyncio.create_task(self._watch(watcher), name="halt-follower-watch")
        self._set_ready(True)
        await self._announce()
        log.info(
            "halt state loaded: %d scope(s) not ACTIVE, %d override(s) in force",
            len(self.trading_states()),
            len(self._applied_overrides),
        )

    async def _watch(self, watcher) -> None:
        """Apply each change the watch delivers. A corrupt state or override fails closed."""
        async for entry in watcher:
            if entry is None:
                continue
            try:
                self._apply_entry(entry)
            finally:
                self._revision_applied(max(self._seen_revision, entry.revision))
            await self._announce()

    def _apply_entry(self, entry) -> None:
        kind = key_kind(entry.key)
        try:
            if kind == STATE_KEY_PREFIX:
                record = None if is_removal(entry) else decode_record(entry.key, entry.value)
                self._apply_state(entry.key, record, replay_kill=True)
            elif kind == OVERRIDE_KEY_PREFIX:
                if is_removal(entry):
                    self._overrides.pop(entry.key, None)
                else:
                    self._overrides[entry.key] = decode_record(entry.key, entry.value)
                self._overrides_changed()
        except CorruptRecordError as exc:
            log.error("halt state unreadable, failing closed until it is fixed: %s", exc)
            self._set_ready(False)
            self._needs_reload = True

    def _revision_applied(self, revision: int) -> None:
        """The bucket is applied through ``revision`` (lower only after a reload found a
        recreated bucket): record it and wake :meth:`wait_applied`."""
        self._seen_revision = revision
        self._revision_moved.set()
        self._revision_moved = asyncio.Event()

    async def wait_applied(self, revision: int, timeout_s: float) -> bool:
        """Wait until this follower has applied the bucket through ``revision``; False if
        that took longer than ``timeout_s``. A halt manager in the same process waits on it
        after each write, so that its RPC returns once its own gateway enforces the change
        (``HaltManager.wait_applied_locally``)."""
        return await wait_until(lambda: self._seen_revision >= revision, lambda: self._revision_moved, timeout_s)

    async def _announce(self) -> None:
        """Tell the halt managers what this gateway enforces (see the module docstring)."""
        if not self._nc.is_connected:
            return
        applied = halts_pb2.HaltsApplied(
            gateway_id=self._gateway_id, revision=self._seen_revision, ready=self._ready, at_ns=self._clock()
        )
        try:
            await self._nc.publish(self._applied_subject, applied.SerializeToString())
        except NATS_ERRORS as exc:
            log.debug("halt applied report not sent: %r", exc)

    async def _heartbeat_forever(self) -> None:
        """Report every ``applied_heartbeat_s``, on a task of its own: the supervisor's probe
        or reload can take seconds over a slow link, and a silent gateway drops out of the
        manager's picture."""
        while True:
            await asyncio.sleep(self._applied_heartbeat_s)
            await self._announce()

    async def _stop_watcher(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
            self._watch_task = None
        if self._watcher is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._watcher.stop()
            self._watcher = None

    # -- applying ------------------------------------------------------------------------------
    def _apply_state(self, key: str, record: halts_pb2.HaltState | None, *, replay_kill: bool = True) -> None:
        """Set the engine's state for a key (None: the key is gone, so ACTIVE)."""
        previous = self._states.get(key)
        if record is None:
            if previous is None:
                return
            record = halts_pb2.HaltState()
            record.CopyFrom(previous)
            record.state = state_to_proto(TradingState.ACTIVE)
            record.cancel_all = False
        _checked_state(key, record)
        scope = scope_from_proto(record.scope)
        state = state_from_proto(record.state)
        self._engine.set_trading_state(scope, record.name, state)
        self._states[key] = record
        changed = previous.request_id != record.request_id if previous else state != TradingState.ACTIVE
        if changed:
            label = scope_label(scope, record.name)
            log.warning("trading state %s -> %s (%s by %s)", label, state.name, record.reason, record.set_by)
        if record.cancel_all and record.request_id not in self._seen_kills:
            self._seen_kills.add(record.request_id)
            if replay_kill:
                self._spawn(self._on_cancel_all, control_message(record))

    def _overrides_changed(self) -> None:
        """Reload the rules if the set of overrides in force changed; arm the timer for the
        next expiry."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        now = self._clock()
        if self._wanted_overrides(now) != self._applied_overrides:
            self._reload_wanted = True
            if self._reload_task is None or self._reload_task.done():
                self._reload_task = asyncio.create_task(
                    self._reload_until_current(), name="halt-follower-reload"
                )
        in_force = overrides_in_force(self._overrides.values(), now)
        if in_force:
            delay_s = max(0.0, (min(record.expires_ns for record in in_force) - now) / NS_PER_S)
            self._expiry_timer = asyncio.get_running_loop().call_later(delay_s, self.expire_overrides)

    def _wanted_overrides(self, now_ns: int) -> tuple[LimitOverride, ...]:
        """The overrides in force at ``now_ns`` that this gateway's rules accept, oldest first."""
        return tuple(
            limit_override(record)
            for record in overrides_in_force(self._overrides.values(), now_ns)
            if record.override_id not in self._rejected_overrides
        )

    def expire_overrides(self) -> None:
        """Drop the overrides whose expiry has passed by ``clock`` (the timer calls this;
        tests with a fake clock call it directly)."""
        self._overrides_changed()

    async def _reload_until_current(self) -> None:
        """Hand ``reload_rules`` the overrides in force, again until it has the latest set."""
        while self._reload_wanted:
            self._reload_wanted = False
            wanted = self._wanted_overrides(self._clock())
            try:
                await _call(self._reload_rules, wanted)
            except RulesError as exc:
                refused = next((override for override in wanted if override.source == exc.source), None)
                if refused is None:
                    log.error("rules reload failed, keeping the previous rules: %s", exc)
                else:
                    log.error("override %s refused by these rules, left out: %s", refused.override_id, exc)
                    self._rejected_overrides.add(refused.override_id)
                    self._reload_wanted = True
                continue
            except Exception:
                log.exception("rules reload failed, keeping the previous rules")
                continue
            self._applied_overrides = wanted
            in_force = ", ".join(override.override_id for override in wanted) or "none"
            log.warning("rules reloaded with the overrides in force: %s", in_force)

    def _spawn(self, hook: Callable, argument: object) -> None:
        task = asyncio.create_task(_call(hook, argument))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("halt hook failed", exc_info=task.exception())

    def _set_ready(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        if ready:
            log.warning("halt state is current: orders may pass")
        else:
            log.error("halt state is not current: every order is rejected (HALT_STATE_UNAVAILABLE)")
        if self._on_ready_change is not None:
            self._spawn(self._on_ready_change, ready)

    # -- staying current -----------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Probe, fail closed when not confirmed current within the bound, and reload."""
        while not self._stopping:
            await asyncio.sleep(self._probe_interval_s)
            reconnects = self._nc.stats["reconnects"]
            if reconnects != self._reconnects_seen and self._nc.is_connected:
                self._reconnects_seen = reconnects
                log.warning("NATS reconnected: reloading the halt state")
                await self._try_reload()
                continue
            await self._probe()
            if self._needs_reload or self._monotonic() - self._confirmed_at > self._staleness_bound_s:
                self._set_ready(False)
                await self._try_reload()

    async def _probe(self) -> None:
        """Confirm currency: the bucket's last revision is one the watch has delivered."""
        try:
            info = await asyncio.wait_for(self._js.stream_info(HALTS_BUCKET_STREAM), self._load_timeout_s)
        except NATS_ERRORS:
            return
        watching = self._watch_task is not None and not self._watch_task.done()
        if watching and info.state.last_seq <= self._seen_revision:
            self._confirmed_at = self._monotonic()

    async def _try_reload(self) -> None:
        try:
            await self._load(replay_kills=True)
        except (HaltStoreUnavailableError, CorruptRecordError) as exc:
            log.error("halt state reload failed (orders stay blocked): %s", exc)


def _checked_state(key: str, record: halts_pb2.HaltState) -> halts_pb2.HaltState:
    """``record``, or CorruptRecordError when its scope or state is not one the kernel knows."""
    if scope_from_proto(record.scope) is None or state_from_proto(record.state) is None:
        raise CorruptRecordError(f"KV key {key!r} holds scope {record.scope} / state {record.state}")
    return record


async def _call(hook: Callable, argument: object) -> object:
    """Call a hook that may be a plain function or a coroutine function."""
    result = hook(argument)
    if inspect.isawaitable(result):
        return await result
    return result
