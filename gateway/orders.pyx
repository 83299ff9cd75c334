# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Orders read straight from the request bytes: the order path's input (gateway.wire is its output).

Why a reader beside the protobuf library
    Through upb an order costs a parse into a message object, then ~50 ns for each of the
    ~15 attribute reads the order path makes (validation, interning, bookkeeping), then a
    re-serialization for the decision's order echo: about 1.5 µs of the gateway's 3 µs
    in-process budget. :class:`OrderReader` parses a request once, validates each order on
    the way (the rules of :mod:`gateway.validation`) and hands out :class:`WireOrder`
    objects: C fields and ``str``, read for a few ns each, with the order's canonical
    serialization already made.

What it accepts, and what it leaves to the protobuf library
    Every encoding of these messages that protobuf's rules allow: fields in any order, a
    field repeated (the last occurrence wins), unknown fields of every wire type (skipped),
    a known field number with another wire type (an unknown field, as upb treats it). It
    returns ``None`` when a request is not one it can answer on the fast path: an order is
    not well-formed, the bytes are malformed (truncated, a bad varint, invalid UTF-8), or
    the rare legal case of a CheckOrderRequest whose ``order`` comes in several parts
    (protobuf merges those). The servicer then parses the request with the protobuf
    library and answers INVALID_ARGUMENT naming the fields (gateway.validation), so both
    paths agree by construction on what is well-formed; ``tests/gateway/test_orders.py``
    checks the reader against upb and the validator with hypothesis, on canonical and on
    mutated encodings.

The order echo (``WireOrder.encoded``)
    The ``Order`` re-encoded the way upb serializes it (fields in number order, default
    values omitted), from the fields read: unknown fields a client sent are not echoed.
    The decision records the order as the gateway understood it.

Field numbers mirror proto/pretrade/v1/types.proto and gateway.proto; a change there must
be made here too (the tests fail otherwise).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

from gateway.wire cimport put_bytes_field, put_varint_field, varint_size

# Wire types.
cdef enum:
    WIRE_VARINT = 0
    WIRE_FIXED64 = 1
    WIRE_LENGTH_DELIMITED = 2
    WIRE_START_GROUP = 3
    WIRE_END_GROUP = 4
    WIRE_FIXED32 = 5
    MAX_FIELD_NUMBER = 536_870_911  # 2**29 - 1
    MAX_GROUP_DEPTH = 64  # nesting of unknown groups skipped

cdef uint64_t MAX_TAG = 0xFFFFFFFF  # a tag is a uint32

# Field numbers of pretrade.v1.Order, and their canonical tags.
cdef enum:
    ORDER_CLIENT_ORDER_ID = 1
    ORDER_ACCOUNT = 2
    ORDER_STRATEGY = 3
    ORDER_SYMBOL = 4
    ORDER_SIDE = 5
    ORDER_ORDER_TYPE = 6
    ORDER_TIME_IN_FORCE = 7
    ORDER_QUANTITY_NANOS = 8
    ORDER_PRICE_NANOS = 9
    ORDER_REQUEST_ID = 10
    ORDER_TRACE_ID = 11
    TAG_SIDE = 0x28
    TAG_ORDER_TYPE = 0x30
    TAG_TIME_IN_FORCE = 0x38
    TAG_QUANTITY_NANOS = 0x40
    TAG_PRICE_NANOS = 0x48

# The order's text fields, in field-number order (index into OrderFields.text).
cdef enum:
    TEXT_CLIENT_ORDER_ID = 0
    TEXT_ACCOUNT = 1
    TEXT_STRATEGY = 2
    TEXT_SYMBOL = 3
    TEXT_REQUEST_ID = 4
    TEXT_TRACE_ID = 5
    N_TEXT_FIELDS = 6

# Request messages: CheckOrderRequest.order = 1, CheckOrdersRequest.orders = 1,
# StreamOrdersRequest.batch_id = 1, .orders = 2, .cancel_on_disconnect = 3.
cdef enum:
    CHECK_ORDER_ORDER = 1
    CHECK_ORDERS_ORDERS = 1
    STREAM_BATCH_ID = 1
    STREAM_ORDERS = 2
    STREAM_CANCEL_ON_DISCONNECT = 3

