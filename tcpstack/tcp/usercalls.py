"""The user calls of a connection (RFC 9293 sections 3.10.2-3.10.6) and what the application
may ask of it.

SEND, RECEIVE, CLOSE (with Linux's half-close, ``shutdown``), ABORT and ``setsockopt``, plus the
readable bytes, the send space, end of file and the error as an exception.
:class:`UserCallsMixin` is part of :class:`tcpstack.tcp.connection.Connection`: the OPEN call
(3.10.1) and segment arrival (3.10.7) are in :mod:`tcpstack.tcp.connection`, timeouts (3.10.8)
in :mod:`tcpstack.tcp.timeouts`.
"""

from __future__ import annotations

from typing import Any

from tcpstack.tcp.handshake import HandshakeMixin
from tcpstack.tcp.sockopts import apply_options
from tcpstack.tcp.state import (
    ST_CLOSE_WAIT,
    ST_CLOSED,
    ST_ESTABLISHED,
    ST_FIN_WAIT_1,
    ST_FIN_WAIT_2,
    ST_LAST_ACK,
    ST_LISTEN,
    ST_SYN_RECEIVED,
    ST_SYN_SENT,
    ST_TIME_WAIT,
)

__all__ = ["UserCallsMixin"]

_ERRORS = {
    "connection reset by peer": ConnectionResetError,
    "connection refused": ConnectionRefusedError,
    "connection timed out": TimeoutError,
    "user timeout": TimeoutError,
    "connection aborted": ConnectionAbortedError,
}


class UserCallsMixin(HandshakeMixin):
    """The application's side of :class:`tcpstack.tcp.connection.Connection`."""

    __slots__ = ()

    # -- public properties --------------------------------------------------------------

    @property
    def readable_bytes(self) -> int:
        return self.rcv.readable

    @property
    def send_space(self) -> int:
        if self.shut_wr or self.state in (ST_CLOSED, ST_TIME_WAIT):
            return 0
        return self.sndbuf.space

    @property
    def at_eof(self) -> bool:
        """The peer's FIN has been received and every byte before it read."""
        return self.rcv.fin_received and self.rcv.readable == 0

    @property
    def local(self) -> tuple[str, int]:
        return (self.local_addr, self.local_port)

    @property
    def remote(self) -> tuple[str, int]:
        return (self.remote_addr, self.remote_port)

    def error_exception(self) -> OSError | None:
        """The exception the API layer should raise for :attr:`error` (None if no error)."""
        if self.error is None:
            return None
        return _ERRORS.get(self.error, ConnectionError)(self.error)

    # -- application calls --------------------------------------------------------------

    def set_options(self, **changes: Any) -> None:
        """Change options at run time as ``setsockopt`` does on Linux: ``nodelay``,
        ``keepalive``, ``user_timeout``, ``congestion``, ``send_buffer``, ``receive_buffer``,
        ``mss`` (see :mod:`tcpstack.tcp.sockopts`). ``ValueError`` names unknown options or bad
        values, and then nothing changes."""
        apply_options(self, changes)
        # Linux SOCK_SNDBUF_LOCK / SOCK_RCVBUF_LOCK: a size the user sets ends autotuning.
        if "send_buffer" in changes:
            self.sndbuf_auto = False
        if "receive_buffer" in changes:
            self.rcv.autotune_max = 0

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue ``data``; return the number of bytes accepted (bounded by the send buffer)."""
        exc = self.error_exception()
        if exc is not None:
            raise exc
        if self.shut_wr or self.state not in (
            ST_SYN_SENT, ST_SYN_RECEIVED, ST_ESTABLISHED, ST_CLOSE_WAIT,
        ):
            raise BrokenPipeError(f"connection is not open for sending (state {self.state})")
        n = self.sndbuf.append(data)
        if n and not self.sb:
            self.idle_check = True
        if n < len(data) and self.sndbuf_limited_start is None:
            self.sndbuf_limited_start = self.last_now
        return n

    def receive(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of in-order data; b"" when none (``at_eof`` tells EOF apart)."""
        data = self.rcv.read(max_bytes, self.last_now)
        if data and self.state in (
            ST_ESTABLISHED, ST_FIN_WAIT_1, ST_FIN_WAIT_2
        ) and self.rcv.window_update_worthwhile():
            # RFC 9293 3.8.6.2.2 / Linux tcp_cleanup_rbuf: tell the peer the window reopened.
            self.ack_now = True
        return data

    def shutdown_read(self) -> None:
        """SHUT_RD: discard what is buffered and what arrives later (still acknowledged)."""
        self.rcv.shutdown_read()

    def shutdown_write(self) -> None:
        """Half-close (RFC 9293 3.10.4 CLOSE): a FIN follows the queued data."""
        st = self.state
        if self.shut_wr or st in (ST_CLOSED, ST_LISTEN):
            self.shut_wr = True
            return
        self.shut_wr = True
        now = self.last_now
        if st in (ST_ESTABLISHED, ST_SYN_RECEIVED):
            self._set_state(ST_FIN_WAIT_1, now)
        elif st is ST_CLOSE_WAIT:
            self._set_state(ST_LAST_ACK, now)
        # SYN_SENT: the FIN goes out once established (RFC 9293: "queue ... until ESTABLISHED").

    def close(self) -> None:
        """The application is done with the connection (both directions)."""
        now = self.last_now
        self.app_closed = True
        st = self.state
        if st in (ST_CLOSED, ST_LISTEN):
            return
        if st is ST_SYN_SENT:
            self._close(now)
            return
        if self.rcv.readable and self.profile.rst_on_close_with_unread_data:
            # RFC 2525 2.17 / Linux tcp_close: unread data is lost, so say so with a RST.
            self._abort_with_rst(now, "close with unread data")
            return
        self.rcv.shutdown_read()
        self.shutdown_write()
        if self.state is ST_FIN_WAIT_2:
            self._arm_fin_wait_2(now)

    def abort(self) -> None:
        """RFC 9293 3.10.5 ABORT: send a RST if synchronized, drop everything."""
        if self.state in (ST_CLOSED, ST_LISTEN):
            return
        if self.state is ST_SYN_SENT:
            self._close(self.last_now, "connection aborted")
            return
        self._abort_with_rst(self.last_now, "abort", "connection aborted")
