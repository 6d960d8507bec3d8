"""tcpstack: a user-level TCP/IP stack for Linux that runs under trio.

Layers, bottom up (imports point down only): ``wire`` (codecs) -> ``tcp`` (sans-IO engine) ->
``links`` (packet channels) -> ``stack`` -> ``api``. See the project README.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tcpstack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
