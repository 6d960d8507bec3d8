"""Packet channels: how IPv4 packets reach a network (smoltcp's ``phy``).

A :class:`Link` moves whole IPv4 packets in batches and knows nothing of TCP. Middleware wraps a
link and is itself one: :class:`Impairment` (delay, loss, rate ...) and :class:`PcapTap`.
:class:`MemoryNetwork` is an in-process switch for tests and emulated testbeds. The two ways onto
a real host's network, :func:`open_pcap_link` (raw IP socket out, pcap in, firewall guard: the
host's own address) and :func:`open_tun_link` (a TUN device with checksum/TSO offload: an address
of the stack's own), are imported on first use: they load pypcap and pyroute2.
"""

from typing import Any

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
    "open_pcap_link",
    "open_tun_link",
    "PcapLink",
    "TunLink",
]

_LAZY = {
    "open_pcap_link": "tcpstack.links.pcap",
    "PcapLink": "tcpstack.links.pcap",
    "open_tun_link": "tcpstack.links.tun",
    "TunLink": "tcpstack.links.tun",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