# Enum values the validator admits (pretrade.v1.Side, OrderType, TimeInForce).
cdef enum:
    SIDE_BUY = 1
    SIDE_SELL_SHORT = 3
    ORDER_TYPE_LIMIT = 1
    ORDER_TYPE_MARKET = 2
    TIME_IN_FORCE_MAX = 5  # UNSPECIFIED (0) .. GOOD_TILL_DATE (5)

# Canonical tags of the text fields (field number << 3 | WIRE_LENGTH_DELIMITED).
cdef uint8_t[N_TEXT_FIELDS] TEXT_TAGS
TEXT_TAGS[:] = [0x0A, 0x12, 0x1A, 0x22, 0x52, 0x5A]

cdef str EMPTY = ""


cdef struct Cursor:
    const uint8_t* at
    const uint8_t* end


cdef struct OrderFields:
    const uint8_t* text[N_TEXT_FIELDS]
    Py_ssize_t text_size[N_TEXT_FIELDS]
    int32_t side
    int32_t order_type
    int32_t time_in_force
    int64_t quantity_nanos
    int64_t price_nanos


cdef inline bint read_varint(Cursor* cursor, uint64_t* value) noexcept nogil:
    """A base-128 varint of at most 10 bytes (bits past 64 dropped, as upb does)."""
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef uint8_t byte
    while cursor.at < cursor.end and shift < 70:
        byte = cursor.at[0]
        cursor.at += 1
        result |= <uint64_t>(byte & 0x7F) << shift
        if byte < 0x80:
            value[0] = result
            return True
        shift += 7
    return False


cdef inline bint read_tag(Cursor* cursor, uint64_t* field_number, int* wire_type) noexcept nogil:
    cdef uint64_t tag
    if not read_varint(cursor, &tag) or tag > MAX_TAG:
        return False
    field_number[0] = tag >> 3
    wire_type[0] = tag & 7
    return 1 <= field_number[0] <= MAX_FIELD_NUMBER


cdef inline bint read_length(Cursor* cursor, const uint8_t** start, Py_ssize_t* size) noexcept nogil:
    """A length-delimited field's payload: ``start`` and ``size`` within the cursor's bytes."""
    cdef uint64_t length
    if not read_varint(cursor, &length) or length > <uint64_t>(cursor.end - cursor.at):
        return False
    start[0] = cursor.at
    size[0] = <Py_ssize_t>length
    cursor.at += length
    return True


cdef bint skip_field(Cursor* cursor, uint64_t field_number, int wire_type, int depth) noexcept nogil:
    """Step over the payload of a field nobody reads (an unknown field)."""
    cdef uint64_t ignored
    cdef const uint8_t* start
    cdef Py_ssize_t size
    cdef uint64_t inner_number
    cdef int inner_type
    if wire_type == WIRE_VARINT:
        return read_varint(cursor, &ignored)
    if wire_type == WIRE_FIXED64 or wire_type == WIRE_FIXED32:
        size = 8 if wire_type == WIRE_FIXED64 else 4
        if cursor.end - cursor.at < size:
            return False
        cursor.at += size
        return True
    if wire_type == WIRE_LENGTH_DELIMITED:
        return read_length(cursor, &start, &size)
    if wire_type == WIRE_START_GROUP and depth < MAX_GROUP_DEPTH:
        while read_tag(cursor, &inner_number, &inner_type):
            if inner_type == WIRE_END_GROUP:
                return inner_number == field_number
            if not skip_field(cursor, inner_number, inner_type, depth + 1):
                return False
    return False  # an END_GROUP with no group, wire types 6 and 7, or too deep


