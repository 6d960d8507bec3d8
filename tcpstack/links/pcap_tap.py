"""Middleware that records every packet crossing a link, both directions, to a pcap file.

The file has LINKTYPE_RAW (101): each record is a bare IPv4 packet, which is what links carry, so
Wireshark/tshark/tcpdump read it directly. Timestamps are trio time mapped onto the wall clock
(under ``MockClock`` that is virtual time, which keeps simulated captures meaningful: gaps are
the simulated gaps). Pass ``epoch`` to fix the mapping and make capture files reproducible.

Writing is synchronous buffered file I/O on the packet path: a debugging and testbed tool,
not for hot benchmarks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import BinaryIO, Final

import dpkt
import trio

from tcpstack.links.base import DEFAULT_BATCH, Link, Middleware

__all__ = ["LINKTYPE_RAW", "PcapTap"]

#: Raw IPv4/IPv6 link type in pcap file headers (tcpdump.org link-layer header types). dpkt's
#: own DLT_RAW constant is the platform's DLT value (12 or 14), not the on-file LINKTYPE.
LINKTYPE_RAW: Final = 101
_SNAPLEN: Final = 65535  # the largest IPv4 packet; nothing is truncated


class PcapTap(Middleware):
    """Write packets sent and received through ``link`` to ``path`` (overwritten).

    Sent packets are recorded when handed to the link, received ones when returned to the
    caller. The file is flushed and closed by :meth:`aclose` (and ``async with``); :meth:`flush`
    makes what was written so far readable while the tap runs.
    """

    def __init__(
        self, link: Link, path: str | os.PathLike[str], *, epoch: float | None = None
    ) -> None:
        super().__init__(link)
        self.path = os.fspath(path)
        self._epoch = epoch
        self._file: BinaryIO | None = open(self.path, "wb")  # closed by aclose
        self._writer = dpkt.pcap.Writer(self._file, snaplen=_SNAPLEN, linktype=LINKTYPE_RAW)
        self.packets_written = 0

    @property
    def capturing(self) -> bool:
        return self._file is not None

    def _timestamp(self) -> float:
        now = trio.current_time()
        if self._epoch is None:
            self._epoch = time.time() - now
        # Round to whole microseconds first: dpkt rounds the fraction alone, which can carry
        # into an invalid 1_000_000 usec field.
        micros = round((self._epoch + now) * 1e6)
        seconds, micros = divmod(micros, 1_000_000)
        return seconds + micros / 1e6

    def _record(self, packets: list[bytes]) -> None:
        if self._file is None or not packets:
            return
        ts = self._timestamp()
        write = self._writer.writepkt_time
        for packet in packets:
            write(packet, ts)
        self.packets_written += len(packets)

    def send_batch(self, packets: Iterable[bytes]) -> None:
        if self.inner.closed:
            raise trio.ClosedResourceError("link is closed")
        batch = [bytes(p) for p in packets]
        self._record(batch)
        self.inner.send_batch(batch)

    async def receive_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        batch = await self.inner.receive_batch(max_packets)
        self._record(batch)
        return batch

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    async def aclose(self) -> None:
        file, self._file = self._file, None
        try:
            if file is not None:
                file.close()  # flushes the buffered records
        finally:
            await self.inner.aclose()
