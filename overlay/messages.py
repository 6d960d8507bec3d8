"""Overlay wire format: length-prefixed, versioned frames authenticated hop by hop.

Every frame on a peer link (one TCP stream between two neighbours) is, in network byte order::

    offset  size  field
    0       4     length       bytes after this field (the frame is 4 + length bytes)
    4       1     version      VERSION
    5       1     type         MsgType
    6       1     sender_len   1..255
    7       n     sender       the sending node's id, UTF-8
    7+n     8     counter      per-sender, strictly increasing
    15+n    ...   body         depends on type, below
    -32     32    mac          HMAC-SHA256(key, every byte before it), untruncated

The MAC covers the length prefix and the header, so a frame cannot be cut, extended, re-typed or
re-attributed without the key. The counter makes each frame unique: a reader accepts a frame
from sender S only if its counter is above the last one it accepted from S (TCP delivers in
order, so a window is not needed). A writer starts its counter at the wall clock in ns, so a
restarted node, or a new link to the same neighbour, never reuses a counter that a reader (or a
shared :class:`ReplayGuard`) has seen.

Bodies (``str`` is u8 length + 1..255 bytes of UTF-8; floats are IEEE 754 binary64, so every
value round-trips exactly)::

    Hello       str node_id, u16 listen_port, u64 boot
    Lsa         str origin, u64 seq, u16 count, count * LinkAdvert
      LinkAdvert  str neighbour, f64 latency (s), f64 loss, f64 throughput (B/s), u8 up
    Data        str src, str dst, u64 flow, u64 msg_id, u8 flags (bit 0 reliable), u8 hop,
                u8 path_len, path_len * str, payload (the rest of the body)
    DataAck     str src, str dst, u64 msg_id, u8 hop, u8 path_len, path_len * str
    Probe       u64 nonce, f64 sent, f64 rtt (s; the sender's last probe RTT, 0 if none)
    ProbeReply  u64 nonce, f64 sent

Reading (:class:`FrameReader`): a frame whose version is not ours is dropped as BAD_VERSION, a
wrong MAC as BAD_MAC, an old counter as REPLAY, a header or body that does not parse (or a
valid MAC on garbage) as MALFORMED; the stream stays in step because the length prefix says
where the next frame starts. A length prefix announcing more than ``max_frame`` bytes is
different: the reader cannot tell a huge frame from a corrupt prefix and will not buffer it,
so it counts one OVERSIZE drop, becomes *poisoned* (:attr:`FrameReader.poisoned`), discards
everything after, and the caller must close the link. Nothing raises out of
:meth:`FrameReader.feed`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import math
import struct
import time
from collections.abc import Callable

import attrs

from overlay.droplog import DropReason, DropStats, RateLimitedLog

# The LSA body codec lives in overlay.lsacodec; LinkAdvert and Lsa stay importable from here,
# and so do its caches under their old names (tests inspect them).
from overlay.lsacodec import (
    _LSA_BODIES,  # noqa: F401
    _LSAS,  # noqa: F401
    LinkAdvert,
    Lsa,
    decode_lsa,
    encode_lsa,
)
from overlay.lsacodec import Malformed as _Malformed
from overlay.lsacodec import decode_strings as _strings
from overlay.lsacodec import encode_str as _str

__all__ = [
    "VERSION",
    "MAC_SIZE",
    "MAX_PATH",
    "DropReason",
    "DropStats",
    "FrameError",
    "FrameReader",
    "FrameWriter",
    "Hello",
    "LinkAdvert",
    "Lsa",
    "Data",
    "DataAck",
    "Probe",
    "ProbeReply",
    "Message",
    "MsgType",
    "RateLimitedLog",
    "ReplayGuard",
    "decode_frame",
]

_log = logging.getLogger(__name__)

VERSION = 2  # 2: Probe carries the sender's last probe RTT
MAC_SIZE = 32
#: Longest source route a Data or DataAck frame can carry (one length byte).
MAX_PATH = 255

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IBBB")  # length, version, type, sender_len
_HELLO_TAIL = struct.Struct(">HQ")
_DATA_MID = struct.Struct(">QQBBB")  # flow, msg_id, flags, hop, path_len
_ACK_MID = struct.Struct(">QBB")  # msg_id, hop, path_len
_PROBE = struct.Struct(">Qdd")  # nonce, sent, rtt
_PROBE_REPLY = struct.Struct(">Qd")  # nonce, sent
_U64_MAX = (1 << 64) - 1
_MIN_FRAME = _HEAD.size + 1 + _U64.size + MAC_SIZE  # one-byte sender, empty body


class MsgType(enum.IntEnum):
    HELLO = 1
    LSA = 2
    DATA = 3
    DATA_ACK = 4
    PROBE = 5
    PROBE_REPLY = 6


class FrameError(ValueError):
    """A frame that must be dropped, and why."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# -- messages ----------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Hello:
    """First frame each side of a peer link sends. ``boot`` identifies the sender's run (a new
    value after a restart), so the peer can tell a restart from a reconnect."""

    node_id: str
    listen_port: int
    boot: int


