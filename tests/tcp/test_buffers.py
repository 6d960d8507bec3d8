"""Chunked send and receive buffers against a plain bytearray model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpstack.tcp.buffers import ReceiveQueue, SendBuffer, as_payload

START = (1 << 32) - 5000  # absolute sequence numbers past the 32-bit wrap
PATTERN = bytes(range(251)) * 100  # numbered bytes: a misplaced byte changes the content


def numbered(counter: int, n: int) -> bytes:
    off = counter % 251
    return PATTERN[off:off + n]


@settings(max_examples=150)
@given(st.lists(st.tuples(st.sampled_from(["append", "ack", "data"]),
                          st.integers(0, 20000), st.integers(0, 20000)), max_size=40),
       st.integers(1, 100_000))
def test_send_buffer_matches_a_bytearray(ops: list[tuple[str, int, int]], capacity: int) -> None:
    buf = SendBuffer(capacity, START)
    model = bytearray()
    start = START
    counter = 0
    for op, a, b in ops:
        if op == "append":
            data = numbered(counter, a)
            counter += a
            kind = (bytes, bytearray, memoryview)[b % 3]
            taken = buf.append(kind(data))
            assert taken == min(a, capacity - len(model))
            model += data[:taken]
        elif op == "ack":
            n = a % (len(model) + 1)
            assert buf.ack_to(start + n) == n
            del model[:n]
            start += n
        else:
            off = a % (len(model) + 1)
            assert buf.data(start + off, b) == bytes(model[off:off + b])
        assert len(buf) == len(model) and buf.start == start and buf.end == start + len(model)
        assert buf.space == capacity - len(model)


def test_send_buffer_keeps_a_whole_bytes_object_without_copying() -> None:
    buf = SendBuffer(1 << 20, START)
    chunk = bytes(range(256)) * 256
    assert buf.append(chunk) == len(chunk)
    assert buf.data(START, len(chunk)) is chunk
    # A read-only view of bytes (what send_all hands over) is referenced, not copied; a
    # mutable buffer is copied, so the application may reuse it at once.
    view_of = bytes(range(256)) * 40
    mutable = bytearray(b"m" * 5000)
    buf.append(memoryview(view_of)[100:])
    buf.append(mutable)
    mutable[:] = b"x" * 5000
    base = START + len(chunk)
    assert buf.data(base, 10) == view_of[100:110]
    assert buf.data(base + len(view_of) - 100, 5000) == b"m" * 5000
    assert buf.data(base + len(view_of) - 110, 20) == view_of[-10:] + b"m" * 10
    with pytest.raises(ValueError):
        buf.data(START - 1, 10)
    with pytest.raises(ValueError):
        buf.rebase(START + 5)


@settings(max_examples=150)
@given(st.lists(st.tuples(st.sampled_from(["append", "read", "peek"]), st.integers(0, 20000)),
                max_size=40))
def test_receive_queue_matches_a_bytearray(ops: list[tuple[str, int]]) -> None:
    q = ReceiveQueue()
    model = bytearray()
    counter = 0
    for op, a in ops:
        if op == "append":
            data = numbered(counter, a)
            counter += a
            q.append(data)
            model += data
        elif op == "read":
            assert q.read(a) == bytes(model[:a])
            del model[:a]
        else:
            assert q.peek(a) == bytes(model[:a])
        assert len(q) == len(model) and bool(q) == bool(model)


def test_receive_queue_returns_a_whole_payload_without_copying() -> None:
    q = ReceiveQueue()
    payload = bytes(65000)
    q.append(payload)
    assert q.read(1 << 20) is payload
    mutable = bytearray(b"abc")
    q.append(mutable)  # type: ignore[arg-type]
    mutable[0] = ord("x")
    assert q.read(10) == b"abc"


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["append", "ack", "payload"]),
                          st.integers(0, 20000), st.integers(0, 20000)), max_size=40))
def test_send_buffer_payload_views_read_as_data(ops: list[tuple[str, int, int]]) -> None:
    buf = SendBuffer(100_000, START)
    buf.views = True
    model = bytearray()
    start = START
    counter = 0
    for op, a, b in ops:
        if op == "append":
            data = numbered(counter, a)
            counter += a
            model += data[:buf.append((bytes, bytearray, memoryview)[b % 3](data))]
        elif op == "ack":
            n = a % (len(model) + 1)
            buf.ack_to(start + n)
            del model[:n]
            start += n
        else:
            off = a % (len(model) + 1)
            got = buf.payload(start + off, b)
            # A view is read-only and over an immutable object: it cannot change later.
            assert isinstance(got, bytes) or (got.readonly and type(got.obj) is bytes)
            assert got == bytes(model[off:off + b])


def test_send_buffer_payload_is_a_view_of_the_applications_bytes_not_a_copy() -> None:
    buf = SendBuffer(1 << 20, START)
    app = bytes(range(256)) * 512
    buf.append(memoryview(app))  # as send_all hands it over
    copied = buf.payload(START + 100, 1000)
    assert type(copied) is bytes  # views off: a copy, as data()
    buf.views = True
    view = buf.payload(START + 100, 1000)
    assert type(view) is memoryview and view.obj is app and view == app[100:1100]
    buf.append(b"tail" * 2000)  # a second chunk: a range across both is joined
    across = buf.payload(START + len(app) - 4, 8)
    assert type(across) is bytes and across == app[-4:] + b"tail"
    whole = bytes(5000)
    other = SendBuffer(1 << 20, START)
    other.views = True
    other.append(whole)
    assert other.payload(START, 5000) is whole


def test_as_payload_keeps_only_views_of_immutable_bytes() -> None:
    data = b"x" * 100
    view = memoryview(data)[10:20]
    assert as_payload(view) is view
    mutable = bytearray(b"y" * 100)
    outs = [as_payload(value)
            for value in (mutable, memoryview(mutable), memoryview(mutable).toreadonly())]
    mutable[0] = 0  # copies: they do not follow the application's buffer
    assert all(type(out) is bytes and out == b"y" * 100 for out in outs)
    assert as_payload(data) is data
