"""Type stubs of the compiled gateway.orderpath module (see orderpath.pyx)."""

from collections.abc import Callable, Iterable, Sequence

from gateway.orders import WireOrder

class DecisionCounters:
    bucket_bounds: tuple[float, ...]
    latency_sum_s: float
    accepted: int
    rejected: int
    failures_by_code: dict[str, int]

    def __init__(self, bucket_bounds: Iterable[float], codes: Iterable[str]) -> None: ...
    def observe(self, failure_codes: Sequence[str], latency_s: float) -> None: ...
    def bucket_counts(self) -> list[int]: ...

class WorkingOrder:
    key: tuple[str, str]
    handle: int
    remaining_nanos: int
    stream: object | None
    decision_sequence: int

class OrderPath:
    engine: object
    outbox: object
    publisher: object
    gateway_id: str
    working: dict[tuple[str, str], WorkingOrder]
    halt_state_available: bool

    def __init__(
        self,
        engine: object,
        outbox: object,
        publisher: object,
        gateway_id: str,
        metrics: object | None,
        clock: Callable[[], int],
        replies: object,
    ) -> None: ...
    @property
    def last_sequence(self) -> int: ...
    def decide(self, orders: Sequence[WireOrder], stream: object | None = None) -> list[bytes]: ...
    def rules_version_bytes(self) -> bytes: ...