@attrs.frozen(slots=True)
class Data:
    """Application payload on the source route ``path`` (src .. dst, chosen by the source);
    ``hop`` is the index in ``path`` of the node that should receive this frame."""

    src: str
    dst: str
    flow: int
    msg_id: int
    reliable: bool
    path: tuple[str, ...]
    hop: int
    payload: bytes


@attrs.frozen(slots=True)
class DataAck:
    """End-to-end acknowledgement of ``msg_id``, routed back along ``path``."""

    src: str
    dst: str
    msg_id: int
    path: tuple[str, ...]
    hop: int


@attrs.frozen(slots=True)
class Probe:
    """Liveness and RTT probe for an idle link; ``sent`` is the sender's clock (s).

    ``rtt`` is the RTT the sender measured with its previous probe (0.0: none yet). A link's
    round trip is the same seen from either end, so one end probing serves both: the other end
    takes the reported RTT in as its own sample (see :mod:`overlay.peerlink`).
    """

    nonce: int
    sent: float
    rtt: float = 0.0


@attrs.frozen(slots=True)
class ProbeReply:
    """Echo of a :class:`Probe`'s ``nonce`` and ``sent``."""

    nonce: int
    sent: float


Message = Hello | Lsa | Data | DataAck | Probe | ProbeReply


# -- body encoding -----------------------------------------------------------------------------


def _path(path: tuple[str, ...], hop: int) -> bytes:
    if not 1 <= len(path) <= MAX_PATH:
        raise ValueError(f"path must have 1..{MAX_PATH} nodes, got {len(path)}")
    if not 0 <= hop < len(path):
        raise ValueError(f"hop {hop} is outside the path of {len(path)} nodes")
    return b"".join([_str(node, "path node") for node in path])


def _encode_body(msg: Message) -> tuple[int, bytes]:
    # Data first: it is the common case on a busy link.
    if type(msg) is Data:
        return MsgType.DATA, b"".join(
            (
                _str(msg.src, "Data.src"),
                _str(msg.dst, "Data.dst"),
                _DATA_MID.pack(
                    msg.flow, msg.msg_id, 1 if msg.reliable else 0, msg.hop, len(msg.path)
                ),
                _path(msg.path, msg.hop),
                msg.payload,
            )
        )
    if type(msg) is DataAck:
        return MsgType.DATA_ACK, b"".join(
            (
                _str(msg.src, "DataAck.src"),
                _str(msg.dst, "DataAck.dst"),
                _ACK_MID.pack(msg.msg_id, msg.hop, len(msg.path)),
                _path(msg.path, msg.hop),
            )
        )
    if type(msg) is Probe or type(msg) is ProbeReply:
        if not isinstance(msg.sent, int | float) or not math.isfinite(msg.sent):
            raise ValueError(f"{type(msg).__name__}.sent must be a finite time, got {msg.sent!r}")
        if not isinstance(msg, Probe):
            return MsgType.PROBE_REPLY, _PROBE_REPLY.pack(msg.nonce, msg.sent)
        rtt = msg.rtt
        if not isinstance(rtt, int | float) or not (math.isfinite(rtt) and rtt >= 0):
            raise ValueError(f"Probe.rtt must be a finite number >= 0, got {rtt!r}")
        return MsgType.PROBE, _PROBE.pack(msg.nonce, msg.sent, rtt)
    if type(msg) is Lsa:
        return MsgType.LSA, encode_lsa(msg)
    if type(msg) is Hello:
        return MsgType.HELLO, _str(msg.node_id, "Hello.node_id") + _HELLO_TAIL.pack(
            msg.listen_port, msg.boot
        )
    raise ValueError(f"not an overlay message: {msg!r}")


