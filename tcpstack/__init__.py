"""tcpstack: a user-level TCP/IP stack for Linux that runs under trio.

Layers, bottom up (imports point down only): ``wire`` (codecs) -> ``tcp`` (sans-IO engine) ->
``links`` (packet channels) -> ``stack`` -> ``api``. The application-facing names are re-exported
here lazily, so that importing the engine (``tcpstack.tcp``) never pulls in trio.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("tcpstack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from tcpstack.api import Stack, TCPListener, TCPStream, open_stack

__all__ = ["__version__", "Stack", "TCPListener", "TCPStream", "open_stack"]

_API_NAMES = frozenset({"Stack", "TCPListener", "TCPStream", "open_stack"})


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from tcpstack import api

        return getattr(api, name)
    raise AttributeError(f"module 'tcpstack' has no attribute {name!r}")
