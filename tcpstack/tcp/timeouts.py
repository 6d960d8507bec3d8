"""Timer expiry: SYN/SYN-ACK retransmission, persist (zero-window probes), keep-alive,
TIME-WAIT and the orphaned FIN-WAIT-2 timeout. The data RTO itself is in
:mod:`tcpstack.tcp.recovery`; the deadlines live in :class:`tcpstack.tcp.timers.Timers`."""

from __future__ import annotations

from tcpstack.tcp.events import KeepaliveTimeout, ResetSent, RtoFired
from tcpstack.tcp.recovery import RecoveryMixin
from tcpstack.tcp.sender import SENDING_STATES
from tcpstack.tcp.state import (
    ST_CLOSED,
    ST_FIN_WAIT_2,
    ST_SYN_RECEIVED,
    ST_SYN_SENT,
    ST_TIME_WAIT,
)
from tcpstack.tcp.timers import (
    TK_DELACK,
    TK_KEEPALIVE,
    TK_LOSS_PROBE,
    TK_PERSIST,
    TK_REO_TIMEOUT,
    TK_RETRANSMIT,
    TK_TIME_WAIT,
)
from tcpstack.wire.segment import TcpFlags, TcpOptions, TcpSegment, Timestamps

__all__ = ["TimeoutMixin"]

_ACK = TcpFlags.ACK
_RST = TcpFlags.RST


class TimeoutMixin(RecoveryMixin):
    """Timer handlers of :class:`tcpstack.tcp.connection.Connection`."""

    __slots__ = ()  # the state lives in ConnectionCore's slots

    def _arm_time_wait(self, now: float) -> None:
        self.timers.set(TK_TIME_WAIT, now + self.opts.time_wait)

    def _arm_fin_wait_2(self, now: float) -> None:
        # Linux tcp_fin_timeout: an orphaned FIN-WAIT-2 does not wait forever for the peer.
        self.timers.set(TK_TIME_WAIT, now + self.opts.time_wait)

    def _abort_with_rst(self, now: float, reason: str, error: str | None = None) -> None:
        # The RST is built by the next poll_transmit(now), so that its timestamp is current
        # even when the application call that caused it (close, abort) carries no time.
        self.rst_pending = reason
        self._close(now, error)

    def _build_active_rst(self, now: float, reason: str) -> TcpSegment:
        # Linux tcp_send_active_reset: RST|ACK at snd_nxt, with the timestamp option.
        opts = (
            TcpOptions(timestamps=Timestamps(self._tsval(now), self.ts_recent),
                       layout=self.profile.data_layout(ts=True, sack=False))
            if self.ts_ok else None
        )
        seg = self._emit(self.snd_nxt, _RST | _ACK, now, options=opts)
        self._event(ResetSent(now, self.conn_id, reason))
        return seg

    # -- timers -------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        """Fire every timer due at ``now`` (early calls do nothing)."""
        if now > self.last_now:
            self.last_now = now
        for kind in self.timers.pop_due(now):
            if self.state is ST_CLOSED:
                return
            if kind is TK_RETRANSMIT:
                if self.state in (ST_SYN_SENT, ST_SYN_RECEIVED):
                    self._on_syn_timeout(now)
                else:
                    self._on_rto(now)
            elif kind is TK_DELACK:
                if self.state.synchronized and self.rcv.ack_pending:
                    self.ack_now = True
            elif kind is TK_PERSIST:
                self._on_persist(now)
            elif kind is TK_KEEPALIVE:
                self._on_keepalive(now)
            elif kind is TK_LOSS_PROBE:
                self._on_loss_probe_timer(now)
            elif kind is TK_REO_TIMEOUT:
                if self.state in SENDING_STATES and self.sb:
                    self._on_reo_timeout(now)
            elif kind is TK_TIME_WAIT:
                if self.state in (ST_TIME_WAIT, ST_FIN_WAIT_2):
                    self._close(now)

    def _on_syn_timeout(self, now: float) -> None:
        limit = (
            self.opts.syn_retries if self.state is ST_SYN_SENT
            else self.profile.synack_retries
        )
        ct = self.profile.connect_timeout
        if self.retransmits >= limit or (ct is not None and now - self.created >= ct):
            self._close(now, "connection timed out")
            return
        self.retransmits += 1
        self.total_rto += 1
        self.rtt.on_timeout()
        self._event(RtoFired(now, self.conn_id, self.rtt.backoff, self.rtt.rto))
        self.syn_pending = True
        self.timers.set(TK_RETRANSMIT, now + self.rtt.rto)

    def _on_persist(self, now: float) -> None:
        if self.state not in SENDING_STATES or self.sb or self.unsent_bytes == 0:
            self.persist_backoff = 0
            return
        ut = self.opts.user_timeout
        if self.probes_out == 0:
            self.probe_start = now
        elif ut is not None and now - self.probe_start >= ut:
            self._abort_timeout(now, "user timeout")
            return
        if self.probes_out >= self.profile.data_retries:
            self._abort_timeout(now, "connection timed out")
            return
        if self.snd_una + self.snd_wnd > self.snd_nxt:
            # RFC 1122 4.2.3.4 (d): the override timeout. The window is open but too small
            # for SWS avoidance; send what fits (Linux tcp_write_wakeup does the same).
            self.sws_override = True
            self.persist_backoff += 1
            return
        self.probes_out += 1
        self._send_probe(now)
        self.persist_backoff += 1
        self._arm_persist(now)

    def _on_keepalive(self, now: float) -> None:
        ka = self.opts.keepalive
        if not ka.enabled or not self.state.synchronized or self.state is ST_TIME_WAIT:
            return
        if self.sb or self.unsent_bytes:
            self.timers.set(TK_KEEPALIVE, now + ka.idle)
            return
        idle = now - self.last_rx
        wait = ka.interval if self.probes_out else ka.idle
        if idle < wait:
            self.timers.set(TK_KEEPALIVE, self.last_rx + wait)
            return
        if self.probes_out >= ka.count:
            self._event(KeepaliveTimeout(now, self.conn_id, self.probes_out))
            self._abort_with_rst(now, "keepalive timeout", "connection timed out")
            return
        self.probes_out += 1
        self._send_probe(now)
        self.timers.set(TK_KEEPALIVE, now + ka.interval)
