"""Packet channels: how IPv4 packets reach a network (smoltcp's ``phy``).

A :class:`Link` moves whole IPv4 packets in batches and knows nothing of TCP. Middleware wraps a
link and is itself one: :class:`Impairment` (delay, loss, rate ...) and :class:`PcapTap`.
:class:`MemoryNetwork` is an in-process switch for tests and emulated testbeds.
"""

from tcpstack.links.base import (
    DEFAULT_BATCH,
    DeadlineScheduler,
    Link,
    LinkStats,
    Middleware,
    ipv4_destination,
)
from tcpstack.links.impairment import (
    Impairment,
    ImpairmentConfig,
    ImpairmentModel,
    ImpairmentStats,
)
from tcpstack.links.memory import MemoryLink, MemoryNetwork, NetworkStats
from tcpstack.links.pcap_tap import LINKTYPE_RAW, PcapTap

__all__ = [
    "DEFAULT_BATCH",
    "LINKTYPE_RAW",
    "DeadlineScheduler",
    "Impairment",
    "ImpairmentConfig",
    "ImpairmentModel",
    "ImpairmentStats",
    "Link",
    "LinkStats",
    "MemoryLink",
    "MemoryNetwork",
    "Middleware",
    "NetworkStats",
    "PcapTap",
    "ipv4_destination",
]
