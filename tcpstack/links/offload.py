"""Software offloads for links that do the checksum work themselves (PcapLink).

What a NIC or the kernel would otherwise do, in Python, for :mod:`tcpstack.links.pcap` and
:mod:`tcpstack.links.afpacket`: judging received checksums (:func:`classify_checksums`,
:func:`ipv4_header_ok`), filling in a TCP checksum (:func:`with_tcp_checksum`), cutting a TCP
super-segment (:func:`segment_tcp`, Linux ``tcp_gso_segment``) and receive coalescing
(:func:`coalesce`, Linux ``tcp_gro_receive``). Pure functions on IPv4 packets; no I/O.

Receive coalescing
------------------
A kernel peer on a link without offloads sends MSS-sized segments; the engine's cost is per
segment (~tens of microseconds in CPython), the copy of the payload is not. So, like Linux's
GRO (``tcp_gro_receive``), a link may hand the stack one segment built from a run of in-order
data segments of one connection that arrived in the same batch, as the kernel hands a TUN or
veth reader the segments its own GRO built. The rules are Linux's, kept strict:

- only IPv4 without options, unfragmented, TCP data segments (payload not empty) whose flags are
  ACK or ACK|PSH and whose urgent pointer is zero;
- the same addresses and ports, TOS, TTL, DF bit, acknowledgment number, window and TCP option
  octets (timestamps included, so TSval is identical across the run), and each segment's
  sequence number is the end of the one before;
- a segment with PSH ends its run (it is merged, and the merged segment carries PSH), as do a
  segment that differs in anything above and the 64 KiB IPv4 limit. Segments of other
  connections may sit between two segments of a run: each connection's order is kept, and
  connections are independent.

The merged packet has the first segment's headers with the total length and the IPv4 header
checksum recomputed. Its TCP checksum field holds the pseudo-header sum (Linux's
CHECKSUM_PARTIAL form): every part was verified before merging, and the stack does not verify
again on a link whose ``checksum_offload`` is True. Nothing else may call this: a packet whose
checksum nobody checked must not be merged.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from tcpstack.wire.checksum import sum_congruent
from tcpstack.wire.vnet import checksums_ok

__all__ = [
    "GRO_MAX",
    "ChecksumVerdict",
    "classify_checksums",
    "coalesce",
    "complete_checksum",
    "ipv4_header_ok",
    "segment_tcp",
    "with_tcp_checksum",
]

#: The largest merged packet: the IPv4 total length field.
GRO_MAX: Final = 65535

_ACK: Final = 0x10
_PSH: Final = 0x08
_FIN: Final = 0x01
_CWR: Final = 0x80
_IPV4_MIN: Final = 20
_TCP_MIN: Final = 20
_PROTO_TCP: Final = 6
_CSUM = struct.Struct("!H")


# ---------------------------------------------------------------------------- checksums


class ChecksumVerdict(enum.IntEnum):
    """What a software check makes of a received packet's checksums."""

    VALID = 0
    #: The TCP checksum field holds the pseudo-header sum: CHECKSUM_PARTIAL from a local sender.
    PARTIAL = 1
    BAD = 2


def classify_checksums(packet: bytes | bytearray | memoryview, *,
                       partial_rule: bool) -> ChecksumVerdict:
    """Judge a received IPv4 packet's checksums in software.

    VALID if the IPv4 header checksum and the TCP/ICMP checksum verify. With ``partial_rule``,
    an unfragmented TCP packet whose IPv4 header verifies and whose TCP checksum field holds
    exactly the pseudo-header sum of its own addresses and TCP length is PARTIAL: that is what
    Linux leaves in the field of a CHECKSUM_PARTIAL packet (``__tcp_v4_send_check``) when a
    local sender (veth, tap, loopback) offloads the checksum and nothing on the way completed
    it. Everything else is BAD.
    """
    if checksums_ok(packet):
        return ChecksumVerdict.VALID
    if not partial_rule:
        return ChecksumVerdict.BAD
    n = len(packet)
    if n < _IPV4_MIN + _TCP_MIN or packet[0] >> 4 != 4 or packet[9] != _PROTO_TCP:
        return ChecksumVerdict.BAD
    ihl = (packet[0] & 0x0F) << 2
    total = int.from_bytes(packet[2:4], "big")
    if (ihl < _IPV4_MIN or total < ihl + _TCP_MIN or total > n or packet[6] & 0x3F or packet[7]
            or int.from_bytes(packet[:ihl], "big") % 0xFFFF):
        return ChecksumVerdict.BAD
    # The field is the folded, uncomplemented pseudo-header sum (RFC 9293 section 3.1); compare
    # modulo 65535 so that 0x0000 and 0xFFFF, the two forms of zero, both match.
    pseudo = int.from_bytes(packet[12:20], "big") + _PROTO_TCP + total - ihl
    field = int.from_bytes(packet[ihl + 16:ihl + 18], "big")
    if field % 0xFFFF == pseudo % 0xFFFF:
        return ChecksumVerdict.PARTIAL
    return ChecksumVerdict.BAD