cdef bint read_order_fields(const uint8_t* start, Py_ssize_t size, OrderFields* fields) noexcept nogil:
    """Parse a serialized ``Order`` into ``fields``; False when the bytes are malformed."""
    cdef Cursor cursor
    cdef uint64_t field_number
    cdef int wire_type
    cdef uint64_t value
    cdef int text
    cursor.at = start
    cursor.end = start + size
    for text in range(N_TEXT_FIELDS):
        fields.text[text] = NULL
        fields.text_size[text] = 0
    fields.side = fields.order_type = fields.time_in_force = 0
    fields.quantity_nanos = fields.price_nanos = 0
    while cursor.at < cursor.end:
        if not read_tag(&cursor, &field_number, &wire_type):
            return False
        text = -1
        if wire_type == WIRE_LENGTH_DELIMITED:
            if field_number <= ORDER_SYMBOL:
                text = <int>field_number - 1
            elif field_number == ORDER_REQUEST_ID or field_number == ORDER_TRACE_ID:
                text = <int>field_number - ORDER_REQUEST_ID + TEXT_REQUEST_ID
            if text >= 0:
                if not read_length(&cursor, &fields.text[text], &fields.text_size[text]):
                    return False
                continue
        elif wire_type == WIRE_VARINT and ORDER_SIDE <= field_number <= ORDER_PRICE_NANOS:
            if not read_varint(&cursor, &value):
                return False
            if field_number == ORDER_SIDE:
                fields.side = <int32_t>value  # an int32 enum, truncated as upb does
            elif field_number == ORDER_ORDER_TYPE:
                fields.order_type = <int32_t>value
            elif field_number == ORDER_TIME_IN_FORCE:
                fields.time_in_force = <int32_t>value
            elif field_number == ORDER_QUANTITY_NANOS:
                fields.quantity_nanos = <int64_t>value
            else:
                fields.price_nanos = <int64_t>value
            continue
        if not skip_field(&cursor, field_number, wire_type, 0):
            return False
    return True


cdef inline bint scalars_well_formed(const OrderFields* fields) noexcept nogil:
    """The validator's rules for side, time in force, order type, quantity and price."""
    if not (SIDE_BUY <= fields.side <= SIDE_SELL_SHORT):
        return False
    if not (0 <= fields.time_in_force <= TIME_IN_FORCE_MAX) or fields.quantity_nanos <= 0:
        return False
    if fields.order_type == ORDER_TYPE_LIMIT:
        return fields.price_nanos > 0
    return fields.order_type == ORDER_TYPE_MARKET and fields.price_nanos == 0


cdef inline int ascii_printable(const uint8_t* data, Py_ssize_t size) noexcept nogil:
    """1: printable ASCII; 0: an ASCII control character; -1: not ASCII (ask Python)."""
    cdef Py_ssize_t i
    cdef uint8_t byte
    for i in range(size):
        byte = data[i]
        if byte >= 0x80:
            return -1
        if byte < 0x20 or byte == 0x7F:
            return 0
    return 1


cdef object read_text(const uint8_t* data, Py_ssize_t size, Py_ssize_t max_length):
    """The field as ``str`` if it is valid UTF-8, printable and at most ``max_length``
    characters; None otherwise (the validator explains which)."""
    if size == 0:
        return EMPTY
    cdef int ascii = ascii_printable(data, size)
    if ascii == 0 or (ascii == 1 and size > max_length):
        return None
    cdef str text
    try:
        text = PyUnicode_DecodeUTF8(<const char*>data, size, NULL)
    except UnicodeDecodeError:
        return None
    if ascii == -1 and (len(text) > max_length or not text.isprintable()):
        return None
    return text


cdef class WireOrder:
    """A well-formed order read from its wire bytes (see the module docstring).

    Only :class:`OrderReader` makes them, and only from orders that pass the validator's
    rules, so everything downstream may rely on that.
    """

    def __init__(self):
        raise TypeError("WireOrder objects are made by OrderReader")

    def __repr__(self):
        return (
            f"WireOrder(client_order_id={self.client_order_id!r}, account={self.account!r}, "
            f"symbol={self.symbol!r}, side={self.side}, order_type={self.order_type}, "
            f"quantity_nanos={self.quantity_nanos}, price_nanos={self.price_nanos})"
        )


