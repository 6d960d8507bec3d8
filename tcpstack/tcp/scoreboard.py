"""The sender's retransmission queue and SACK scoreboard (RFC 6675, RFC 2018, RFC 2883).

One :class:`SentSegment` per transmitted range still not cumulatively acknowledged, in sequence
order, contiguous from ``snd_una`` to ``snd_nxt``. Sequence numbers are absolute (unwrapped).

Cost: records live in a list with a moving head index, so a cumulative ACK costs what it
removes; SACK blocks are located with ``bisect``, and the blocks of the previous ACK are cached
(as Linux's ``recv_sack_cache``) so a SACK block that grows by one segment per ACK costs one
segment, not the whole block. Loss marking keeps a high-water mark (everything unSACKed below
it is marked lost), retransmission search a hint, and the pipe counters are maintained
incrementally, so per-ACK work is proportional to what changed, not to the window.

With TSO (segmentation offload) one record is one super-segment of several MSS, as a Linux skb
with ``tcp_skb_pcount`` > 1: ``gso_size`` is the MSS it was cut for and ``pcount`` the packets it
stands for. Segment counters (sacked, lost, retransmitted, ``packets_out``) count packets, byte
counters bytes, so congestion control sees the same numbers with or without TSO. A partial SACK,
a partial ACK or a retransmission of one MSS splits a record as Linux's tcp_fragment does, so
only the pieces that are lost go again.

States of a record, as Linux's ``TCPCB_*`` bits: ``sacked`` excludes ``lost`` and
``retrans_in_flight`` (a SACK clears both). ``lost`` means "considered lost" (RFC 6675 IsLost, or
every unSACKed record after an RTO). ``retrans_in_flight`` means a retransmission of it is
believed in flight; ``retransmits`` is the history Karn's rule needs.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import attrs

from tcpstack.tcp.fastinit import fast_constructor
from tcpstack.tcp.lossmark import LossMarking, _start

if TYPE_CHECKING:
    from tcpstack.tcp.rate import RateSampler

__all__ = ["SentSegment", "AckResult", "Scoreboard"]


@attrs.define(slots=True, eq=False)
class SentSegment:
    """One transmitted range ``[start, end)`` of sequence space (SYN and FIN included)."""

    start: int
    end: int
    fin: bool = False
    syn: bool = False
    first_sent: float = 0.0
    last_sent: float = 0.0
    retransmits: int = 0
    sacked: bool = False
    lost: bool = False
    # Delivery-rate snapshot at the last (re)transmission (see tcpstack.tcp.rate).
    delivered: int = 0
    delivered_time: float = 0.0
    first_tx_time: float = 0.0
    app_limited: bool = False
    retrans_in_flight: bool = False
    delivery_counted: bool = False
    # TSO: the MSS the record is cut into on the wire (0: one packet whatever its length) and
    # the packets it stands for (Linux tcp_skb_pcount).
    gso_size: int = 0
    pcount: int = 1

    @property
    def length(self) -> int:
        return self.end - self.start


def _pcount(start: int, end: int, fin: bool, syn: bool, gso_size: int) -> int:
    """Packets of a record (Linux tcp_set_skb_tso_segs): its data in ``gso_size`` pieces, one
    at least (a bare SYN or FIN is one packet)."""
    if gso_size <= 0:
        return 1
    data = end - start - fin - syn
    return -(-data // gso_size) if data > gso_size else 1


@attrs.frozen(slots=True)
class AckResult:
    """What one ACK changed on the scoreboard.

    ``delivered_bytes`` is the PRR/RFC 6937 DeliveredData: bytes newly SACKed plus bytes newly
    cumulatively acknowledged that had not been SACKed before. ``reordering`` is the reordering
    distance in bytes when a never-retransmitted segment below the previous highest SACKed one
    was acknowledged or SACKed (Linux ``tcp_check_sack_reordering``), else 0.
    """

    acked_bytes: int
    sacked_bytes: int
    delivered_bytes: int
    newly_acked: list[SentSegment]
    newly_sacked: list[SentSegment]
    rtt_sample: float | None
    dsack: bool
    dsack_range: tuple[int, int] | None
    highest_sacked: int | None
    reordering: int

    @property
    def reordering_seen(self) -> bool:
        return self.reordering > 0


_new_ack_result = fast_constructor(AckResult)

# The record list of every scoreboard with nothing outstanding (most connections, most of the
# time): shared and never added to, so an idle connection holds no list of its own for the
# allocator to make and the garbage collector to walk. on_sent gives a scoreboard its own list.
NO_RECORDS: list[SentSegment] = []


def _subtract(lo: int, hi: int, cache: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[lo, hi)`` minus the union of the ``cache`` ranges, as sorted disjoint ranges."""
    parts = [(lo, hi)]
    for c_lo, c_hi in cache:
        out: list[tuple[int, int]] = []
        for p_lo, p_hi in parts:
            if c_hi <= p_lo or c_lo >= p_hi:
                out.append((p_lo, p_hi))
                continue
            if p_lo < c_lo:
                out.append((p_lo, c_lo))
            if c_hi < p_hi:
                out.append((c_hi, p_hi))
        parts = out
        if not parts:
            break
    return parts


