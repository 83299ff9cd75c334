"""Type stubs of the compiled gateway.wire module (see wire.pyx)."""

REPLAYED_SUFFIX: bytes

def encode_decision(
    verdict: int,
    failures: list[bytes],
    sequence: int,
    gateway_id: bytes,
    rules_version: bytes,
    received_ns: int,
    decided_ns: int,
    order: bytes,
    order_handle: int,
) -> bytes: ...
def check_order_response(decision: bytes) -> bytes: ...
def check_orders_response(decisions: list[bytes]) -> bytes: ...
def stream_orders_response(batch_id: int, decisions: list[bytes]) -> bytes: ...
