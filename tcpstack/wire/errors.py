"""Errors raised by the wire codec.

Every way a received packet can be wrong ends in :class:`MalformedPacket` (a ``ValueError``), so
the stack's receive path needs one ``except`` clause; its message names the offending field.
"""

from __future__ import annotations

__all__ = ["MalformedPacket", "ChecksumError"]


class MalformedPacket(ValueError):
    """A packet that cannot be decoded; the message names the field at fault."""


class ChecksumError(MalformedPacket):
    """An IPv4 header, TCP or ICMP checksum that does not verify."""
