"""overlay: An overlay network whose routing reads each link's live TCP state."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tcpstack")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
