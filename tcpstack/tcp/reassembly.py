"""The receiver's out-of-order queue: reassembly, SACK block generation, D-SACK ranges.

Sequence numbers are absolute (unwrapped) integers. The queue holds disjoint, non-adjacent
ranges ``[start, end)`` of bytes above ``rcv_nxt``; each range keeps its bytes as a list of
pieces so that coalescing and filling holes never copy held data (one join when the range is
handed to the application). Ranges are few (bounded by ``max_ranges``), so a sorted list with
``bisect`` is the right structure.

Overlap policy: bytes already held win, only the missing bytes of an arriving segment are
stored. That is byte-for-byte correct whatever the overlap pattern (RFC 9293 section 3.10.7.4
lets the receiver trim either way; Linux keeps the older data too), and the part that was already
held is reported as a duplicate for D-SACK (RFC 2883).

Bounds: when an arrival would take the queue past ``max_bytes`` or ``max_ranges``, the highest
sequence numbers are dropped first, held data included, as Linux's ``tcp_prune_ofo_queue`` does:
the bytes nearest ``rcv_nxt`` are the ones that let the application make progress. The sender
keeps everything it has not had cumulatively acknowledged, so dropping SACKed data (reneging) is
legal (RFC 2018 section 8), merely costly.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right

import attrs

__all__ = ["AddResult", "NO_OOO", "ReassemblyQueue", "check_bounds"]


def check_bounds(max_bytes: int, max_ranges: int) -> None:
    """``ValueError`` unless a queue may be bounded so (a receiver checks its bounds when it is
    made, before the queue itself exists)."""
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
    if max_ranges < 1:
        raise ValueError(f"max_ranges must be >= 1, not {max_ranges}")


@attrs.frozen(slots=True)
class AddResult:
    """What :meth:`ReassemblyQueue.add` did with one segment.

    ``accepted``: new bytes now held. ``duplicate``: the lowest contiguous part of the segment
    that had already been received (held, or below ``rcv_nxt``), for a D-SACK block; ``None`` if
    every byte was new. ``dropped``: bytes discarded for lack of room, the segment's own and held
    bytes evicted to make room for lower ones.
    """

    accepted: int
    duplicate: tuple[int, int] | None
    dropped: int


class _Range:
    """One held range: ``pieces`` concatenated are the bytes ``[start, end)``."""

    __slots__ = ("start", "end", "pieces", "stamp")

    def __init__(self, start: int, end: int, pieces: list[bytes], stamp: int) -> None:
        self.start = start
        self.end = end
        self.pieces = pieces
        self.stamp = stamp

    def trim_front(self, new_start: int) -> None:
        """Discard the bytes below ``new_start`` (``start < new_start < end``)."""
        cut = new_start - self.start
        pieces = self.pieces
        i = 0
        while cut >= len(pieces[i]):
            cut -= len(pieces[i])
            i += 1
        if cut:
            pieces[i] = pieces[i][cut:]
        del pieces[:i]
        self.start = new_start

    def trim_back(self, new_end: int) -> None:
        """Discard the bytes from ``new_end`` on (``start < new_end < end``)."""
        cut = self.end - new_end
        pieces = self.pieces
        while cut >= len(pieces[-1]):
            cut -= len(pieces.pop())
        if cut:
            pieces[-1] = pieces[-1][:-cut]
        self.end = new_end


def _range_end(r: _Range) -> int:
    return r.end


def _range_start(r: _Range) -> int:
    return r.start


# The ranges of every queue that has held nothing yet: most connections never see
# out-of-order data, so they share this list instead of each owning an empty one (an object
# the garbage collector walks for as long as the connection lives). Only ``add`` inserts,
# and it gives the queue a list of its own first; every other mutation removes ranges, which
# an empty list does not have. Never non-empty.
_NO_RANGES: list[_Range] = []


class ReassemblyQueue:
    """Out-of-order data above ``rcv_nxt``, bounded in bytes and in ranges."""

    # Slots: one per connection, made on every connect and accept (issue 4).
    __slots__ = (
        "max_bytes", "max_ranges", "_ranges", "_held", "_clock", "_dropped_bytes",
        "_dropped_segments", "_ooo_packets",
    )

    def __init__(self, *, max_bytes: int, max_ranges: int = 64) -> None:
        check_bounds(max_bytes, max_ranges)
        self.max_bytes = max_bytes
        self.max_ranges = max_ranges
        self._ranges = _NO_RANGES
        self._held = 0
        self._clock = 0  # arrival counter that orders SACK blocks (RFC 2018 section 4)
        self._dropped_bytes = 0
        self._dropped_segments = 0
        self._ooo_packets = 0

    # -- observers -------------------------------------------------------------------------

    @property
    def bytes_held(self) -> int:
        return self._held

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The held ranges ``(start, end)`` in sequence order."""
        return [(r.start, r.end) for r in self._ranges]

    @property
    def dropped_bytes(self) -> int:
        """Bytes discarded for lack of room, arriving or evicted, since creation."""
        return self._dropped_bytes

    @property
    def dropped_segments(self) -> int:
        """Calls to :meth:`add` that had to discard bytes for lack of room."""
        return self._dropped_segments

    @property
    def ooo_packets(self) -> int:
        """Calls to :meth:`add` that stored at least one byte (Linux ``rcv_ooopack``)."""
        return self._ooo_packets

    def __len__(self) -> int:
        return len(self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    # -- mutation --------------------------------------------------------------------------

    def add(self, start: int, data: bytes | bytearray | memoryview, rcv_nxt: int) -> AddResult:
        """Store the bytes of ``data`` (at absolute ``start``) that are neither held nor below
        ``rcv_nxt``; coalesce with neighbouring ranges; enforce the bounds."""
        if self is NO_OOO:
            raise RuntimeError("NO_OOO is shared by every receiver and must stay empty")
        end = start + len(data)
        if end <= start:
            return AddResult(0, None, 0)
        self._discard_below(rcv_nxt)
        view = memoryview(data)
        duplicate: tuple[int, int] | None = None
        if start < rcv_nxt:
            duplicate = (start, min(end, rcv_nxt))
            if end <= rcv_nxt:
                return AddResult(0, duplicate, 0)
            view = view[rcv_nxt - start :]
            start = rcv_nxt

        ranges = self._ranges
        if ranges is _NO_RANGES:
            ranges = self._ranges = []
        # Ranges that overlap or touch [start, end) are ranges[lo:hi]; they merge with it.
        lo = bisect_left(ranges, start, key=_range_end)
        hi = bisect_right(ranges, end, lo=lo, key=_range_start)
        self._clock += 1
        stamp = self._clock

        gaps: list[tuple[int, int]] = []
        if lo == hi:
            gaps.append((start, end))
            # An arrival stored whole is kept as it came: no copy.
            piece = data if type(data) is bytes and len(view) == len(data) else view.tobytes()
            ranges.insert(lo, _Range(start, end, [piece], stamp))
        else:
            # Grow the lowest overlapping range in place: its piece list is reused, so a long
            # run of arrivals appended behind a hole costs O(1) each, not O(range).
            merged = ranges[lo]
            pieces = merged.pieces
            if start < merged.start:
                gaps.append((start, merged.start))
                pieces.insert(0, view[: merged.start - start].tobytes())
            cur = merged.end
            for r in ranges[lo:hi]:
                if r.start > cur:
                    gaps.append((cur, r.start))
                    pieces.append(view[cur - start : r.start - start].tobytes())
                if r is not merged:
                    pieces.extend(r.pieces)
                dup_lo, dup_hi = max(start, r.start), min(end, r.end)
                if duplicate is None and dup_lo < dup_hi:
                    duplicate = (dup_lo, dup_hi)
                cur = r.end
            if cur < end:
                gaps.append((cur, end))
                pieces.append(view[cur - start :].tobytes())
            merged.start = min(start, merged.start)
            merged.end = max(end, cur)
            merged.stamp = stamp
            del ranges[lo + 1 : hi]
        new_bytes = sum(g_hi - g_lo for g_lo, g_hi in gaps)
        self._held += new_bytes

        cut, removed = self._prune()
        if cut is None:
            accepted = new_bytes
        else:
            accepted = sum(min(g_hi, cut) - g_lo for g_lo, g_hi in gaps if g_lo < cut)
        # ``removed`` counts the arrival's pruned bytes too; both together are the drop.
        dropped = removed
        if dropped:
            self._dropped_bytes += dropped
            self._dropped_segments += 1
        if accepted:
            self._ooo_packets += 1
        return AddResult(accepted, duplicate, dropped)

    def _prune(self) -> tuple[int | None, int]:
        """Enforce the bounds by discarding from the top.

        Returns ``(cut, removed)``: everything at or above ``cut`` is gone (``None`` if nothing
        was discarded) and ``removed`` bytes were discarded.
        """
        ranges = self._ranges
        if self._held <= self.max_bytes and len(ranges) <= self.max_ranges:
            return None, 0
        removed = 0
        cut = ranges[-1].end
        while len(ranges) > self.max_ranges:
            r = ranges.pop()
            removed += r.end - r.start
            cut = r.start
        excess = self._held - removed - self.max_bytes
        while excess > 0:
            r = ranges[-1]
            size = r.end - r.start
            if size <= excess:
                ranges.pop()
                removed += size
                excess -= size
                cut = r.start
            else:
                r.trim_back(r.end - excess)
                removed += excess
                cut = r.end
                excess = 0
        self._held -= removed
        return cut, removed

    def pop_ready(self, rcv_nxt: int) -> bytes:
        """Remove and return the held bytes contiguous from ``rcv_nxt`` (``b""`` if none);
        held bytes below ``rcv_nxt`` are discarded."""
        self._discard_below(rcv_nxt)
        ranges = self._ranges
        if not ranges or ranges[0].start != rcv_nxt:
            return b""
        r = ranges.pop(0)
        self._held -= r.end - r.start
        return r.pieces[0] if len(r.pieces) == 1 else b"".join(r.pieces)

    def _discard_below(self, rcv_nxt: int) -> None:
        ranges = self._ranges
        while ranges and ranges[0].start < rcv_nxt:
            r = ranges[0]
            if r.end <= rcv_nxt:
                ranges.pop(0)
                self._held -= r.end - r.start
            else:
                self._held -= rcv_nxt - r.start
                r.trim_front(rcv_nxt)

    def clear(self) -> None:
        """Forget everything held (connection reset); counters are kept."""
        self._ranges.clear()
        self._held = 0

    # -- SACK ------------------------------------------------------------------------------

    def sack_blocks(self, max_blocks: int) -> list[tuple[int, int]]:
        """Up to ``max_blocks`` held ranges, the most recently changed first (RFC 2018 section 4:
        the first block holds the segment that triggered the ACK, the others repeat the most
        recently reported ranges so a lost ACK costs the sender little)."""
        if max_blocks <= 0 or not self._ranges:
            return []
        recent = heapq.nlargest(max_blocks, self._ranges, key=lambda r: r.stamp)
        return [(r.start, r.end) for r in recent]


# The queue of every receiver that has not yet had out-of-order data: empty, shared, and never
# added to (Receiver makes its own before the first add). Reads and clear() are harmless on it.
NO_OOO = ReassemblyQueue(max_bytes=0, max_ranges=1)