# -- body decoding --------------------------------------------------------------------------------


def _decode_body(kind: int, body: bytes) -> Message:
    """Parse a body (exactly the bytes between the counter and the MAC). Any overrun shows up
    as IndexError or struct.error, bad UTF-8 as UnicodeDecodeError: the caller maps them all
    to MALFORMED."""
    msg: Message
    if kind == _DATA:
        (src, dst), pos = _strings(body, 0, 2)
        flow, msg_id, flags, hop, count = _DATA_MID.unpack_from(body, pos)
        if flags & ~1 or count == 0 or hop >= count:
            raise _Malformed("bad Data flags or path")
        path, pos = _strings(body, pos + _DATA_MID.size, count)
        return Data(src, dst, flow, msg_id, bool(flags), tuple(path), hop, body[pos:])
    if kind == _DATA_ACK:
        (src, dst), pos = _strings(body, 0, 2)
        msg_id, hop, count = _ACK_MID.unpack_from(body, pos)
        if count == 0 or hop >= count:
            raise _Malformed("bad DataAck path")
        path, pos = _strings(body, pos + _ACK_MID.size, count)
        msg = DataAck(src, dst, msg_id, tuple(path), hop)
    elif kind == _PROBE_KIND:
        nonce, sent, rtt = _PROBE.unpack_from(body)
        pos = _PROBE.size
        if not (math.isfinite(sent) and math.isfinite(rtt) and rtt >= 0):
            raise _Malformed("probe time or RTT is not a finite time")
        msg = Probe(nonce, sent, rtt)
    elif kind == _PROBE_REPLY_KIND:
        nonce, sent = _PROBE_REPLY.unpack_from(body)
        pos = _PROBE_REPLY.size
        if not math.isfinite(sent):
            raise _Malformed("probe time is not finite")
        msg = ProbeReply(nonce, sent)
    elif kind == _LSA:
        return decode_lsa(body)
    elif kind == _HELLO:
        (node_id,), pos = _strings(body, 0, 1)
        port, boot = _HELLO_TAIL.unpack_from(body, pos)
        pos += _HELLO_TAIL.size
        msg = Hello(node_id, port, boot)
    else:
        raise _Malformed(f"unknown message type {kind}")
    if pos != len(body):
        raise _Malformed(f"{len(body) - pos} trailing bytes")
    return msg


_KINDS = frozenset(int(k) for k in MsgType)
_DATA = int(MsgType.DATA)
_DATA_ACK = int(MsgType.DATA_ACK)
_PROBE_KIND = int(MsgType.PROBE)
_PROBE_REPLY_KIND = int(MsgType.PROBE_REPLY)
_LSA = int(MsgType.LSA)
_HELLO = int(MsgType.HELLO)


# -- frames ------------------------------------------------------------------------------------


_last_counter_start = 0


def _counter_start() -> int:
    # Wall-clock ns (below 2**64 until the year 2554): a restarted node starts above every
    # counter it used before, since it cannot have sent a frame per nanosecond. Kept
    # increasing within the process in case the wall clock steps back.
    global _last_counter_start
    start = max(time.time_ns(), _last_counter_start + 1)
    _last_counter_start = start
    return start


