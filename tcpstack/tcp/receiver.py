"""The receive half of a connection: buffer, reassembly, window advertisement and ACK policy.

Sequence numbers here are absolute (unwrapped) integers. The connection has already applied the
RFC 9293 acceptability test and trimmed the segment to the window before calling
:meth:`Receiver.on_data`, so everything handed in lies in ``[rcv_nxt, rcv_nxt + window]``.

Memory is bounded by ``capacity``: the window right edge we offer is ``rcv_nxt`` plus the free
part of the buffer, so unread in-order bytes plus out-of-order bytes held never exceed it; the
reassembly queue is additionally bounded in bytes and in ranges.
"""

from __future__ import annotations

from tcpstack.tcp.buffers import ReceiveQueue
from tcpstack.tcp.reassembly import NO_OOO, ReassemblyQueue, check_bounds

__all__ = ["Receiver", "ACK_NONE", "ACK_DELAYED", "ACK_NOW"]

ACK_NONE = 0
ACK_DELAYED = 1
ACK_NOW = 2

TCP_MIN_MSS = 88  # Linux TCP_MIN_MSS
TCP_MSS_DEFAULT = 536  # RFC 9293 3.7.1 default send MSS, Linux TCP_MSS_DEFAULT
TCP_MAX_QUICKACKS = 16  # Linux include/net/tcp.h
MAX_WINDOW = 65535 << 14  # RFC 7323 2.3: the largest window a 14-bit shift can express


def window_scale_for(buffer: int) -> int:
    """The smallest shift so that ``buffer`` fits the 16-bit window field (RFC 7323 2.2, <= 14).

    This is Linux's tcp_select_initial_window rule applied to the largest receive buffer the
    connection may use (Linux: tcp_rmem[2]; 6 MiB gives 7, 15 MiB gives 8).
    """
    # buffer >> shift <= 65535 exactly when buffer < 2**(16 + shift): one bit_length, no loop.
    shift = buffer.bit_length() - 16
    return 0 if shift < 0 else 14 if shift > 14 else shift


