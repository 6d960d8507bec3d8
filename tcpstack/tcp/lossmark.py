"""Loss marking on the sender's scoreboard: RFC 6675 IsLost, RFC 8985 RACK, RTO and undo.

:class:`LossMarking` is a mixin of :class:`tcpstack.tcp.scoreboard.Scoreboard`; it owns the
transitions of a record into and out of the ``lost`` state, the scoreboard owns the queue, the
SACK processing and the sending decisions. Every marking path keeps the scoreboard's invariants:
counters move through ``_account``, ``_retx_hint`` is lowered to the first newly lost record (so
NextSeg finds it), and ``_lost_high`` covers every lost mark (so NextSeg looks that far).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tcpstack.tcp.scoreboard import SentSegment

__all__ = ["LossMarking"]


def _start(seg: SentSegment) -> int:
    return seg.start


def _end(seg: SentSegment) -> int:
    return seg.end


class LossMarking:
    """The loss-marking half of the scoreboard (its state is initialised there)."""

    # The state this half reads and writes; Scoreboard declares the counters.
    __slots__ = (
        "dupthresh", "_recs", "_head", "_snd_nxt", "_highest_sacked", "_sack_cache",
        "_lost_high", "_retx_hint", "_rack_low",
    )

    dupthresh: int
    _recs: list[SentSegment]
    _head: int
    _snd_nxt: int | None
    _highest_sacked: int | None
    _sack_cache: Sequence[tuple[int, int]]
    _lost_high: int
    _retx_hint: int
    _rack_low: int

    if TYPE_CHECKING:

        def __iter__(self) -> Iterator[SentSegment]: ...

        @property
        def snd_una(self) -> int | None: ...

        def _account(self, r: SentSegment, sign: int) -> None: ...

    def _lost_threshold(self, mss: int, floor: int) -> int | None:
        """The sequence number below which IsLost holds, if it is above ``floor``, else ``None``.

        IsLost(seq) needs DupThresh SACKed segments (a SACKed record counts as many segments as
        it spans MSS), or more than (DupThresh - 1) * MSS SACKed bytes, above ``seq``; both only
        grow as ``seq`` falls, so the answer is a threshold: walk down from the highest SACKed
        record until the condition is met, and no further than ``floor``.
        """
        if mss <= 0:
            raise ValueError(f"mss must be positive, not {mss}")
        if self._highest_sacked is None:
            return None
        recs = self._recs
        i = bisect_left(recs, self._highest_sacked, lo=self._head, key=_end)
        segs = 0
        nbytes = 0
        byte_limit = (self.dupthresh - 1) * mss
        while i >= self._head:
            r = recs[i]
            if r.start <= floor:
                return None
            if r.sacked:
                n = r.end - r.start
                nbytes += n
                segs += -(-n // mss)
                if segs >= self.dupthresh or nbytes > byte_limit:
                    return r.start
            i -= 1
        return None

    def is_lost(self, seq: int, mss: int) -> bool:
        """RFC 6675 IsLost(seq), from the SACK information alone."""
        return self._lost_threshold(mss, seq) is not None

    def update_lost(self, mss: int) -> int:
        """Mark lost every unSACKed record for which IsLost holds; return how many were newly
        marked. Cost: the records between the old and the new high-water mark."""
        threshold = self._lost_threshold(mss, self._lost_high)
        if threshold is None:
            return 0
        recs = self._recs
        # _lost_high and threshold are record boundaries (thresholds are record starts).
        i = bisect_left(recs, self._lost_high, lo=self._head, key=_start)
        marked = 0
        first_marked: int | None = None
        while i < len(recs) and recs[i].start < threshold:
            r = recs[i]
            i += 1
            if r.sacked or r.lost:
                continue
            self._account(r, -1)
            r.lost = True
            self._account(r, 1)
            marked += r.pcount
            if first_marked is None:
                first_marked = r.start
        self._lost_high = threshold
        if first_marked is not None and first_marked < self._retx_hint:
            self._retx_hint = first_marked
        return marked

    def rack_detect_loss(
        self, xmit_ts: float, end_seq: int, now: float, window: float
    ) -> tuple[int, float]:
        """RFC 8985 RACK_detect_loss: mark lost every record sent before the RACK segment
        (``xmit_ts``, ``end_seq``) and not delivered within ``window`` (RACK.rtt + reo_wnd) of
        its last transmission. Returns (newly marked, longest wait still to run, 0 if none).

        Records are walked in sequence order from the first unsettled one; never-retransmitted
        records are also in transmission order, so the walk stops at the first of them sent after
        the RACK segment (Linux walks its time-sorted queue the same way).
        """
        recs = self._recs
        n_recs = len(recs)
        i = self._head
        if i < n_recs and recs[i].start < self._rack_low:
            i = bisect_left(recs, self._rack_low, lo=i, key=_start)
        settled = True
        marked = 0
        wait = 0.0
        first_marked: int | None = None
        last_marked_end = 0
        while i < n_recs:
            r = recs[i]
            i += 1
            if r.sacked or (r.lost and not r.retrans_in_flight):
                if settled:
                    self._rack_low = r.end
                continue
            t = r.last_sent
            if not (xmit_ts > t or (xmit_ts == t and end_seq > r.end)):
                if r.retransmits == 0:
                    break
                settled = False
                continue
            remaining = t + window - now
            if remaining > 0:
                settled = False
                if remaining > wait:
                    wait = remaining
                continue
            self._account(r, -1)
            r.lost = True
            r.retrans_in_flight = False  # a lost retransmission must go again (RFC 8985 6.2)
            self._account(r, 1)
            marked += r.pcount
            last_marked_end = r.end
            if first_marked is None:
                first_marked = r.start
            if settled:
                self._rack_low = r.end
        if first_marked is not None:
            if first_marked < self._retx_hint:
                self._retx_hint = first_marked
            # next_seg looks for lost records below _lost_high.
            if last_marked_end > self._lost_high:
                self._lost_high = last_marked_end
        return marked, wait

    def mark_oversized_lost(self, mss: int) -> int:
        """After a path MTU drop (Linux tcp_simple_retransmit): every unSACKed record whose
        packets are longer than ``mss`` cannot have passed the smaller link; mark it lost.
        A TSO record's packets are its ``gso_size`` (Linux tcp_skb_seglen). Returns how many
        packets were marked."""
        marked = 0
        for r in self:
            if r.sacked or r.lost:
                continue
            seglen = r.end - r.start - (1 if r.fin else 0)
            if r.pcount > 1:
                seglen = r.gso_size
            if seglen <= mss:
                continue
            self._account(r, -1)
            r.lost = True
            r.retrans_in_flight = False
            self._account(r, 1)
            marked += r.pcount
            if r.start < self._retx_hint:
                self._retx_hint = r.start
            if r.end > self._lost_high:
                self._lost_high = r.end
        return marked

    def unmark_lost(self) -> None:
        """A loss episode proved spurious (undo): forget every lost mark (Linux
        tcp_undo_cwnd_reduction with unmark_loss)."""
        for r in self:
            if r.lost:
                self._account(r, -1)
                r.lost = False
                self._account(r, 1)
        una = self.snd_una
        if una is not None:
            self._lost_high = self._retx_hint = self._rack_low = una

    def mark_all_lost(self, *, clear_sacked: bool = False) -> None:
        """After an RTO (RFC 6675 section 5.1): every unSACKed record is lost and no
        retransmission is believed in flight any more. ``clear_sacked`` also forgets the SACK
        marks, for when the receiver is suspected of reneging (RFC 2018 section 8)."""
        for r in self:
            self._account(r, -1)
            if clear_sacked:
                r.sacked = False
            if not r.sacked:
                r.lost = True
            r.retrans_in_flight = False
            self._account(r, 1)
        if clear_sacked:
            self._highest_sacked = None
            self._sack_cache = ()
        if self._snd_nxt is not None:
            self._lost_high = self._snd_nxt
        una = self.snd_una
        if una is not None:
            self._retx_hint = una
