"""Initial sequence numbers as RFC 6528 section 3 specifies them.

    ISN = M + F(localip, localport, remoteip, remoteport, secretkey)

M is a timer that ticks every 4 microseconds; F is a keyed hash (BLAKE2s here, keyed with 32
random bytes per stack). The same 4-tuple gets increasing ISNs over time, so a new incarnation of a
connection does not collide with old segments, while an off-path attacker cannot predict them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct

__all__ = ["IsnGenerator"]

_TICKS_PER_SECOND = 250_000  # one tick every 4 us (RFC 6528 section 3)
_TUPLE = struct.Struct("!4sH4sH")


class IsnGenerator:
    """RFC 6528 ISNs; ``secret`` fixed only by tests that want repeatable numbers."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)
        if not 1 <= len(self._secret) <= 32:
            raise ValueError("the ISN secret must be 1 to 32 bytes")

    def __call__(
        self, local_addr: str, local_port: int, remote_addr: str, remote_port: int, now: float
    ) -> int:
        key = _TUPLE.pack(
            socket.inet_aton(local_addr), local_port, socket.inet_aton(remote_addr), remote_port
        )
        f = int.from_bytes(hashlib.blake2s(key, key=self._secret, digest_size=4).digest(), "big")
        m = int(now * _TICKS_PER_SECOND)
        return (m + f) & 0xFFFFFFFF