cdef bytes encode_order(const OrderFields* fields):
    """The canonical serialization of the order (upb's: number order, defaults omitted)."""
    cdef Py_ssize_t size = 0
    cdef int text
    for text in range(N_TEXT_FIELDS):
        if fields.text_size[text]:
            size += 1 + varint_size(<uint64_t>fields.text_size[text]) + fields.text_size[text]
    # side, order type and quantity are never 0 in a well-formed order
    size += 3 + varint_size(<uint64_t><int64_t>fields.side) + varint_size(<uint64_t><int64_t>fields.order_type)
    size += varint_size(<uint64_t>fields.quantity_nanos)
    if fields.time_in_force:
        size += 1 + varint_size(<uint64_t><int64_t>fields.time_in_force)
    if fields.price_nanos:
        size += 1 + varint_size(<uint64_t>fields.price_nanos)
    cdef bytes encoded = PyBytes_FromStringAndSize(NULL, size)
    cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(encoded)
    cdef Py_ssize_t n = 0
    for text in range(TEXT_REQUEST_ID):
        if fields.text_size[text]:
            n += put_bytes_field(out + n, TEXT_TAGS[text], <const char*>fields.text[text], fields.text_size[text])
    n += put_varint_field(out + n, TAG_SIDE, <uint64_t><int64_t>fields.side)
    n += put_varint_field(out + n, TAG_ORDER_TYPE, <uint64_t><int64_t>fields.order_type)
    if fields.time_in_force:
        n += put_varint_field(out + n, TAG_TIME_IN_FORCE, <uint64_t><int64_t>fields.time_in_force)
    n += put_varint_field(out + n, TAG_QUANTITY_NANOS, <uint64_t>fields.quantity_nanos)
    if fields.price_nanos:
        n += put_varint_field(out + n, TAG_PRICE_NANOS, <uint64_t>fields.price_nanos)
    for text in range(TEXT_REQUEST_ID, N_TEXT_FIELDS):
        if fields.text_size[text]:
            n += put_bytes_field(out + n, TEXT_TAGS[text], <const char*>fields.text[text], fields.text_size[text])
    return encoded


cdef class StreamBatch:
    """One StreamOrdersRequest read: its batch id, cancel-on-disconnect flag and orders."""

    def __init__(self):
        raise TypeError("StreamBatch objects are made by OrderReader")


