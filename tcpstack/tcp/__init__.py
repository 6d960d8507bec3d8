"""The sans-IO TCP engine: one connection as a deterministic state machine.

``Connection`` never imports trio and never reads a clock; the stack feeds it segments and time
and collects segments to send, deadlines, readable data and events (see DESIGN.md, layer ``tcp``).
Submodules (``state``, ``config``, ``events``, ``info``, ``congestion``, ``rtt``, ``seq``, ...) are
importable on their own; the names below are loaded on first use so that importing one submodule
does not pull in the whole engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcpstack.tcp.config import ConnectionOptions, KeepaliveOptions, Profile
    from tcpstack.tcp.congestion import (
        CongestionControl,
        available_congestion_controls,
        create_congestion_control,
        register_congestion_control,
    )
    from tcpstack.tcp.connection import Connection
    from tcpstack.tcp.events import Event
    from tcpstack.tcp.info import TCPInfo
    from tcpstack.tcp.state import CaState, TcpState

__all__ = [
    "Connection",
    "ConnectionOptions",
    "KeepaliveOptions",
    "Profile",
    "TcpState",
    "CaState",
    "TCPInfo",
    "Event",
    "CongestionControl",
    "register_congestion_control",
    "create_congestion_control",
    "available_congestion_controls",
]

_WHERE = {
    "Connection": "connection",
    "ConnectionOptions": "config",
    "KeepaliveOptions": "config",
    "Profile": "config",
    "TcpState": "state",
    "CaState": "state",
    "TCPInfo": "info",
    "Event": "events",
    "CongestionControl": "congestion",
    "register_congestion_control": "congestion",
    "create_congestion_control": "congestion",
    "available_congestion_controls": "congestion",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tcpstack.tcp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tcpstack.tcp.{module}"), name)
    globals()[name] = value
    return value