def ipv4_header_ok(packet: bytes) -> bool:
    """Whether ``packet`` starts with a whole IPv4 header whose checksum verifies."""
    n = len(packet)
    if n < 20 or packet[0] >> 4 != 4:
        return False
    ihl = (packet[0] & 0x0F) << 2
    return 20 <= ihl <= n and int.from_bytes(packet[:ihl], "big") % 0xFFFF == 0


def with_tcp_checksum(packet: bytes) -> bytes | bytearray | None:
    """``packet`` (IPv4/TCP) with its TCP checksum computed over what it holds, whatever the
    field held before; a fragment unchanged (its checksum covers the whole datagram); None if
    the headers are inconsistent (the packet cannot be sent)."""
    size = len(packet)
    ihl = (packet[0] & 0x0F) << 2
    if ihl < _IPV4_MIN or size < ihl + _TCP_MIN or int.from_bytes(packet[2:4], "big") != size:
        return None
    if packet[6] & 0x3F or packet[7]:
        return packet
    at = ihl + 16
    old = (packet[at] << 8) | packet[at + 1]
    # Sums congruent modulo 65535 (see tcpstack.wire.checksum): the old field is taken out
    # again, so it need not have been zero.
    s = (sum_congruent(memoryview(packet)[ihl:]) - old
         + int.from_bytes(packet[12:20], "big") + _PROTO_TCP + size - ihl)
    out = bytearray(packet)
    _CSUM.pack_into(out, at, -s % 0xFFFF)
    return out


def complete_checksum(packet: bytes) -> bytes:
    """A CHECKSUM_PARTIAL packet with its TCP checksum completed (Linux ``skb_checksum_help``),
    for a stack that verifies checksums; anything :func:`with_tcp_checksum` cannot handle (or
    that is not TCP) unchanged, for the stack to judge."""
    if len(packet) < _IPV4_MIN + _TCP_MIN or packet[9] != _PROTO_TCP:
        return packet
    done = with_tcp_checksum(packet)
    return packet if done is None else bytes(done)


