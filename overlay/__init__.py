"""overlay: An overlay network whose routing reads each link's live TCP state.

The public API is re-exported here lazily (on first attribute access), so ``import overlay``
stays cheap for the command line and does not pull in trio and the stack::

    from overlay import open_node, NodeConfig, Neighbour
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("tcpstack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "open_node": "overlay.node",
    "OverlayNode": "overlay.node",
    "Subscription": "overlay.subscription",
    "NodeConfig": "overlay.config",
    "Neighbour": "overlay.config",
    "MetricSettings": "overlay.config",
    "RoutingSettings": "overlay.config",
    "ConfigError": "overlay.config",
    "LinkQuality": "overlay.metrics",
    "Delivery": "overlay.types",
    "PathQuality": "overlay.types",
    "PathChange": "overlay.types",
    "LinkChange": "overlay.types",
    "NodeStats": "overlay.types",
}

__all__ = [
    "__version__",
    "open_node",
    "OverlayNode",
    "Subscription",
    "NodeConfig",
    "Neighbour",
    "MetricSettings",
    "RoutingSettings",
    "ConfigError",
    "LinkQuality",
    "Delivery",
    "PathQuality",
    "PathChange",
    "LinkChange",
    "NodeStats",
]

if TYPE_CHECKING:
    from overlay.config import (
        ConfigError,
        MetricSettings,
        Neighbour,
        NodeConfig,
        RoutingSettings,
    )
    from overlay.metrics import LinkQuality
    from overlay.node import OverlayNode, open_node
    from overlay.subscription import Subscription
    from overlay.types import Delivery, LinkChange, NodeStats, PathChange, PathQuality


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'overlay' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
