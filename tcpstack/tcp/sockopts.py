"""Run-time option changes on a live connection, as ``setsockopt`` makes them on Linux.

:func:`apply_options` backs :meth:`tcpstack.tcp.connection.Connection.set_options`. Every change
is validated first (the same ranges as :class:`tcpstack.tcp.config.ConnectionOptions`), so a bad
call changes nothing; then each one is applied the way Linux applies the matching socket option:

* ``nodelay`` (TCP_NODELAY): turning it on releases data Nagle held, at the next poll
  (Linux ``tcp_push_pending_frames`` from ``__tcp_sock_set_nodelay``).
* ``quickack`` (TCP_QUICKACK, kept on rather than Linux's one-shot): every in-order data segment
  is ACKed at once, so the peer's RTT samples carry no delayed-ACK time.
* ``keepalive`` (SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT): the timer is re-armed from the time the
  connection has already been idle (``keepalive_time_elapsed``), or stopped.
* ``user_timeout`` (TCP_USER_TIMEOUT): takes effect when the retransmission or persist timer is
  next armed or fires (Linux only stores ``icsk_user_timeout``); 0 or ``None`` turns it off.
* ``congestion`` (TCP_CONGESTION): a new controller whose cwnd and ssthresh are the old ones
  (``tcp_reinit_congestion_control`` keeps ``snd_cwnd``/``snd_ssthresh``, they live in the socket).
* ``send_buffer`` (SO_SNDBUF): the new bound applies to later ``send`` calls; queued bytes stay.
* ``receive_buffer`` (SO_RCVBUF): before our SYN/SYN-ACK it also fixes the window scale (Linux
  ``tcp_select_initial_window`` uses the locked buffer); afterwards only the buffer changes and
  the advertised right edge never moves left (RFC 9293 3.8.6.2.2).
* ``mss`` (TCP_MAXSEG): only before our SYN/SYN-ACK leaves, as it is what we advertise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from tcpstack.tcp.config import KeepaliveOptions
from tcpstack.tcp.receiver import window_scale_for
from tcpstack.tcp.state import TcpState
from tcpstack.tcp.timers import TimerKind

if TYPE_CHECKING:
    # The engine below the user calls: every part a connection is made of.
    from tcpstack.tcp.handshake import HandshakeMixin as Connection

__all__ = ["RUNTIME_OPTIONS", "apply_options"]

RUNTIME_OPTIONS = frozenset({
    "nodelay", "quickack", "keepalive", "user_timeout", "congestion", "send_buffer",
    "receive_buffer", "mss",
})


def _handshake_started(conn: Connection) -> bool:
    """Our SYN or SYN-ACK has been sent: what it advertised (MSS, window scale) is fixed."""
    return conn.snd_nxt != conn.iss or conn.state not in (
        TcpState.CLOSED, TcpState.LISTEN, TcpState.SYN_SENT, TcpState.SYN_RECEIVED,
    )


def apply_options(conn: Connection, changes: Mapping[str, Any]) -> None:
    """Validate ``changes`` as a whole, then apply them to ``conn`` (see the module docstring)."""
    unknown = sorted(set(changes) - RUNTIME_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; settable: {', '.join(sorted(RUNTIME_OPTIONS))}"
        )
    changes = dict(changes)
    for flag in ("nodelay", "quickack"):
        if isinstance(changes.get(flag), int):
            changes[flag] = bool(changes[flag])  # setsockopt passes an int flag
    if changes.get("user_timeout") == 0:
        changes["user_timeout"] = None  # TCP_USER_TIMEOUT 0: back to the system default (off)
    if "mss" in changes and _handshake_started(conn):
        raise ValueError("mss can only be changed before the SYN is sent (TCP_MAXSEG)")
    if "keepalive" in changes and not isinstance(changes["keepalive"], KeepaliveOptions):
        raise TypeError(f"keepalive must be a KeepaliveOptions, got {changes['keepalive']!r}")
    # One validation path for every value: the same checks a new connection's options pass.
    options = attrs.evolve(conn.options, **changes)
    resolved = options.resolve()
    new_cc = None
    if "congestion" in changes and changes["congestion"] != conn.opts.congestion:
        # Raises ValueError naming the registered algorithms for an unknown one.
        new_cc = conn._new_cc(conn.mss_cache, resolved)
    old = conn.opts
    conn.options = options
    conn.opts = resolved

    if new_cc is not None:
        new_cc.cwnd = conn.cc.cwnd
        new_cc.ssthresh = conn.cc.ssthresh
        conn.cc = new_cc

    if "quickack" in changes:
        conn.rcv.quickack = resolved.quickack

    if "send_buffer" in changes:
        conn.sndbuf.capacity = resolved.send_buffer

    if "mss" in changes:
        conn.advmss = resolved.mss
        conn.rcv.advmss = resolved.mss
        conn._sync_mss()

    if "receive_buffer" in changes:
        _set_receive_buffer(conn, resolved.receive_buffer, before_syn=not _handshake_started(conn))

    if "keepalive" in changes and changes["keepalive"] != old.keepalive:
        _rearm_keepalive(conn, resolved.keepalive)


def _set_receive_buffer(conn: Connection, size: int, *, before_syn: bool) -> None:
    rcv = conn.rcv
    rcv.capacity = size
    rcv.min_window_update = max(1, min(size // 2, conn.advmss))
    if before_syn:
        # tcp_select_initial_window: with SO_RCVBUF set the scale covers that buffer only.
        offer = window_scale_for(size) if conn.opts.window_scaling else 0
        conn.rcv_wscale_offer = offer
        if conn.wscale_ok:
            rcv.rcv_wscale = offer
        start = min(size, 65535)
        if start > conn.advmss:
            start = (start // conn.advmss) * conn.advmss
        rcv.rcv_ssthresh = start
    else:
        # The window already promised stays (select_window never moves rcv_adv left); what
        # is offered from now on is bounded by the new buffer.
        rcv.rcv_ssthresh = min(rcv.rcv_ssthresh, size)


def _rearm_keepalive(conn: Connection, ka: KeepaliveOptions) -> None:
    timers = conn.timers
    if not ka.enabled:
        timers.cancel(TimerKind.KEEPALIVE)
        if not timers.is_set(TimerKind.PERSIST):
            conn.probes_out = 0  # the unanswered probes were keep-alives
        return
    if not conn.state.synchronized or conn.state is TcpState.TIME_WAIT:
        return  # armed when the connection is established
    # Linux keepalive_time_elapsed: the idle time already spent counts toward the new idle.
    wait = ka.interval if conn.probes_out else ka.idle
    timers.set(TimerKind.KEEPALIVE, max(conn.last_rx + wait, conn.last_now))