cdef class OrderReader:
    """Reads the order requests of GatewayService into :class:`WireOrder` objects, applying
    the validator's size limits (a :class:`gateway.validation.ValidationLimits`)."""

    def __init__(self, limits):
        self.max_name_length = limits.max_name_length
        self.max_trace_id_length = limits.max_trace_id_length
        self.max_batch_orders = limits.max_batch_orders

    cdef WireOrder read_order(self, const uint8_t* data, Py_ssize_t size):
        cdef OrderFields fields
        if not read_order_fields(data, size, &fields) or not scalars_well_formed(&fields):
            return None
        if not (
            fields.text_size[TEXT_CLIENT_ORDER_ID] and fields.text_size[TEXT_ACCOUNT] and fields.text_size[TEXT_SYMBOL]
        ):
            return None
        cdef Py_ssize_t max_name = self.max_name_length
        cdef WireOrder order = WireOrder.__new__(WireOrder)
        order.client_order_id = read_text(fields.text[TEXT_CLIENT_ORDER_ID], fields.text_size[TEXT_CLIENT_ORDER_ID], max_name)
        order.account = read_text(fields.text[TEXT_ACCOUNT], fields.text_size[TEXT_ACCOUNT], max_name)
        order.strategy = read_text(fields.text[TEXT_STRATEGY], fields.text_size[TEXT_STRATEGY], max_name)
        order.symbol = read_text(fields.text[TEXT_SYMBOL], fields.text_size[TEXT_SYMBOL], max_name)
        order.request_id = read_text(fields.text[TEXT_REQUEST_ID], fields.text_size[TEXT_REQUEST_ID], max_name)
        order.trace_id = read_text(
            fields.text[TEXT_TRACE_ID], fields.text_size[TEXT_TRACE_ID], self.max_trace_id_length
        )
        if (
            order.client_order_id is None or order.account is None or order.strategy is None
            or order.symbol is None or order.request_id is None or order.trace_id is None
        ):
            return None
        order.side = fields.side
        order.order_type = fields.order_type
        order.time_in_force = fields.time_in_force
        order.quantity_nanos = fields.quantity_nanos
        order.price_nanos = fields.price_nanos
        order.encoded = encode_order(&fields)
        return order

    cdef list read_repeated_orders(self, bytes request, uint64_t orders_field, StreamBatch batch):
        """Every order of a CheckOrdersRequest (``batch`` None) or StreamOrdersRequest, in
        order; None unless all are well-formed and there are at most max_batch_orders."""
        cdef Cursor cursor
        cdef uint64_t field_number
        cdef int wire_type
        cdef uint64_t value
        cdef const uint8_t* start
        cdef Py_ssize_t size
        cdef WireOrder order
        cdef list orders = []
        cursor.at = <const uint8_t*>PyBytes_AS_STRING(request)
        cursor.end = cursor.at + PyBytes_GET_SIZE(request)
        while cursor.at < cursor.end:
            if not read_tag(&cursor, &field_number, &wire_type):
                return None
            if field_number == orders_field and wire_type == WIRE_LENGTH_DELIMITED:
                if not read_length(&cursor, &start, &size) or len(orders) == self.max_batch_orders:
                    return None
                order = self.read_order(start, size)
                if order is None:
                    return None
                orders.append(order)
            elif batch is not None and wire_type == WIRE_VARINT and (
                field_number == STREAM_BATCH_ID or field_number == STREAM_CANCEL_ON_DISCONNECT
            ):
                if not read_varint(&cursor, &value):
                    return None
                if field_number == STREAM_BATCH_ID:
                    batch.batch_id = value
                else:
                    batch.cancel_on_disconnect = value != 0
            elif not skip_field(&cursor, field_number, wire_type, 0):
                return None
        return orders

    def check_order_request(self, bytes request):
        """The order of a serialized CheckOrderRequest, or None (see the module docstring)."""
        cdef Cursor cursor
        cdef uint64_t field_number
        cdef int wire_type
        cdef const uint8_t* start = NULL
        cdef const uint8_t* part
        cdef Py_ssize_t size = 0
        cdef Py_ssize_t part_size
        cursor.at = <const uint8_t*>PyBytes_AS_STRING(request)
        cursor.end = cursor.at + PyBytes_GET_SIZE(request)
        while cursor.at < cursor.end:
            if not read_tag(&cursor, &field_number, &wire_type):
                return None
            if field_number == CHECK_ORDER_ORDER and wire_type == WIRE_LENGTH_DELIMITED:
                if start != NULL or not read_length(&cursor, &part, &part_size):
                    return None  # an order in several parts is merged by the library
                start, size = part, part_size
            elif not skip_field(&cursor, field_number, wire_type, 0):
                return None
        if start == NULL:
            return None
        return self.read_order(start, size)

    def check_orders_request(self, bytes request):
        """The orders of a serialized CheckOrdersRequest, or None."""
        return self.read_repeated_orders(request, CHECK_ORDERS_ORDERS, None)

    def stream_orders_request(self, bytes request):
        """A serialized StreamOrdersRequest as a :class:`StreamBatch`, or None."""
        cdef StreamBatch batch = StreamBatch.__new__(StreamBatch)
        batch.batch_id = 0
        batch.cancel_on_disconnect = False
        batch.orders = self.read_repeated_orders(request, STREAM_ORDERS, batch)
        return batch if batch.orders is not None else None

    def order(self, bytes serialized):
        """A serialized ``Order`` as a :class:`WireOrder`, or None if it is not well-formed."""
        return self.read_order(<const uint8_t*>PyBytes_AS_STRING(serialized), PyBytes_GET_SIZE(serialized))
