"""PcapLink's receive side on a plain ``AF_PACKET`` socket: the fallback for jumbo frames.

pypcap is slow for 9000+ byte frames (~74k packets/s at 9000 B on this machine kind); a packet
socket read with ``recv_into`` is not. The socket is ``SOCK_DGRAM`` bound to the interface and
to ``ETH_P_IP``, so the kernel strips the link-layer header and the filter sees the IPv4 header at
offset 0: the same filter expression as the pcap backend
(:func:`~tcpstack.links.pcap.filter_expression`), compiled by libpcap for raw IPv4 and attached
with ``SO_ATTACH_FILTER``. The filter is attached before the socket is bound to a protocol, so no
unfiltered packet is ever queued. Transmit is PcapLink's raw IPv4 socket.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections import deque
from typing import Final

from tcpstack.links.pcap import (
    CAPTURE_BUFFER,
    InterfaceInfo,
    LinkSetupError,
    PcapLink,
    compile_bpf,
    filter_expression,
)

__all__ = ["AfPacketLink", "attach_filter"]

_ETH_P_IP: Final = 0x0800
_SO_ATTACH_FILTER: Final = 26
_SO_RCVBUFFORCE: Final = 33
_SOL_PACKET: Final = 263
_PACKET_IGNORE_OUTGOING: Final = 23
_LINKTYPE_RAW: Final = 12
#: Largest datagram read: a GRO-coalesced segment from a kernel peer can be 64 KiB.
_RECEIVE_SIZE: Final = 65536


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (a ``sock_filter`` array) to ``sock``."""
    if not program or len(program) % 8:
        raise ValueError("a BPF program is a non-empty array of 8-byte instructions")
    insns = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (padded to 16 bytes).
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


class AfPacketLink(PcapLink):
    """Raw IPv4 socket out, ``AF_PACKET`` + classic BPF in. Open with
    ``open_pcap_link(..., backend="afpacket")``."""

    def _open_rx(self, info: InterfaceInfo, address: str, ports: range) -> int:
        program = compile_bpf(filter_expression(address, ports), linktype=_LINKTYPE_RAW)
        # Protocol 0: nothing is delivered until bind() names one, after the filter is in place.
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        try:
            attach_filter(rx, program)
            try:
                rx.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # before Linux 4.20; outgoing copies are still excluded by the filter
            try:
                rx.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, CAPTURE_BUFFER)
            except OSError:
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_BUFFER)
            rx.bind((info.name, _ETH_P_IP))
            rx.setblocking(False)
        except OSError as exc:
            rx.close()
            raise LinkSetupError(exc.errno or errno.EIO,
                                 f"AF_PACKET socket on {info.name}: {exc.strerror}") from exc
        self._rx = rx
        self._buffer = bytearray(_RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        self._truncated = 0
        return rx.fileno()

    def _drain(self, into: deque[bytes], max_packets: int) -> None:
        recv_into = self._rx.recv_into
        view = self._view
        stats = self.stats
        for _ in range(max_packets):
            try:
                n = recv_into(view, _RECEIVE_SIZE, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            if n > _RECEIVE_SIZE:  # MSG_TRUNC returns the real length: never hand on a part
                self._truncated += 1
                stats.count_dropped(n)
                continue
            into.append(bytes(view[:n]))

    def capture_stats(self) -> tuple[int, int, int]:
        """(packets received, dropped for lack of buffer, truncated) since the last call.

        ``PACKET_STATISTICS`` resets the kernel's counters when read.
        """
        raw = self._rx.getsockopt(_SOL_PACKET, 6, 8)  # PACKET_STATISTICS: tp_packets, tp_drops
        packets, drops = struct.unpack("II", raw)
        truncated, self._truncated = self._truncated, 0
        return packets, drops, truncated

    def _close_rx(self) -> None:
        self._rx.close()