class FrameWriter:
    """Encodes messages from ``sender`` into authenticated frames, one counter per writer."""

    __slots__ = ("_key", "sender", "max_frame", "counter", "_sender_field")

    def __init__(
        self,
        key: bytes,
        sender: str,
        *,
        max_frame: int = 65536,
        counter_start: int | None = None,
    ) -> None:
        if not isinstance(key, bytes) or not key:
            raise ValueError("the frame key must be non-empty bytes")
        raw = sender.encode("utf-8")
        if not 1 <= len(raw) <= 255:
            raise ValueError(f"sender id must be 1..255 bytes of UTF-8, got {sender!r}")
        if max_frame < _MIN_FRAME + len(raw):
            raise ValueError(f"max_frame {max_frame} cannot hold a frame header")
        self._key = key
        self.sender = sender
        self.max_frame = max_frame
        #: The counter of the next frame.
        self.counter = _counter_start() if counter_start is None else counter_start
        if not 0 <= self.counter <= _U64_MAX:
            raise ValueError(f"counter_start must fit in 64 bits, got {counter_start}")
        self._sender_field = raw

    def encode(self, msg: Message) -> bytes:
        """One frame carrying ``msg``; ``ValueError`` if a field is out of range or the frame
        would exceed ``max_frame``. The counter is consumed only by a frame actually built."""
        try:
            kind, body = _encode_body(msg)
        except struct.error as exc:
            raise ValueError(f"{type(msg).__name__}: a field is out of range ({exc})") from None
        sender = self._sender_field
        size = _HEAD.size + len(sender) + 8 + len(body) + MAC_SIZE
        if size > self.max_frame:
            raise ValueError(
                f"{type(msg).__name__} frame of {size} bytes exceeds max_frame {self.max_frame}"
            )
        counter = self.counter
        if counter > _U64_MAX:
            raise ValueError("frame counter exhausted; open a new writer")
        signed = b"".join(
            (_HEAD.pack(size - 4, VERSION, kind, len(sender)), sender, _U64.pack(counter), body)
        )
        self.counter = counter + 1
        return signed + hmac.digest(self._key, signed, hashlib.sha256)


class ReplayGuard:
    """The last accepted counter of each sender. Share one between the readers of successive
    links to the same neighbour so that frames captured on an old connection cannot be
    replayed into a new one. At most ``max_senders`` are tracked; frames from further senders
    are refused (TOO_MANY_SENDERS) rather than forgetting a sender, which would re-open it to
    replay."""

    __slots__ = ("_last", "max_senders")

    def __init__(self, *, max_senders: int = 4096) -> None:
        self._last: dict[str, int] = {}
        self.max_senders = max_senders

    def check_and_commit(self, sender: str, counter: int) -> None:
        last = self._last.get(sender)
        if last is None:
            if len(self._last) >= self.max_senders:
                raise FrameError(DropReason.TOO_MANY_SENDERS, f"no room for sender {sender!r}")
        elif counter <= last:
            raise FrameError(DropReason.REPLAY, f"counter {counter} <= {last} from {sender!r}")
        self._last[sender] = counter

    def last(self, sender: str) -> int | None:
        return self._last.get(sender)