def segment_tcp(packet: bytes, mtu: int) -> list[bytes]:
    """Cut an IPv4/TCP super-segment into MTU-sized segments with complete checksums, as
    Linux's ``tcp_gso_segment`` does: consecutive sequence numbers and IP IDs, FIN and PSH on
    the last piece only, CWR on the first only. [] if it cannot be cut (options in the IPv4
    header, lengths that disagree, no room for payload)."""
    n = len(packet)
    if n < 40 or packet[0] != 0x45 or packet[9] != _PROTO_TCP or (packet[2] << 8 | packet[3]) != n:
        return []
    headers = 20 + ((packet[32] >> 4) << 2)
    mss = mtu - headers
    if headers < 40 or headers > n or mss <= 0:
        return []
    seq = int.from_bytes(packet[24:28], "big")
    ip_id = (packet[4] << 8) | packet[5]
    flags = packet[33]
    payload = memoryview(packet)[headers:]
    out: list[bytes] = []
    for i, start in enumerate(range(0, len(payload), mss)):
        chunk = payload[start:start + mss]
        header = bytearray(packet[:headers])
        header[2:4] = (headers + len(chunk)).to_bytes(2, "big")
        header[4:6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
        header[10:12] = b"\x00\x00"
        header[10:12] = (-int.from_bytes(header[:20], "big") % 0xFFFF).to_bytes(2, "big")
        header[24:28] = ((seq + start) & 0xFFFFFFFF).to_bytes(4, "big")
        piece_flags = flags if start + mss >= len(payload) else flags & ~(_FIN | _PSH)
        header[33] = piece_flags & ~_CWR if i else piece_flags
        piece = with_tcp_checksum(bytes(header) + chunk)
        if piece is None:
            return []
        out.append(bytes(piece))
    return out


# ---------------------------------------------------------------------------- coalescing


class _Run:
    """A merged segment being built: the first segment's headers and the payloads so far."""

    __slots__ = ("first", "header_len", "same", "next_seq", "parts", "size", "push", "count")

    def __init__(self, packet: bytes, header_len: int, same: bytes, next_seq: int,
                 push: bool) -> None:
        self.first = packet
        self.header_len = header_len
        self.same = same
        self.next_seq = next_seq
        self.parts: list[bytes | memoryview] = [memoryview(packet)[header_len:]]
        self.size = len(packet)
        self.push = push
        self.count = 1

    def build(self) -> bytes:
        if self.count == 1:
            return self.first  # nothing merged: the packet as it arrived
        header = bytearray(self.first[:self.header_len])
        size = self.size
        header[2:4] = size.to_bytes(2, "big")
        header[10:12] = b"\x00\x00"
        header[10:12] = (-int.from_bytes(header[:20], "big") % 0xFFFF).to_bytes(2, "big")
        if self.push:
            header[33] |= _PSH
        # CHECKSUM_PARTIAL form: the folded pseudo-header sum (RFC 9293 section 3.1).
        pseudo = (int.from_bytes(header[12:20], "big") + 6 + size - 20) % 0xFFFF or 0xFFFF
        header[36:38] = pseudo.to_bytes(2, "big")
        return b"".join((header, *self.parts))


def _mergeable(packet: bytes) -> int:
    """The header length of a segment GRO may merge, or 0."""
    n = len(packet)
    if n < 40 or packet[0] != 0x45 or packet[9] != 6 or packet[6] & 0x3F or packet[7]:
        return 0
    if packet[33] & ~_PSH != _ACK or packet[38] or packet[39]:
        return 0
    header_len = 20 + ((packet[32] >> 4) << 2)
    if header_len < 40 or header_len >= n or (packet[2] << 8 | packet[3]) != n:
        return 0
    return header_len


def coalesce(packets: list[bytes]) -> tuple[list[bytes], int]:
    """``packets`` with runs of in-order data segments merged (see the module docstring);
    also the number of segments that were merged into an earlier one."""
    out: list[bytes | _Run] = []
    runs: dict[bytes, _Run] = {}  # connection -> its last run, while it can still grow
    merged = 0
    for packet in packets:
        header_len = _mergeable(packet)
        if not header_len:
            if len(packet) >= 24 and packet[9] == 6:
                # A control segment (or one GRO does not take) ends its connection's run, so
                # nothing of that connection is merged across it.
                runs.pop(packet[12:24], None)
            out.append(packet)
            continue
        key = packet[12:24]
        # TOS, DF, TTL, acknowledgment, window and options must all match along a run.
        same = b"".join((packet[1:2], packet[6:7], packet[8:9], packet[28:32],
                         packet[34:36], packet[40:header_len]))
        seq = int.from_bytes(packet[24:28], "big")
        push = bool(packet[33] & _PSH)
        payload = len(packet) - header_len
        run = runs.get(key)
        if (run is not None and run.same == same and run.next_seq == seq
                and run.size + payload <= GRO_MAX):
            run.parts.append(memoryview(packet)[header_len:])
            run.size += payload
            run.next_seq = (seq + payload) & 0xFFFFFFFF
            run.count += 1
            merged += 1
            if push:
                run.push = True
                del runs[key]
            continue
        run = _Run(packet, header_len, same, (seq + payload) & 0xFFFFFFFF, push)
        out.append(run)
        if push:
            runs.pop(key, None)
        else:
            runs[key] = run
    if not merged:
        return packets, 0
    return [item.build() if isinstance(item, _Run) else item for item in out], merged