class Scoreboard(LossMarking):
    """Retransmission queue with SACK state for one connection (RFC 6675)."""

    # Slots: one per connection (construction time and idle memory, issue 4).
    __slots__ = (
        "_bytes_out", "_packets_out", "_sacked_bytes", "_sacked_segs", "_lost_bytes",
        "_lost_segs", "_retrans_bytes", "_retrans_segs",
    )

    def __init__(self, *, dupthresh: int = 3) -> None:
        if dupthresh < 1:
            raise ValueError(f"dupthresh must be >= 1, not {dupthresh}")
        self.dupthresh = dupthresh
        self._recs: list[SentSegment] = NO_RECORDS
        self._head = 0
        self._snd_nxt: int | None = None
        self._highest_sacked: int | None = None  # end of the highest SACKed record
        # A tuple when empty: nothing for the garbage collector to track on every connection.
        self._sack_cache: Sequence[tuple[int, int]] = ()
        # Every unSACKed byte below _lost_high is marked lost (IsLost is monotone in seq).
        self._lost_high = 0
        # No lost record below _retx_hint is waiting for retransmission.
        self._retx_hint = 0
        # RACK: every record below _rack_low is SACKed or lost and not retransmitted since.
        self._rack_low = 0
        self._bytes_out = 0
        self._packets_out = 0
        self._sacked_bytes = 0
        self._sacked_segs = 0
        self._lost_bytes = 0
        self._lost_segs = 0
        self._retrans_bytes = 0
        self._retrans_segs = 0

    # -- container protocol ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._recs) - self._head

    def __bool__(self) -> bool:
        return len(self._recs) > self._head

    def __iter__(self) -> Iterator[SentSegment]:
        recs = self._recs
        for i in range(self._head, len(recs)):
            yield recs[i]

    def first(self) -> SentSegment | None:
        return self._recs[self._head] if len(self._recs) > self._head else None

    def last(self) -> SentSegment | None:
        return self._recs[-1] if len(self._recs) > self._head else None

    # -- counters (TCPInfo) ----------------------------------------------------------------

    @property
    def snd_una(self) -> int | None:
        """Start of the oldest unacknowledged record, or ``snd_nxt`` when nothing is out."""
        first = self.first()
        return first.start if first is not None else self._snd_nxt

    @property
    def snd_nxt(self) -> int | None:
        return self._snd_nxt

    @property
    def highest_sacked(self) -> int | None:
        return self._highest_sacked

    @property
    def bytes_outstanding(self) -> int:
        """``snd_nxt - snd_una`` as recorded."""
        return self._bytes_out

    @property
    def packets_out(self) -> int:
        """Packets outstanding, a TSO record counting its pcount (Linux ``packets_out``)."""
        return self._packets_out

    @property
    def sacked_segments(self) -> int:
        return self._sacked_segs

    @property
    def sacked_bytes(self) -> int:
        return self._sacked_bytes

    @property
    def lost_segments(self) -> int:
        return self._lost_segs

    @property
    def lost_bytes(self) -> int:
        return self._lost_bytes

    @property
    def retrans_out(self) -> int:
        """Segments with a retransmission believed in flight (Linux ``retrans_out``)."""
        return self._retrans_segs

    @property
    def retrans_bytes(self) -> int:
        return self._retrans_bytes

    @property
    def bytes_in_flight(self) -> int:
        """Linux ``tcp_packets_in_flight`` in bytes: out - (sacked + lost) + retransmitted.

        Uses the lost marks as they stand; :meth:`pipe` adds RFC 6675 IsLost on top.
        """
        return self._bytes_out - self._sacked_bytes - self._lost_bytes + self._retrans_bytes

    def _account(self, r: SentSegment, sign: int) -> None:
        """Add (``sign=1``) or remove (``-1``) the record's share of the counters."""
        n = r.end - r.start
        p = r.pcount
        if r.sacked:
            self._sacked_bytes += sign * n
            self._sacked_segs += sign * p
            return
        if r.lost:
            self._lost_bytes += sign * n
            self._lost_segs += sign * p
        if r.retrans_in_flight:
            self._retrans_bytes += sign * n
            self._retrans_segs += sign * p

    # -- transmit --------------------------------------------------------------------------

    def on_sent(
        self,
        start: int,
        end: int,
        now: float,
        *,
        retransmit: bool,
        rate: RateSampler,
        syn: bool = False,
        fin: bool = False,
        gso_size: int = 0,
    ) -> SentSegment:
        """Record a transmission of ``[start, end)`` at ``now``.

        New data must start at ``snd_nxt``; ``gso_size`` is the MSS a TSO super-segment is cut
        into (0: the record is one packet). A retransmission updates the record(s) covering the
        range, splitting records it covers only in part (the MSS can shrink, a retransmission can
        be cut to the peer's window); it returns the first of them.
        """
        if end <= start:
            raise ValueError(f"empty or reversed range [{start}, {end})")
        packets_out = len(self)
        if not retransmit:
            if self._snd_nxt is not None and start != self._snd_nxt:
                raise ValueError(f"new data must start at snd_nxt={self._snd_nxt}, not {start}")
            if self._snd_nxt is None:
                self._lost_high = self._retx_hint = self._rack_low = start
            seg = SentSegment(start, end, fin=fin, syn=syn, first_sent=now, last_sent=now)
            if gso_size:
                seg.gso_size = gso_size
                seg.pcount = _pcount(start, end, fin, syn, gso_size)
            rate.on_sent(seg, now, packets_out=packets_out)
            recs = self._recs
            if recs is NO_RECORDS:
                recs = self._recs = []
            recs.append(seg)
            self._bytes_out += end - start
            self._packets_out += seg.pcount
            self._snd_nxt = end
            return seg

        una = self.snd_una
        if una is None or self._snd_nxt is None or start < una or end > self._snd_nxt:
            raise ValueError(
                f"retransmission [{start}, {end}) outside the outstanding [{una}, {self._snd_nxt})"
            )
        i = self._split_at(start)
        self._split_at(end)
        recs = self._recs
        first = recs[i]
        if start < self._rack_low:
            self._rack_low = start
        while i < len(recs) and recs[i].start < end:
            r = recs[i]
            i += 1
            if r.sacked:
                continue  # the receiver holds it: nothing to track (and no second delivery)
            self._account(r, -1)
            r.retransmits += 1
            r.last_sent = now
            r.retrans_in_flight = True
            self._account(r, 1)
            rate.on_sent(r, now, packets_out=packets_out)
        return first

    def _index(self, seq: int) -> int:
        """Index of the record containing ``seq`` (``snd_una <= seq < snd_nxt``)."""
        return bisect_right(self._recs, seq, lo=self._head, key=_start) - 1

    def _split_at(self, seq: int) -> int:
        """Make ``seq`` a record boundary; return the index of the record starting at ``seq``
        (``len`` when ``seq`` is ``snd_nxt``). Counters are per byte and per segment, so the
        segment counts grow by one for the flags the record carries."""
        recs = self._recs
        i = bisect_right(recs, seq, lo=self._head, key=_start) - 1
        if i < self._head:
            return self._head
        r = recs[i]
        if r.start == seq:
            return i
        if seq >= r.end:
            return i + 1
        upper = SentSegment(
            seq, r.end, fin=r.fin, syn=False, first_sent=r.first_sent, last_sent=r.last_sent,
            retransmits=r.retransmits, sacked=r.sacked, lost=r.lost, delivered=r.delivered,
            delivered_time=r.delivered_time, first_tx_time=r.first_tx_time,
            app_limited=r.app_limited, retrans_in_flight=r.retrans_in_flight,
            delivery_counted=r.delivery_counted, gso_size=r.gso_size,
        )
        self._account(r, -1)
        old_pcount = r.pcount
        r.end = seq
        r.fin = False
        if r.gso_size:
            # Linux tcp_fragment: both parts get their packet counts again.
            r.pcount = _pcount(r.start, seq, False, r.syn, r.gso_size)
            upper.pcount = _pcount(seq, upper.end, upper.fin, False, r.gso_size)
        self._packets_out += r.pcount + upper.pcount - old_pcount
        self._account(r, 1)
        self._account(upper, 1)
        recs.insert(i + 1, upper)
        return i + 1

    # -- ACK processing --------------------------------------------------------------------

    def on_ack(
        self,
        snd_una: int,
        sack_blocks: Sequence[tuple[int, int]],
        now: float,
        mss: int,
        *,
        rate: RateSampler | None = None,
    ) -> AckResult:
        """Apply a cumulative ACK (``snd_una``, absolute) and its SACK blocks (absolute).

        ``rate``, when given, is told of every newly delivered segment (RateSampler.on_acked);
        the engine then closes the sample with ``rate.sample``.
        """
        del mss  # SACK marking is by byte; IsLost (update_lost, pipe) uses the MSS
        if self._snd_nxt is not None and snd_una > self._snd_nxt:
            raise ValueError(f"ACK {snd_una} beyond snd_nxt {self._snd_nxt}")
        recs = self._recs
        if not sack_blocks and len(recs) == 1 and self._head == 0 and self._highest_sacked is None:
            r = recs[0]
            if r.end <= snd_una and not (r.sacked or r.lost or r.retrans_in_flight):
                # The one record outstanding is acknowledged, no SACK (a SYN, a FIN, or a lone
                # segment): what the general path below does, without its lists and loops.
                n = r.end - r.start
                self._recs = NO_RECORDS
                self._bytes_out -= n
                self._packets_out -= r.pcount
                self._sack_cache = ()
                if rate is not None:
                    rate.on_acked(r, now)
                return _new_ack_result(
                    n, 0, n, [r], [], None if r.retransmits else now - r.last_sent, False, None,
                    None, 0,
                )
        prior_high = self._highest_sacked
        newly_sacked: list[SentSegment] = []
        newly_acked: list[SentSegment] = []
        rtt_from: float | None = None
        reord_low: int | None = None

        # RFC 2883 section 4 / Linux tcp_check_dsack: a first block below the cumulative ACK,
        # or inside the second block, reports a duplicate rather than new data.
        dsack_range: tuple[int, int] | None = None
        blocks = list(sack_blocks)
        if blocks:
            b0_lo, b0_hi = blocks[0]
            if b0_lo < b0_hi and (
                b0_lo < snd_una
                or (len(blocks) > 1 and blocks[1][0] <= b0_lo and b0_hi <= blocks[1][1])
            ):
                dsack_range = (b0_lo, b0_hi)
                blocks = blocks[1:]

        # Cumulative acknowledgement: records below snd_una leave the queue.
        acked_bytes = 0
        delivered_bytes = 0
        recs = self._recs
        head = self._head
        nrecs = len(recs)
        if nrecs > head and recs[head].start < snd_una:
            # Linux tcp_clean_rtx_queue: walk the whole records the ACK covers from the head;
            # only an ACK ending inside a record (a partial ACK) needs the split, and the walk
            # finds that record without a search.
            while head < nrecs:
                r = recs[head]
                if r.end > snd_una:
                    if r.start >= snd_una:
                        break
                    self._split_at(snd_una)  # r keeps the acknowledged lower part
                    nrecs = len(recs)
                head += 1
                n = r.end - r.start
                if r.sacked or r.lost or r.retrans_in_flight:
                    self._account(r, -1)
                self._bytes_out -= n
                self._packets_out -= r.pcount
                acked_bytes += n
                if not r.sacked:
                    delivered_bytes += n
                    if r.retransmits == 0:
                        if rtt_from is None or r.last_sent > rtt_from:
                            rtt_from = r.last_sent
                        if prior_high is not None and r.start < prior_high:
                            reord_low = r.start if reord_low is None else min(reord_low, r.start)
                newly_acked.append(r)
            self._head = head
            if head == nrecs:
                # Everything is acknowledged: let the records go now rather than at the next
                # compaction, so an idle or TIME-WAIT connection holds none (memory, and
                # objects the garbage collector would keep scanning).
                recs = self._recs = NO_RECORDS  # the SACK pass below then sees no records
                self._head = 0
            elif head > 64 and head * 2 > nrecs:
                del recs[:head]
                self._head = 0
            if self._highest_sacked is not None and self._highest_sacked <= snd_una:
                self._highest_sacked = None

        # SACK blocks (RFC 2018 sanity, as Linux tcp_is_sackblock_valid): only blocks inside
        # (snd_una, snd_nxt] count. An old ACK (below our snd_una) is judged by ours.
        snd_nxt = self._snd_nxt
        valid: list[tuple[int, int]] = []
        if blocks and snd_nxt is not None:
            front = self.snd_una
            floor = snd_una if front is None else max(snd_una, front)
            for lo, hi in blocks:
                if floor < lo < hi <= snd_nxt:
                    valid.append((lo, hi))
        sacked_bytes = 0
        for lo, hi in valid:
            for p_lo, p_hi in _subtract(lo, hi, self._sack_cache):
                i = self._split_at(p_lo)
                self._split_at(p_hi)
                while i < len(recs) and recs[i].start < p_hi:
                    r = recs[i]
                    i += 1
                    if r.sacked:
                        continue
                    self._account(r, -1)
                    r.sacked = True
                    r.lost = False
                    r.retrans_in_flight = False
                    self._account(r, 1)
                    n = r.end - r.start
                    sacked_bytes += n
                    newly_sacked.append(r)
                    if r.retransmits == 0:
                        if rtt_from is None or r.last_sent > rtt_from:
                            rtt_from = r.last_sent
                        if prior_high is not None and r.start < prior_high:
                            reord_low = r.start if reord_low is None else min(reord_low, r.start)
                    if self._highest_sacked is None or r.end > self._highest_sacked:
                        self._highest_sacked = r.end
        self._sack_cache = valid or ()
        delivered_bytes += sacked_bytes

        if rate is not None:
            for r in newly_sacked:
                rate.on_acked(r, now)
            for r in newly_acked:
                rate.on_acked(r, now)

        reordering = 0
        if reord_low is not None and prior_high is not None:
            reordering = prior_high - reord_low
        # Fields in AckResult's order; the fast constructor skips attrs' per-field setattr.
        return _new_ack_result(
            acked_bytes, sacked_bytes, delivered_bytes, newly_acked, newly_sacked,
            None if rtt_from is None else now - rtt_from, dsack_range is not None, dsack_range,
            self._highest_sacked, reordering,
        )

    # -- sending decisions (RFC 6675 section 4) --------------------------------------------

    def next_seg(self, snd_nxt: int, mss: int, rwnd_allows_new: bool) -> tuple[int, int] | None:
        """RFC 6675 NextSeg(): the range to send next, at most ``mss`` long, or ``None``.

        Rule 1: the first lost unSACKed record not yet retransmitted (IsLost is applied through
        :meth:`update_lost`; after an RTO every unSACKed record qualifies, as in Linux).
        Rule 2: new data at ``snd_nxt`` if the receive window and the application allow.
        Rule 3: the first unSACKed record below the highest SACKed byte not yet retransmitted.
        Rule 4 (rescue retransmission) is not implemented (it is optional).
        """
        if mss <= 0:
            raise ValueError(f"mss must be positive, not {mss}")
        recs = self._recs
        i = max(self._head, self._index(self._retx_hint)) if self else len(recs)
        # Advance the hint past records not waiting for a retransmission: every path that marks
        # a record lost (update_lost, rack_detect_loss, mark_all_lost) lowers the hint again.
        # Below _lost_high, RFC 6675 marks are contiguous; RACK's may skip records still in
        # their reordering window, hence no early exit.
        while i < len(recs) and recs[i].start < self._lost_high:
            r = recs[i]
            if r.lost and not r.sacked and not r.retrans_in_flight:
                self._retx_hint = r.start
                return (r.start, min(r.end, r.start + mss))
            i += 1
        if i < len(recs):
            self._retx_hint = recs[i].start
        elif self._snd_nxt is not None:
            self._retx_hint = self._snd_nxt
        if rwnd_allows_new:
            return (snd_nxt, snd_nxt + mss)
        high = self._highest_sacked
        if high is not None:
            while i < len(recs) and recs[i].start < high:
                r = recs[i]
                if not r.sacked and not r.retrans_in_flight:
                    return (r.start, min(r.end, r.start + mss))
                i += 1
        return None

    def pipe(self, mss: int) -> int:
        """RFC 6675 SetPipe, in bytes: every unSACKed byte counts once unless IsLost, and once
        more if it has been retransmitted (and that retransmission is not known lost)."""
        pipe = self.bytes_in_flight
        threshold = self._lost_threshold(mss, self._lost_high)
        if threshold is not None:
            # IsLost holds for records update_lost() has not marked yet.
            recs = self._recs
            i = bisect_left(recs, self._lost_high, lo=self._head, key=_start)
            while i < len(recs) and recs[i].start < threshold:
                r = recs[i]
                if not r.sacked and not r.lost:
                    pipe -= r.end - r.start
                i += 1
        return pipe