def decode_frame(
    key: bytes, frame: bytes, replay: ReplayGuard | None = None
) -> tuple[str, Message]:
    """Authenticate and decode one complete frame (length prefix included); ``FrameError``
    with the drop reason otherwise. With ``replay`` the counter is checked and, once the MAC
    holds, committed (also when the body then fails to parse: the sender did send it)."""
    n = len(frame)
    if n < 6:
        raise FrameError(DropReason.MALFORMED, f"{n} bytes is too short for a frame")
    if _U32.unpack_from(frame)[0] != n - 4:
        raise FrameError(DropReason.MALFORMED, "length prefix does not match the frame")
    if frame[4] != VERSION:
        raise FrameError(DropReason.BAD_VERSION, f"version {frame[4]}, expected {VERSION}")
    if n < _MIN_FRAME:
        raise FrameError(DropReason.MALFORMED, f"{n} bytes is too short for a frame")
    mac_at = n - MAC_SIZE
    if not hmac.compare_digest(hmac.digest(key, frame[:mac_at], hashlib.sha256), frame[mac_at:]):
        raise FrameError(DropReason.BAD_MAC, "HMAC-SHA256 does not match")
    kind = frame[5]
    sender_len = frame[6]
    counter_at = 7 + sender_len
    if sender_len == 0 or counter_at + 8 > mac_at:
        raise FrameError(DropReason.MALFORMED, "sender field overruns the frame")
    try:
        sender = frame[7:counter_at].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(DropReason.MALFORMED, "sender id is not UTF-8") from None
    if replay is not None:
        replay.check_and_commit(sender, _U64.unpack_from(frame, counter_at)[0])
    try:
        return sender, _decode_body(kind, frame[counter_at + 8 : mac_at])
    except (_Malformed, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise FrameError(
            DropReason.MALFORMED, f"{MsgType(kind).name if kind in _KINDS else kind} body: {exc}"
        ) from None


class FrameReader:
    """Splits a byte stream into frames and returns the authentic, fresh, well-formed ones.

    ``on_drop`` (optional) is called with each :class:`FrameError`, e.g. to log through a
    :class:`RateLimitedLog`; an exception it raises is logged, not propagated.
    """

    __slots__ = ("_key", "max_frame", "replay", "stats", "on_drop", "_buf", "_poisoned")

    def __init__(
        self,
        key: bytes,
        *,
        max_frame: int = 65536,
        replay: ReplayGuard | None = None,
        on_drop: Callable[[FrameError], None] | None = None,
    ) -> None:
        if not isinstance(key, bytes) or not key:
            raise ValueError("the frame key must be non-empty bytes")
        self._key = key
        self.max_frame = max_frame
        self.replay = replay if replay is not None else ReplayGuard()
        self.stats = DropStats()
        self.on_drop = on_drop
        self._buf = bytearray()
        self._poisoned = False

    @property
    def poisoned(self) -> bool:
        """A length prefix beyond ``max_frame`` arrived: the stream cannot be resynchronised,
        everything after it is discarded, and the caller should close the link."""
        return self._poisoned

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (always below ``max_frame``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[str, Message]]:
        """Add stream bytes; return ``(sender id, message)`` for every complete good frame.
        Incomplete frames are kept until the rest arrives; bad ones are dropped and counted."""
        if self._poisoned:
            self.stats.discarded_bytes += len(data)
            return []
        buf = self._buf
        buf += data
        out: list[tuple[str, Message]] = []
        pos = 0
        avail = len(buf)
        while avail - pos >= 4:
            total = 4 + _U32.unpack_from(buf, pos)[0]
            if total > self.max_frame:
                self._poisoned = True
                self.stats.discarded_bytes += avail - pos
                self._drop(
                    FrameError(
                        DropReason.OVERSIZE, f"length prefix {total} > max_frame {self.max_frame}"
                    )
                )
                buf.clear()
                return out
            if avail - pos < total:
                break
            frame = bytes(buf[pos : pos + total])
            pos += total
            try:
                out.append(decode_frame(self._key, frame, self.replay))
            except FrameError as exc:
                self._drop(exc)
            else:
                self.stats.accepted += 1
                self.stats.accepted_bytes += total
        del buf[:pos]
        return out

    def _drop(self, exc: FrameError) -> None:
        self.stats.by_reason[exc.reason] += 1
        if self.on_drop is not None:
            try:
                self.on_drop(exc)
            except Exception:  # feed() must not raise, whatever the hook does
                _log.exception("FrameReader.on_drop hook failed")
