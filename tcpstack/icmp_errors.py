"""ICMP errors for TCP connections (RFC 1122 section 4.2.3.9, RFC 5927, RFC 1191).

An ICMP error is believed only if it quotes one of our connections and a sequence number in
flight (RFC 5927 section 4.1, as Linux ``tcp_v4_err``): anything else may be an off-path attacker
guessing the 4-tuple. "Port/protocol unreachable" is a hard error for a connect in progress;
"net/host unreachable" and the others are soft: remembered, and reported only if the connection
then times out. "Fragmentation needed" lowers the path MTU (the engine's ``on_icmp``). Every
accepted message becomes an ``IcmpReceived`` event on the connection.

:class:`IcmpMixin` is part of :class:`tcpstack.stack.StackCore`.
"""

from __future__ import annotations

import errno
import os
import weakref
from typing import TYPE_CHECKING

from tcpstack.tcp import Connection
from tcpstack.tcp.seq import unwrap
from tcpstack.tcp.state import TcpState
from tcpstack.wire.segment import IcmpMessage, IcmpType

if TYPE_CHECKING:
    from tcpstack.listeners import ConnKey
    from tcpstack.stack import StackStats

__all__ = ["ICMP_UNREACH_ERRNO", "IcmpMixin", "errno_text"]

PROTO_TCP = 6

# Linux icmp_err_convert for destination unreachable: code -> errno. RFC 1122 4.2.3.9 makes
# codes 2 (protocol) and 3 (port) hard errors for a connect; the others are soft here.
ICMP_UNREACH_ERRNO = {
    0: errno.ENETUNREACH, 1: errno.EHOSTUNREACH, 2: errno.ENOPROTOOPT, 3: errno.ECONNREFUSED,
    4: errno.EMSGSIZE, 5: errno.EOPNOTSUPP, 6: errno.ENETUNREACH, 7: errno.EHOSTDOWN,
    8: errno.ENONET, 9: errno.ENETUNREACH, 10: errno.EHOSTUNREACH, 11: errno.ENETUNREACH,
    12: errno.EHOSTUNREACH, 13: errno.EHOSTUNREACH, 14: errno.EHOSTUNREACH, 15: errno.EHOSTUNREACH,
}


def errno_text(code: int) -> str:
    return os.strerror(code).lower()


class IcmpMixin:
    """ICMP input for :class:`tcpstack.stack.StackCore`."""

    if TYPE_CHECKING:
        address: str
        stats: StackStats
        _conns: dict[ConnKey, Connection]
        _soft_errors: weakref.WeakKeyDictionary[Connection, OSError]

        def _mark(self, conn: Connection) -> None: ...

    def _icmp(self, msg: IcmpMessage, now: float) -> None:
        stats = self.stats
        stats.icmp_in += 1
        if (
            msg.dst != self.address
            or msg.type not in (IcmpType.DEST_UNREACHABLE, IcmpType.TIME_EXCEEDED, IcmpType.SOURCE_QUENCH)
            or msg.quoted_protocol != PROTO_TCP
            or msg.quoted_src != self.address
            or msg.quoted_dst is None
            or msg.quoted_sport is None
            or msg.quoted_dport is None
            or msg.quoted_seq is None
        ):
            stats.icmp_ignored += 1
            return
        conn = self._conns.get((msg.quoted_sport, msg.quoted_dst, msg.quoted_dport))
        if conn is None or conn.state is TcpState.TIME_WAIT:
            stats.icmp_ignored += 1
            return
        # RFC 5927 section 4.1 (Linux tcp_v4_err): only a quote of data in flight is believable;
        # anything else may be an off-path attacker guessing the 4-tuple.
        seq = unwrap(msg.quoted_seq, conn.snd_una)
        if not conn.snd_una <= seq <= conn.snd_nxt:
            stats.icmp_out_of_window += 1
            return
        if msg.type == IcmpType.DEST_UNREACHABLE and msg.code != 4:
            code = ICMP_UNREACH_ERRNO.get(msg.code, errno.EHOSTUNREACH)
            # Soft error (RFC 1122 4.2.3.9): remembered, reported if the connection times out.
            self._soft_errors[conn] = OSError(
                code, f"{errno_text(code)} (ICMP type 3 code {msg.code} from {msg.src})"
            )
        conn.on_icmp(msg, now)  # the IcmpReceived event; hard errors; path MTU (RFC 1191)
        self._mark(conn)

