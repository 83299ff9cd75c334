"""asyncio client of the gateway, and :class:`OrderBatcher` for high order rates.

The batcher is what an adapter sending many orders wants: ``await batcher.submit(order)``
looks like a unary call, but orders submitted within ``max_delay_s`` of each other travel
together in one StreamOrders message (up to ``max_batch_size``), and each caller gets its
own decision back, matched by client_order_id.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence

import grpc

from clients.errors import DeadlineExceeded, GatewayError, GatewayUnavailable, error_from_rpc
from clients.sync_client import DEFAULT_TARGET, DEFAULT_TIMEOUT_S, auth_metadata, merged_channel_options
from pretrade.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2

#: Orders per StreamOrders message the batcher sends at most.
DEFAULT_BATCH_MAX_SIZE = 64
#: How long the batcher holds the first order of a batch waiting for more, seconds.
DEFAULT_BATCH_MAX_DELAY_S = 0.0005
#: How long :meth:`OrderBatcher.close` waits for outstanding decisions, seconds.
DEFAULT_BATCHER_CLOSE_TIMEOUT_S = 5.0


class AsyncGatewayClient:
    """``AsyncGatewayClient(target, token, timeout_s)``; ``async with`` it or ``await close()``.
    ``credentials`` and ``channel_options`` (merged over the SDK's reconnect backoff) and the
    fail-fast calls are as in :class:`clients.GatewayClient`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.metadata = auth_metadata(token)
        options = merged_channel_options(channel_options)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        self.gateway_stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._admin = gateway_pb2_grpc.AdminServiceStub(self._channel)

    async def _call(self, method, request, timeout_s: float | None):
        try:
            return await method(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    async def check_order(
        self, order: types_pb2.Order, *, timeout_s: float | None = None
    ) -> types_pb2.Decision:
        request = gateway_pb2.CheckOrderRequest(order=order)
        return (await self._call(self.gateway_stub.CheckOrder, request, timeout_s)).decision

    async def check_orders(
        self, orders: Sequence[types_pb2.Order], *, timeout_s: float | None = None
    ) -> list[types_pb2.Decision]:
        request = gateway_pb2.CheckOrdersRequest(orders=orders)
        return list((await self._call(self.gateway_stub.CheckOrders, request, timeout_s)).decisions)

    async def stream(
        self,
        requests: AsyncIterable[gateway_pb2.StreamOrdersRequest] | Iterable[gateway_pb2.StreamOrdersRequest],
        *,
        timeout_s: float | None = None,
    ) -> AsyncIterator[gateway_pb2.StreamOrdersResponse]:
        """StreamOrders: send ``requests``, yield decision batches and control messages.
        No deadline unless ``timeout_s`` is given (streams are long-lived)."""
        call = self.gateway_stub.StreamOrders(requests, timeout=timeout_s, metadata=self.metadata)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    async def report_executions(
        self, executions: Sequence[types_pb2.Execution], *, timeout_s: float | None = None
    ) -> list[gateway_pb2.ExecutionResult]:
        request = gateway_pb2.ReportExecutionsRequest(executions=executions)
        return list((await self._call(self.gateway_stub.ReportExecutions, request, timeout_s)).results)

    async def update_reference_prices(
        self, prices: Sequence[types_pb2.ReferencePrice], *, timeout_s: float | None = None
    ) -> gateway_pb2.UpdateReferencePricesResponse:
        request = gateway_pb2.UpdateReferencePricesRequest(prices=prices)
        return await self._call(self.gateway_stub.UpdateReferencePrices, request, timeout_s)

    async def reload_rules(
        self, path: str = "", *, timeout_s: float | None = None
    ) -> gateway_pb2.ReloadRulesResponse:
        return await self._call(self._admin.ReloadRules, gateway_pb2.ReloadRulesRequest(path=path), timeout_s)

    async def get_status(self, *, timeout_s: float | None = None) -> gateway_pb2.GetStatusResponse:
        return await self._call(self._admin.GetStatus, gateway_pb2.GetStatusRequest(), timeout_s)

    def batcher(self, **options) -> OrderBatcher:
        """An :class:`OrderBatcher` on this client (same options as its constructor)."""
        return OrderBatcher(self, **options)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


ControlHandler = Callable[[gateway_pb2.ControlMessage], object]


class OrderBatcher:
    """Coalesces submitted orders into StreamOrders batches on one stream.

    ``await submit(order)`` returns that order's Decision. A batch is sent when it holds
    ``max_batch_size`` orders or ``max_delay_s`` after its first order, whichever comes
    first. Control messages (e.g. CANCEL_ALL) go to ``on_control`` (a function or coroutine
    function). If the stream fails, every waiting ``submit`` raises the typed error; a
    malformed order (INVALID_ARGUMENT) ends the stream, so validate before submitting.
    Use ``async with client.batcher() as batcher:``.
    """

    def __init__(
        self,
        client: AsyncGatewayClient,
        *,
        max_batch_size: int = DEFAULT_BATCH_MAX_SIZE,
        max_delay_s: float = DEFAULT_BATCH_MAX_DELAY_S,
        cancel_on_disconnect: bool = False,
        on_control: ControlHandler | None = None,
        submit_timeout_s: float | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._client = client
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._cancel_on_disconnect = cancel_on_disconnect
        self._on_control = on_control
        self._submit_timeout_s = submit_timeout_s if submit_timeout_s is not None else client.timeout_s
        self._queue: asyncio.Queue[tuple[types_pb2.Order, asyncio.Future]] = asyncio.Queue()
        self._waiting: dict[str, deque[asyncio.Future]] = {}
        self._batch_ids = itertools.count(1)
        self._call = None
        self._sender: asyncio.Task | None = None
        self._receiver: asyncio.Task | None = None
        self._failure: GatewayError | None = None
        self._closing = False
        self._outstanding = 0  # submitted orders whose future is not resolved yet
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def failure(self) -> GatewayError | None:
        """The error that ended the stream (every later submit raises it), or None."""
        return self._failure

    async def start(self, timeout_s: float | None = None) -> None:
        """Open the stream and wait (up to ``timeout_s``, default the client's) until the
        gateway admitted it; a refusal (auth, overload) then surfaces as its typed error on
        the first ``submit`` rather than as a write racing the refusal."""
        self._call = self._client.gateway_stub.StreamOrders(metadata=self._client.metadata)
        self._receiver = asyncio.create_task(self._receive_decisions(), name="order-batcher-receive")
        try:
            await asyncio.wait_for(self._call.initial_metadata(), timeout_s or self._client.timeout_s)
        except TimeoutError:
            self._call.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
            raise DeadlineExceeded("the gateway did not admit the order stream in time") from None
        except grpc.RpcError:
            pass  # refused: the receiver records the typed error
        if self._call.done():
            await asyncio.gather(self._receiver, return_exceptions=True)
        self._sender = asyncio.create_task(self._send_batches(), name="order-batcher-send")

    async def submit(self, order: types_pb2.Order) -> types_pb2.Decision:
        """The decision for ``order``; raises the stream's typed error, or DeadlineExceeded
        after ``submit_timeout_s`` (retry with the same request_id to get the original)."""
        if self._failure is not None:
            raise self._failure
        if self._closing or self._call is None:
            raise GatewayUnavailable("the batcher is not running (start() it, or it was closed)")
        future = asyncio.get_running_loop().create_future()
        self._outstanding += 1
        self._idle.clear()
        future.add_done_callback(self._settled)
        self._queue.put_nowait((order, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._submit_timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"no decision for {order.client_order_id!r} within {self._submit_timeout_s} s"
            ) from None

    async def _next_batch(self) -> list[tuple[types_pb2.Order, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self._max_delay_s
        while len(batch) < self._max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _send_batches(self) -> None:
        first = True
        while True:
            batch = await self._next_batch()
            for order, future in batch:
                self._waiting.setdefault(order.client_order_id, deque()).append(future)
            request = gateway_pb2.StreamOrdersRequest(
                batch_id=next(self._batch_ids),
                orders=[order for order, _ in batch],
                cancel_on_disconnect=self._cancel_on_disconnect and first,
            )
            first = False
            try:
                await self._call.write(request)
            except (grpc.RpcError, asyncio.InvalidStateError):
                # The stream is over: the receiver learns why from its final status. Wait for
                # it, then fail this batch too (it may have been registered after the
                # receiver failed the others).
                await asyncio.wait([self._receiver])
                self._fail(self._failure or GatewayUnavailable("the order stream closed"))
                return

    async def _receive_decisions(self) -> None:
        try:
            async for response in self._call:
                if response.HasField("decisions"):
                    for decision in response.decisions.decisions:
                        waiters = self._waiting.get(decision.order.client_order_id)
                        if not waiters:
                            continue
                        future = waiters.popleft()
                        if not waiters:
                            del self._waiting[decision.order.client_order_id]
                        if not future.done():
                            future.set_result(decision)
                elif response.HasField("control") and self._on_control is not None:
                    outcome = self._on_control(response.control)
                    if inspect.isawaitable(outcome):
                        await outcome
        except grpc.RpcError as error:
            self._fail(error_from_rpc(error))
            return
        self._fail(GatewayUnavailable("the order stream ended before every decision arrived"))

    def _fail(self, error: GatewayError) -> None:
        """Fail every submit still waiting, and every later one."""
        if self._failure is None:
            self._failure = error
        for waiters in self._waiting.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(error)
        self._waiting.clear()
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(error)

    async def close(self, timeout_s: float = DEFAULT_BATCHER_CLOSE_TIMEOUT_S) -> None:
        """Send what is queued, wait up to ``timeout_s`` for the outstanding decisions, then
        close the stream (with cancel-on-disconnect, the gateway then releases this
        stream's working orders)."""
        if self._call is None or self._closing:
            return
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            pass
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)
        if self._failure is None:
            try:
                await self._call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError):
                pass
        try:
            await asyncio.wait_for(asyncio.shield(self._receiver), timeout_s)
        except TimeoutError:
            self._call.cancel()
        await asyncio.gather(self._receiver, return_exceptions=True)

    def _settled(self, future: asyncio.Future) -> None:
        if not future.cancelled():
            future.exception()  # retrieved here: a submit that timed out no longer awaits it
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    async def __aenter__(self) -> OrderBatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
