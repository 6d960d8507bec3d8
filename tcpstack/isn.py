"""Initial sequence numbers as RFC 6528 section 3 specifies them, and SYN cookies.

    ISN = M + F(localip, localport, remoteip, remoteport, secretkey)

M is a timer that ticks every 4 microseconds; F is a keyed hash (BLAKE2s here, keyed with 32
random bytes per stack). The same 4-tuple gets increasing ISNs over time, so a new incarnation of a
connection does not collide with old segments, while an off-path attacker cannot predict them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct

import attrs

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.connection import Connection
from tcpstack.tcp.state import TcpState
from tcpstack.wire.segment import TcpFlags, TcpOptions, TcpSegment, Timestamps

__all__ = ["IsnGenerator", "SynCookies", "COOKIE_MSS_TABLE", "cookie_mss_index", "cookie_tsval",
           "encode_cookie_options", "decode_cookie_options"]

_TICKS_PER_SECOND = 250_000  # one tick every 4 us (RFC 6528 section 3)
_TUPLE = struct.Struct("!4sH4sH")
MASK = 0xFFFFFFFF


class IsnGenerator:
    """RFC 6528 ISNs; ``secret`` fixed only by tests that want repeatable numbers."""

    __slots__ = ("_secret", "_keyed", "_packed")

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)
        if not 1 <= len(self._secret) <= 32:
            raise ValueError("the ISN secret must be 1 to 32 bytes")
        # Keying BLAKE2 costs a compression of the key block; done once here, and each ISN
        # copies the keyed state (the same digest as hashing with key=, a third of the time).
        self._keyed = hashlib.blake2s(key=self._secret, digest_size=4)
        # Packed addresses: a stack uses few, and inet_aton is a call per address per ISN.
        self._packed: dict[str, bytes] = {}

    def _pack(self, address: str) -> bytes:
        packed = self._packed.get(address)
        if packed is None:
            if len(self._packed) >= 1024:
                self._packed.clear()
            packed = self._packed[address] = socket.inet_aton(address)
        return packed

    def __call__(
        self, local_addr: str, local_port: int, remote_addr: str, remote_port: int, now: float
    ) -> int:
        h = self._keyed.copy()
        h.update(_TUPLE.pack(self._pack(local_addr), local_port, self._pack(remote_addr),
                             remote_port))
        f = int.from_bytes(h.digest(), "big")
        m = int(now * _TICKS_PER_SECOND)
        return (m + f) & 0xFFFFFFFF


# -- SYN cookies ---------------------------------------------------------------------------------
#
# When a listener's SYN queue is full the stack answers a SYN without keeping any state: the
# SYN-ACK's ISN is a cookie from which the returning ACK rebuilds the connection. The layout is
# Linux's (net/ipv4/syncookies.c, secure_tcp_syn_cookie):
#
#   cookie = H0(4-tuple) + peer_isn + (minute << 24) + ((H1(4-tuple, minute) + mss_index) mod 2^24)
#
# The top 8 bits carry a minute counter, so a cookie is valid for MAX_COOKIE_AGE minutes; the
# low 24 bits carry the peer's MSS as an index into COOKIE_MSS_TABLE, hidden under a keyed hash.
# Window scale, SACK-permitted and ECN do not fit in the sequence number: as in Linux
# (cookie_init_timestamp) they ride in the low 6 bits of our SYN-ACK's TSval, which the peer
# echoes in TSecr. A peer without timestamps gets a connection without those options.

COOKIE_BITS = 24
COOKIE_MASK = (1 << COOKIE_BITS) - 1
COOKIE_MSS_TABLE = (536, 1300, 1440, 1460)  # Linux msstab: the common MSS values, rounded down
MAX_COOKIE_AGE = 2  # minutes (Linux MAX_SYNCOOKIE_AGE)
TS_OPTION_BITS = 6  # Linux TSBITS
TS_WSCALE_NONE = 0xF  # TS_OPT_WSCALE_MASK: "no window scaling"
TS_SACK = 1 << 4
TS_ECN = 1 << 5


def cookie_mss_index(mss: int) -> int:
    """The largest table entry not above ``mss`` (the first one for anything smaller)."""
    for index in range(len(COOKIE_MSS_TABLE) - 1, 0, -1):
        if mss >= COOKIE_MSS_TABLE[index]:
            return index
    return 0


def encode_cookie_options(wscale: int | None, sack: bool, ecn: bool) -> int:
    """The 6 option bits carried in a cookie SYN-ACK's TSval (Linux cookie_init_timestamp)."""
    bits = TS_WSCALE_NONE if wscale is None else min(wscale, 14)
    if sack:
        bits |= TS_SACK
    if ecn:
        bits |= TS_ECN
    return bits


