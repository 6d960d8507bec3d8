"""Byte buffers of a connection, kept as chunks so that bulk data is copied as little as possible.

A ``bytearray`` consumed from the front and appended at the back copies its whole live content
whenever it outgrows its allocation or shrinks below half of it (CPython's ``PyByteArray_Resize``
after a front deletion), and touches fresh pages each time: at 64 KiB segments (TSO, GRO, large
MTUs) that was the largest cost of a bulk transfer. Here the bytes objects the application and the
parser already made are kept as they are:

* :class:`SendBuffer` holds the application's data from ``snd_una`` on: one copy per ``send``,
  none when the application hands over an immutable ``bytes`` object (directly or through a
  read-only memoryview, as ``send_all`` does), which is then referenced until acknowledged;
  a segment's payload is a slice of one chunk (or the chunk itself), a join only when it spans
  two. With :attr:`SendBuffer.views` set (by a consumer that builds each segment into a packet
  at once, as the stack does) the slice is a read-only ``memoryview``, so the packet build is
  the payload's only copy on the send side.
* :class:`ReceiveQueue` holds in-order received data; delivering a segment's payload stores the
  bytes object without copying; a read returns a chunk as it is when it is asked for whole.

Both keep their chunks in a list with a moving head index (a deque keeps a 64-slot block even
when empty, which idle connections cannot afford) and compact it when the dead head dominates.
An empty buffer holds no list of its own but the shared :data:`_NO_DATA`, which is never added
to: most connections are idle most of the time, and each list is one more object for the
allocator on every connect and accept, and for the garbage collector to walk for as long as the
connection lives.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import cast

__all__ = ["SendBuffer", "ReceiveQueue", "as_payload"]

# Appends smaller than this are merged into the last chunk (bounded copy), so many small sends
# do not make many tiny chunks that every segment would have to join.
_MERGE_LIMIT = 4096
_COMPACT_AT = 32  # dead head entries before the lists are compacted
# The chunk (and chunk-start) list of every empty buffer: replaced by a list of the buffer's own
# before anything is added, so it stays empty.
_NO_DATA: list = []  # shared by chunk lists of any element type, so left unparametrised


class SendBuffer:
    """Bytes from ``start`` (snd_una's first data byte) to ``end`` (the write sequence).

    Bounded by ``capacity``: :meth:`append` accepts what fits (the application sees
    backpressure). The bytes stay until cumulatively acknowledged (for retransmission).
    """

    __slots__ = ("capacity", "start", "views", "_end", "_chunks", "_starts", "_head")

    def __init__(self, capacity: int, start: int) -> None:
        self.capacity = capacity
        #: :meth:`payload` may return read-only views of the chunks instead of bytes copies.
        self.views = False
        self.start = start
        self._end = start
        self._chunks: list[bytes | memoryview] = _NO_DATA
        self._starts: list[int] = _NO_DATA  # sequence number of each chunk's first byte
        self._head = 0

    def __len__(self) -> int:
        return self._end - self.start

    @property
    def end(self) -> int:
        return self._end

    @property
    def space(self) -> int:
        return max(self.capacity - (self._end - self.start), 0)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        n = min(len(data), self.capacity - (self._end - self.start))
        if n <= 0:
            return 0
        chunks = self._chunks
        if n < _MERGE_LIMIT and len(chunks) > self._head and len(chunks[-1]) < _MERGE_LIMIT:
            chunks[-1] = bytes(chunks[-1]) + (data[:n] if n < len(data) else data)
        else:
            chunk: bytes | memoryview
            if type(data) is bytes:
                # Immutable: kept as it is (a slice is one copy of what fits).
                chunk = data if n == len(data) else data[:n]
            elif type(data) is memoryview and data.readonly and type(data.obj) is bytes:
                # A view of an immutable bytes object: reference it, no copy.
                chunk = data[:n] if n < len(data) else data
            else:
                # A mutable buffer the application may reuse once send() returns: copy.
                chunk = bytes(data[:n] if n < len(data) else data)
            if chunks is _NO_DATA:
                chunks = self._chunks = []
                self._starts = []
            chunks.append(chunk)
            self._starts.append(self._end)
        self._end += n
        return n

    def _locate(self, seq: int, length: int) -> tuple[int, int, int]:
        """(chunk index, offset in it, length clipped at ``end``) of ``length`` bytes at ``seq``;
        the index is meaningless when the clipped length is 0."""
        if seq < self.start:
            raise ValueError(f"{seq} is below the send buffer's start {self.start}")
        length = min(length, self._end - seq)
        if length <= 0:
            return 0, 0, 0
        starts = self._starts
        i = bisect_right(starts, seq, lo=self._head) - 1
        return i, seq - starts[i], length

    def data(self, seq: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``seq`` (``start <= seq``), fewer past ``end``."""
        i, off, length = self._locate(seq, length)
        if length == 0:
            return b""
        chunks = self._chunks
        chunk = chunks[i]
        if off + length <= len(chunk):
            if off == 0 and length == len(chunk) and type(chunk) is bytes:
                return chunk
            return bytes(chunk[off : off + length])
        parts = [chunk[off:]]
        got = len(chunk) - off
        while got < length:
            i += 1
            chunk = chunks[i]
            take = min(len(chunk), length - got)
            parts.append(chunk if take == len(chunk) else chunk[:take])
            got += take
        return b"".join(parts)

    def payload(self, seq: int, length: int) -> bytes | memoryview:
        """A segment's payload: :meth:`data`, or without copying when :attr:`views` is set.

        A view is read-only and refers to an immutable object (a ``bytes`` chunk or the
        application's ``bytes`` behind a read-only view), so it reads the same bytes for as
        long as it lives, acknowledged or not. A range spanning chunks is joined.
        """
        if not self.views:
            return self.data(seq, length)
        i, off, length = self._locate(seq, length)
        if length == 0:
            return b""
        chunk = self._chunks[i]
        if off + length > len(chunk):
            return self.data(seq, length)
        if off == 0 and length == len(chunk):
            return chunk
        if type(chunk) is bytes:
            return memoryview(chunk)[off : off + length]
        return chunk[off : off + length]

    def ack_to(self, seq: int) -> int:
        """Drop bytes below ``seq``; return how many were dropped."""
        n = (seq if seq < self._end else self._end) - self.start
        if n <= 0:
            return 0
        self.start += n
        chunks, starts = self._chunks, self._starts
        head = self._head
        count = len(chunks)
        # Whole chunks below the new start leave; a chunk cut in two stays until passed.
        while head < count:
            chunk_end = starts[head + 1] if head + 1 < count else self._end
            if chunk_end > self.start:
                break
            chunks[head] = b""
            head += 1
        if head >= count:
            self._chunks = self._starts = _NO_DATA
            head = 0
        elif head >= _COMPACT_AT and head * 2 > len(chunks):
            del chunks[:head]
            del starts[:head]
            head = 0
        self._head = head
        return n

    def rebase(self, start: int) -> None:
        """Empty buffer only: set where the data sequence starts (after our SYN)."""
        if self._end != self.start:
            raise ValueError("rebase of a send buffer that holds data")
        self.start = self._end = start


def as_payload(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as a segment's payload: a read-only view is kept (see :meth:`SendBuffer.payload`),
    anything mutable is copied.

    ``TcpSegment.payload`` is ``bytes`` to its readers; a read-only view of immutable bytes
    offers the same reads (``len``, slicing, comparison, the buffer protocol the codec uses), so
    it is typed as such here, in the one place it is let through.
    """
    if type(data) is memoryview and data.readonly and type(data.obj) is bytes:
        return cast(bytes, data)
    return bytes(data)


class ReceiveQueue:
    """In-order received bytes waiting for the application, as the payload objects arrived."""

    __slots__ = ("_chunks", "_head", "_off", "_len")

    def __init__(self) -> None:
        self._chunks: list[bytes] = _NO_DATA
        self._head = 0
        self._off = 0  # bytes of the head chunk already read
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def append(self, data: bytes) -> None:
        if data:
            if type(data) is not bytes:
                data = bytes(data)  # a mutable buffer could change under the reader
            chunks = self._chunks
            if len(data) < _MERGE_LIMIT and len(chunks) > self._head and (
                len(chunks[-1]) < _MERGE_LIMIT
            ):
                chunks[-1] += data
            elif chunks is _NO_DATA:
                self._chunks = [data]
            else:
                chunks.append(data)
            self._len += len(data)

    def read(self, max_bytes: int) -> bytes:
        """Remove and return up to ``max_bytes`` from the front."""
        if max_bytes <= 0 or not self._len:
            return b""
        chunks = self._chunks
        i = self._head
        chunk = chunks[i]
        off = self._off
        avail = len(chunk) - off
        if max_bytes < avail:
            self._off = off + max_bytes
            self._len -= max_bytes
            return chunk[off : off + max_bytes]
        parts = [chunk[off:] if off else chunk]
        got = avail
        chunks[i] = b""
        i += 1
        n = len(chunks)
        while i < n and got < max_bytes:
            chunk = chunks[i]
            take = min(len(chunk), max_bytes - got)
            if take < len(chunk):
                parts.append(chunk[:take])
                self._off = take
                got += take
                break
            parts.append(chunk)
            chunks[i] = b""
            got += take
            i += 1
        else:
            self._off = 0
        self._len -= got
        if not self._len:
            self._chunks = _NO_DATA
            i = 0
            self._off = 0
        elif i >= _COMPACT_AT and i * 2 > len(chunks):
            del chunks[:i]
            i = 0
        self._head = i
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def peek(self, max_bytes: int) -> bytes:
        """The first ``max_bytes`` bytes, left in the queue (MSG_PEEK)."""
        parts: list[bytes] = []
        got = 0
        off = self._off
        for i in range(self._head, len(self._chunks)):
            if got >= max_bytes:
                break
            chunk = self._chunks[i]
            piece = chunk[off : off + max_bytes - got]
            off = 0
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def clear(self) -> None:
        self._chunks = _NO_DATA
        self._head = self._off = self._len = 0