class Receiver:
    """Receive sequence space, in-order buffer, out-of-order queue, window and delayed ACK."""

    __slots__ = (
        "irs", "rcv_nxt", "rcv_wup", "rcv_adv", "capacity", "rcv_wscale", "advmss", "rcv_mss",
        "rcv_ssthresh", "min_window_update", "_buf", "ooo", "fin_seq", "fin_received",
        "quick", "ato", "ato_min", "last_recv", "_segs_since_ack", "_dsack",
        "bytes_received", "data_segs_in", "rcv_rtt", "_rtt_seq", "_rtt_time",
        "rcv_space", "_space_copied", "_space_time", "shut_rd", "bytes_discarded", "autotune_max",
        "bsd_delack", "bsd_window", "quickack", "_ooo_max_bytes", "_ooo_max_ranges",
    )

    def __init__(
        self, *, capacity: int, rcv_wscale: int, advmss: int, max_ooo_bytes: int,
        max_ooo_ranges: int, ato_min: float,
    ) -> None:
        self.quickack = False  # ConnectionOptions.quickack: every in-order segment ACKed at once
        if capacity <= 0:
            raise ValueError(f"receive buffer must be positive, got {capacity}")
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wup = 0  # rcv_nxt when we last sent an ACK (Linux rcv_wup)
        self.rcv_adv = 0  # right edge of the window we last advertised (never moves left)
        self.capacity = capacity
        self.rcv_wscale = rcv_wscale
        self.advmss = advmss
        # Linux tcp_initialize_rcv_mss: a guess of the peer's segment size until data arrives.
        self.rcv_mss = max(min(advmss, TCP_MSS_DEFAULT), TCP_MIN_MSS)
        # Linux starts the window at 64 KiB (or the buffer) rounded to whole segments and grows
        # it as in-order data arrives (tcp_grow_window), so a peer cannot get a huge window
        # before it has shown it uses the buffer well.
        start = min(capacity, 65535)
        if start > advmss:
            start = (start // advmss) * advmss
        self.rcv_ssthresh = start
        # RFC 1122 4.2.3.3 receiver SWS avoidance: open the window only by this much at a time.
        self.min_window_update = max(1, min(capacity // 2, advmss))
        self._buf = ReceiveQueue()  # payloads kept as they arrived: no copy per segment
        check_bounds(max_ooo_bytes, max_ooo_ranges)
        # The out-of-order queue is made by the first segment that needs it (few connections
        # ever see one); until then every receiver shares the empty NO_OOO, which is never
        # added to, and keeps the queue's bounds here.
        self.ooo = NO_OOO
        self._ooo_max_bytes = max_ooo_bytes
        self._ooo_max_ranges = max_ooo_ranges
        self.fin_seq: int | None = None
        self.fin_received = False
        self.quick = 0  # quick-ACK segments left (Linux icsk_ack.quick)
        self.ato = 0.0  # 0 until the first data segment (Linux: ato == 0 means "no data yet")
        self.ato_min = ato_min
        self.last_recv: float | None = None  # time of the last data segment (Linux lrcvtime)
        self._segs_since_ack = 0
        self._dsack: tuple[int, int] | None = None
        self.bytes_received = 0
        self.data_segs_in = 0
        self.rcv_rtt = 0.0  # seconds, Linux rcv_rtt_est (0 = no sample)
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self.rcv_space = start  # Linux rcvq_space.space: bytes the application read per RTT
        self._space_copied = 0
        self._space_time = 0.0
        self.shut_rd = False
        self.bytes_discarded = 0
        # Receive buffer autotuning bound (Linux tcp_rmem[2]); 0: the buffer is fixed.
        self.autotune_max = 0
        # FreeBSD DELAY_ACK (tcp_input.c): no quick-ACK mode and a fixed delack time; an
        # in-order segment is ACKed at once if the delayed-ACK timer already runs (every
        # second segment) or if it is larger than an MSS. The engine sets it from its profile.
        self.bsd_delack = False
        # FreeBSD tcp_input(): RCV.WND is max(sbspace, rcv_adv - rcv_nxt), the free buffer even
        # where it exceeds the window last announced (a 65535 cap, an unscaled SYN window).
        self.bsd_window = False

    @property
    def ooo_max_bytes(self) -> int:
        """The out-of-order queue's byte bound (the queue, once made, is kept equal to it)."""
        return self._ooo_max_bytes

    # -- setup --------------------------------------------------------------------------

    def start(self, irs: int, now: float, syn_window: int = 0) -> None:
        """The peer's SYN has been accepted: its sequence space starts at ``irs``.

        ``syn_window`` is the window our own SYN already offered (active open), which stays
        promised.
        """
        self.irs = irs
        self.rcv_nxt = irs + 1
        self.rcv_wup = self.rcv_nxt
        self.rcv_adv = self.rcv_nxt + syn_window
        self._space_time = now

    # -- window -------------------------------------------------------------------------

    @property
    def readable(self) -> int:
        return len(self._buf)

    @property
    def window(self) -> int:
        """The window currently promised (RCV.WND): bytes the peer may send beyond rcv_nxt."""
        # Conditional expressions, not max(): builtin min/max parse keyword arguments on every
        # call in CPython 3.11, and this is read for every segment received.
        wnd = self.rcv_adv - self.rcv_nxt
        if self.bsd_window:
            free = self.capacity - self._buf._len
            if free > wnd:
                wnd = free
        return wnd if wnd > 0 else 0

    def _free(self) -> int:
        return self.capacity - len(self._buf)

    def select_window(self, *, syn: bool = False) -> int:
        """The unscaled window field to put in an outgoing segment; updates ``rcv_adv``.

        RFC 9293 3.8.6.2.2 / RFC 1122 4.2.3.3: the right edge never moves left (a shrinking
        window is only tolerated, never produced) and moves right only in steps of at least
        min(buffer/2, MSS) so the peer is not invited to send tiny segments.
        """
        # Conditional expressions for min/max, and _free() inlined: this runs for every
        # segment sent (builtin min/max parse keyword arguments on every call in CPython 3.11).
        cur = self.rcv_adv - self.rcv_nxt
        if cur < 0:
            cur = 0
        offer = self.capacity - self._buf._len
        if offer > self.rcv_ssthresh:
            offer = self.rcv_ssthresh
        new = cur
        if offer - cur >= self.min_window_update or (offer > cur and offer >= self.capacity):
            new = offer
        if syn:
            # RFC 7323 2.2: the window in a SYN is never scaled.
            field = min(new, 65535)
            self.rcv_adv = self.rcv_nxt + field
            return field
        shift = self.rcv_wscale
        field = new >> shift
        if (field << shift) < cur:
            # Rounding down would shrink what we already offered: round up instead (Linux
            # ALIGN(cur_win, 1 << rcv_wscale)).
            field = (cur + (1 << shift) - 1) >> shift
        if field > 65535:
            field = 65535
        edge = self.rcv_nxt + (field << shift)
        if edge > self.rcv_adv:
            self.rcv_adv = edge
        return field

    # -- data arrival -------------------------------------------------------------------

    def on_data(self, seq: int, data: bytes, fin: bool, now: float) -> int:
        """Accept payload (and FIN) at absolute ``seq >= rcv_nxt``; return the ACK decision.

        Returns ACK_NOW, ACK_DELAYED or ACK_NONE as Linux's __tcp_ack_snd_check would.
        """
        n = len(data)
        ack = ACK_NONE
        if fin and self.fin_seq is None:
            self.fin_seq = seq + n
        if n:
            self._event_data_recv(n, now)
            # GRO: a segment longer than the MSS is that many packets coalesced by the link;
            # count them as Linux counts gso_segs (segs_in, the every-second-segment ACK rule).
            rcv_mss = self.rcv_mss
            pcount = -(-n // rcv_mss) if n > rcv_mss else 1
            self.data_segs_in += pcount
            if seq == self.rcv_nxt:
                had_hole = self.ooo.bytes_held > 0
                self._deliver(data)
                if had_hole:
                    more = self.ooo.pop_ready(self.rcv_nxt)
                    if more:
                        self._deliver(more)
                    # Linux: data that fills (part of) a hole is ACKed at once so the sender's
                    # recovery sees the progress without waiting for the delayed-ACK timer.
                    ack = ACK_NOW
                self._segs_since_ack += pcount
                if n >= 128:
                    self._grow_window(n)
            else:
                ooo = self.ooo
                if ooo is NO_OOO:
                    ooo = self.ooo = ReassemblyQueue(
                        max_bytes=self._ooo_max_bytes, max_ranges=self._ooo_max_ranges
                    )
                result = ooo.add(seq, data, self.rcv_nxt)
                if result.duplicate is not None:
                    self._dsack = result.duplicate
                # RFC 5681 4.2: out-of-order data is ACKed immediately (a duplicate ACK).
                ack = ACK_NOW
        if self.fin_seq is not None and self.rcv_nxt == self.fin_seq and not self.fin_received:
            self.rcv_nxt += 1
            self.fin_received = True
            ack = ACK_NOW  # Linux ACKs a FIN at once (tcp_fin -> inet_csk_schedule_ack + quick)
        if ack == ACK_NONE and n:
            if self.bsd_delack:
                ack = ACK_NOW if self._segs_since_ack >= 2 or n > self.advmss else ACK_DELAYED
            else:
                ack = self._ack_policy()
        return ack

    def _deliver(self, data: bytes) -> None:
        if self.shut_rd:
            # shutdown(SHUT_RD) as BSD sorflush(): the bytes are acknowledged and discarded
            # (Linux only marks the socket; the socket layer makes that choice).
            self.bytes_discarded += len(data)
        else:
            self._buf.append(data)
        self.rcv_nxt += len(data)
        self.bytes_received += len(data)

    def _event_data_recv(self, n: int, now: float) -> None:
        """Linux tcp_event_data_recv: maintain ato, quick-ACK mode and the rcv_mss estimate."""
        if n >= self.rcv_mss:
            self.rcv_mss = min(n, self.advmss)
        if self.bsd_delack:
            self.ato = self.ato_min
            self.last_recv = now
            return
        if self.ato == 0.0:
            # First data segment: start in quick-ACK mode (tcp_incr_quickack).
            self._incr_quickack()
            self.ato = self.ato_min
        elif self.last_recv is not None:
            m = now - self.last_recv
            if m <= self.ato_min / 2:
                self.ato = self.ato / 2 + self.ato_min / 2
            elif m < self.ato:
                self.ato = min(self.ato / 2 + m, 0.2)  # Linux caps ato at the RTO in tcp_send_delayed_ack
            elif m > 1.0:
                # After an idle period the peer is likely restarting slow start: ACK quickly.
                self._incr_quickack()
        self.last_recv = now

    def _incr_quickack(self) -> None:
        if self.bsd_delack:
            return
        quickacks = self.window // (2 * self.rcv_mss) if self.rcv_mss else 0
        quickacks = max(quickacks, 2)
        self.quick = min(max(self.quick, quickacks), TCP_MAX_QUICKACKS)

    def enter_quickack(self) -> None:
        """Linux tcp_enter_quickack_mode: ACK every segment for a while (duplicates, ECN CE)."""
        self._incr_quickack()
        self.ato = self.ato_min

    def _ack_policy(self) -> int:
        """Linux __tcp_ack_snd_check for in-order data."""
        if self.quick > 0 or self.quickack:
            return ACK_NOW
        # More than one full-sized segment not yet acknowledged: ACK now (RFC 1122 / 9293
        # "ACK at least every second full-sized segment"), if the window's right edge would
        # advance at least as far as rcv_nxt did. When unread data has taken the space, Linux
        # leaves that ACK to the application's next read (tcp_cleanup_rbuf, see
        # window_update_worthwhile), which then opens the window as well: one ACK per read
        # instead of one per two segments that would each announce a shrinking window.
        if self.rcv_nxt - self.rcv_wup > self.rcv_mss and self._window_advances():
            return ACK_NOW
        if self.ooo.bytes_held:
            return ACK_NOW
        return ACK_DELAYED

    def _window_advances(self) -> bool:
        """Linux ``__tcp_select_window(sk) >= tp->rcv_wnd``: the window :meth:`select_window`
        would offer now, from rcv_nxt, is at least the one last announced, from rcv_wup."""
        cur = max(self.rcv_adv - self.rcv_nxt, 0)
        offer = min(self.capacity - self._buf._len, self.rcv_ssthresh)  # _free(), inlined
        new = cur
        if offer - cur >= self.min_window_update or (offer > cur and offer >= self.capacity):
            new = offer
        return new >= self.rcv_adv - self.rcv_wup

    def _grow_window(self, n: int) -> None:
        """Linux tcp_grow_window: open rcv_ssthresh by 2*rcv_mss per in-order segment, or by
        twice the segment when it is larger (a GRO segment of several MSS)."""
        if self.rcv_ssthresh < self.capacity:
            incr = max(2 * self.rcv_mss, 2 * n)
            self.rcv_ssthresh = min(self.rcv_ssthresh + incr, self.capacity)

    def note_duplicate(self, start: int, end: int) -> None:
        """Data below rcv_nxt arrived again: report it as a D-SACK block (RFC 2883 section 4)."""
        self._dsack = (start, end)
        self.enter_quickack()

    def on_ack_sent(self) -> None:
        """Bookkeeping when any segment carrying an ACK leaves (Linux tcp_event_ack_sent)."""
        if self.quick > 0 and self._segs_since_ack:
            self.quick = max(self.quick - self._segs_since_ack, 0)
        self._segs_since_ack = 0
        self.rcv_wup = self.rcv_nxt

    @property
    def ack_pending(self) -> bool:
        return self.rcv_wup != self.rcv_nxt

    # -- SACK ---------------------------------------------------------------------------

    def sack_blocks(self, max_blocks: int) -> list[tuple[int, int]]:
        """Blocks for the next ACK: a pending D-SACK first, then RFC 2018 order (most recent first).

        The D-SACK block is sent once (RFC 2883 section 4, point 1).
        """
        blocks: list[tuple[int, int]] = []
        if self._dsack is not None:
            blocks.append(self._dsack)
            self._dsack = None
        if self.ooo.bytes_held and len(blocks) < max_blocks:
            for block in self.ooo.sack_blocks(max_blocks):
                if len(blocks) >= max_blocks:
                    break
                if blocks and block == blocks[0]:
                    continue
                blocks.append(block)
        return blocks

    def has_sack_info(self) -> bool:
        """Whether the next ACK would carry any SACK block (a pending D-SACK or held data)."""
        return self._dsack is not None or self.ooo.bytes_held > 0

    def sack_block_count(self, max_blocks: int) -> int:
        """How many blocks the next segment will carry (without consuming a pending D-SACK)."""
        n = (1 if self._dsack is not None else 0) + (len(self.ooo.ranges) if self.ooo.bytes_held else 0)
        return min(n, max_blocks)

    # -- receive RTT and buffer measurement ---------------------------------------------

    def rtt_sample_from_ts(self, rtt: float) -> None:
        """Linux tcp_rcv_rtt_measure_ts: our echoed timestamp comes back on the peer's data."""
        if rtt <= 0:
            rtt = 0.001
        if self.rcv_rtt == 0.0:
            self.rcv_rtt = rtt
        else:
            self.rcv_rtt += (rtt - self.rcv_rtt) / 8
        self._rtt_seq = None

    def rtt_measure_window(self, now: float) -> None:
        """Linux tcp_rcv_rtt_measure without timestamps: time to receive one window of data."""
        if self._rtt_seq is None:
            self._rtt_seq = self.rcv_nxt + max(self.window, self.rcv_mss)
            self._rtt_time = now
            return
        if self.rcv_nxt >= self._rtt_seq:
            sample = now - self._rtt_time
            if sample > 0:
                self.rcv_rtt = sample if self.rcv_rtt == 0.0 else min(self.rcv_rtt, sample)
            self._rtt_seq = self.rcv_nxt + max(self.window, self.rcv_mss)
            self._rtt_time = now

    # -- application side ---------------------------------------------------------------

    def read(self, max_bytes: int, now: float) -> bytes:
        if max_bytes <= 0 or not self._buf:
            return b""
        out = self._buf.read(max_bytes)
        self._space_adjust(len(out), now)
        return out

    def peek(self, max_bytes: int) -> bytes:
        """The next ``max_bytes`` readable bytes, left in the buffer (MSG_PEEK)."""
        return self._buf.peek(max_bytes)

    def _space_adjust(self, copied: int, now: float) -> None:
        """Linux tcp_rcv_space_adjust: bytes consumed by the application per receive RTT."""
        self._space_copied += copied
        rtt = self.rcv_rtt
        if rtt <= 0 or now - self._space_time < rtt:
            return
        copied = self._space_copied
        if copied > self.rcv_space:
            if self.capacity < self.autotune_max:
                self._grow_buffer(copied)
            self.rcv_space = copied
        self._space_copied = 0
        self._space_time = now

    def _grow_buffer(self, copied: int) -> None:
        """Linux tcp_rcv_space_adjust (dynamic right-sizing): the application read ``copied``
        bytes in the last receive RTT, more than in the one before. Twice that covers a loss
        episode; the sender may double per RTT (slow start) and the window offered now is used
        an RTT later, so the growth is counted twice again. 16 segments of cushion as Linux.
        The buffer holds payload only, so no truesize conversion (tcp_space_from_win)."""
        rcvwin = 2 * copied + 16 * self.advmss
        space = max(self.rcv_space, 1)
        rcvwin += 2 * (rcvwin * (copied - space) // space)
        size = min(rcvwin, self.autotune_max)
        if size > self.capacity:
            if self._ooo_max_bytes == self.capacity:
                # The out-of-order bound is the buffer (the default): it grows with it, or
                # the queue would drop data the bigger window invited, after SACKing some.
                self._ooo_max_bytes = size
                if self.ooo is not NO_OOO:
                    self.ooo.max_bytes = size
            self.capacity = size  # rcv_ssthresh (the window clamp) follows in _grow_window

    def shutdown_read(self) -> None:
        self.shut_rd = True
        self.bytes_discarded += len(self._buf)
        self._buf.clear()

    def window_update_worthwhile(self) -> bool:
        """After a read: would a window update open the window by a useful amount?

        RFC 1122 4.2.3.3 / Linux tcp_cleanup_rbuf: send an update when the window we could offer
        grew by at least min(buffer/2, MSS) past the one last advertised (and Linux: doubled).
        """
        if self.rcv_nxt - self.rcv_wup > self.rcv_mss:
            # The every-second-segment ACK that input processing left to this read (Linux
            # tcp_cleanup_rbuf: "Once-per-two-segments ACK was not sent by tcp_input.c").
            return True
        cur = max(self.rcv_adv - self.rcv_nxt, 0)
        offer = min(self.capacity - self._buf._len, self.rcv_ssthresh)  # _free(), inlined
        return offer - cur >= self.min_window_update and offer >= 2 * cur