def decode_cookie_options(bits: int) -> tuple[int | None, bool, bool]:
    """(peer's window scale or None, SACK permitted, ECN) from the echoed TSval's low bits."""
    wscale_bits = bits & TS_WSCALE_NONE
    return (
        None if wscale_bits == TS_WSCALE_NONE else wscale_bits,
        bool(bits & TS_SACK),
        bool(bits & TS_ECN),
    )


def cookie_tsval(ts_now: int, option_bits: int) -> int:
    """A TSval not after ``ts_now`` whose low 6 bits are ``option_bits``."""
    ts = ((ts_now >> TS_OPTION_BITS) << TS_OPTION_BITS) | option_bits
    if ts > ts_now:
        ts -= 1 << TS_OPTION_BITS
    return ts & 0xFFFFFFFF


class SynCookies:
    """Make and check SYN cookies for the stack at ``address`` (keyed like
    :class:`IsnGenerator`), and build what they stand for with the engine."""

    __slots__ = ("_secret", "address")

    def __init__(self, address: str, secret: bytes | None = None) -> None:
        self.address = address
        self._secret = secret if secret is not None else os.urandom(32)
        if not 1 <= len(self._secret) <= 32:
            raise ValueError("the SYN cookie secret must be 1 to 32 bytes")

    def _hash(self, tuple4: bytes, count: int, which: int) -> int:
        data = tuple4 + struct.pack("!IB", count & 0xFFFFFFFF, which)
        return int.from_bytes(hashlib.blake2s(data, key=self._secret, digest_size=4).digest(), "big")

    def _tuple(self, peer: str, peer_port: int, local_port: int) -> bytes:
        return _TUPLE.pack(socket.inet_aton(peer), peer_port, socket.inet_aton(self.address), local_port)

    @staticmethod
    def minute(now: float) -> int:
        return int(now // 60.0)

    def make(self, peer: str, peer_port: int, local_port: int, peer_isn: int, mss_index: int,
             now: float) -> int:
        """Our ISN for a SYN from ``peer`` with sequence number ``peer_isn``."""
        if not 0 <= mss_index < len(COOKIE_MSS_TABLE):
            raise ValueError(f"mss_index must be in 0..{len(COOKIE_MSS_TABLE) - 1}")
        t = self._tuple(peer, peer_port, local_port)
        count = self.minute(now)
        return (
            self._hash(t, 0, 0) + peer_isn + ((count & 0xFF) << COOKIE_BITS)
            + ((self._hash(t, count, 1) + mss_index) & COOKIE_MASK)
        ) & MASK

    def check(self, peer: str, peer_port: int, local_port: int, peer_isn: int, cookie: int,
              now: float) -> int | None:
        """The MSS index a valid ``cookie`` carries, or None (forged, stale or for another
        connection). Linux check_tcp_syn_cookie."""
        t = self._tuple(peer, peer_port, local_port)
        count = self.minute(now)
        rest = (cookie - self._hash(t, 0, 0) - peer_isn) & MASK
        age = (count - (rest >> COOKIE_BITS)) & 0xFF
        if age >= MAX_COOKIE_AGE:
            return None
        index = (rest - self._hash(t, count - age, 1)) & COOKIE_MASK
        return index if index < len(COOKIE_MSS_TABLE) else None

    def ts_offset(self, peer: str) -> int:
        """A per address pair TSval offset (Linux secure_tcp_ts_off), so that cookie
        connections' timestamps do not reveal the stack's clock."""
        data = socket.inet_aton(peer) + socket.inet_aton(self.address) + b"ts"
        return int.from_bytes(hashlib.blake2s(data, key=self._secret, digest_size=4).digest(), "big")

    # -- with the engine -------------------------------------------------------------------

    def syn_ack(self, syn: TcpSegment, options: ConnectionOptions, now: float) -> list[TcpSegment]:
        """The cookie SYN-ACK answering ``syn``.

        The engine builds it (so its options and their layout are those of any other SYN-ACK)
        from a throw-away passive connection. Options the cookie cannot carry are stripped first.
        """
        opts = syn.options
        mss_index = cookie_mss_index(opts.mss or 536)
        if opts.timestamps is not None and options.timestamps:
            bits = encode_cookie_options(
                opts.wscale if options.window_scaling else None,
                opts.sack_permitted and options.sack,
                options.ecn and bool(syn.flags & TcpFlags.ECE) and bool(syn.flags & TcpFlags.CWR),
            )
            ms = int(now * 1000.0)
            tsval = cookie_tsval((ms + self.ts_offset(syn.src)) & MASK, bits)
            ts_offset: int | None = (tsval - ms) & MASK
        else:
            # Without timestamps nothing can carry window scale, SACK-permitted or ECN.
            syn = attrs.evolve(
                syn, flags=syn.flags & ~(TcpFlags.ECE | TcpFlags.CWR),
                options=attrs.evolve(opts, wscale=None, sack_permitted=False, timestamps=None),
            )
            ts_offset = None
        iss = self.make(syn.src, syn.sport, syn.dport, syn.seq, mss_index, now)
        scratch = Connection.from_syn(syn, iss=iss, options=options, now=now, ts_offset=ts_offset)
        return scratch.poll_transmit(now)

    def validate(self, ack: TcpSegment, now: float) -> int | None:
        """The MSS index if ``ack`` (a bare ACK to a listener) returns one of our cookies."""
        return self.check(ack.src, ack.sport, ack.dport, (ack.seq - 1) & MASK,
                          (ack.ack - 1) & MASK, now)

    def rebuild(self, ack: TcpSegment, mss_index: int, options: ConnectionOptions, now: float,
                conn_id: int) -> Connection | None:
        """The connection a validated cookie ACK completes, or None if the engine refuses it.

        The engine has no constructor for "established from a cookie", so this replays the
        handshake: ``Connection.from_syn`` with the SYN the cookie describes, a poll for the
        SYN-ACK (already sent statelessly: the output is discarded) dated when it left, then the
        ACK itself. The echoed TSval dates the SYN-ACK to within the 64 ms its low bits blur (as
        in Linux), which gives the handshake's RTT sample; without timestamps the SYN-ACK is
        dated now and that first sample is ~0 (the RTO then sits at its floor until real samples
        arrive, where Linux would take no sample).
        """
        ts = ack.options.timestamps
        flags = TcpFlags.SYN
        wscale: int | None = None
        sack = False
        syn_ts: Timestamps | None = None
        ts_offset: int | None = None
        sent = now
        if ts is not None and ts.tsecr and options.timestamps:
            wscale, sack, ecn = decode_cookie_options(ts.tsecr)
            if ecn:
                flags |= TcpFlags.ECE | TcpFlags.CWR
            syn_ts = Timestamps(ts.tsval, 0)
            ts_offset = self.ts_offset(ack.src)
            age = (((int(now * 1000.0) + ts_offset) & MASK) - ts.tsecr) & MASK
            if age <= 1000 * 60 * MAX_COOKIE_AGE:
                sent = now - age / 1000.0
        syn = TcpSegment(
            src=ack.src, dst=ack.dst, sport=ack.sport, dport=ack.dport, seq=(ack.seq - 1) & MASK,
            ack=0, flags=flags, window=ack.window,
            options=TcpOptions(
                mss=COOKIE_MSS_TABLE[mss_index], wscale=wscale, sack_permitted=sack,
                timestamps=syn_ts,
            ),
        )
        conn = Connection.from_syn(
            syn, iss=(ack.ack - 1) & MASK, options=options, now=sent, conn_id=conn_id,
            ts_offset=ts_offset,
        )
        conn.poll_transmit(sent)
        conn.on_segment(ack, now)
        if conn.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            return None
        return conn
