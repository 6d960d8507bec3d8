"""What the overlay drops, and how it says so: drop reasons, per-reader counters, a rate-limited log.

:class:`DropReason` names why a frame was refused (:mod:`overlay.messages` raises it inside a
:class:`~overlay.messages.FrameError`); :class:`DropStats` counts them per reader, and
:class:`RateLimitedLog` keeps a peer that sends garbage from flooding the log: at most one line
per second per peer, with the count of the lines suppressed in between. A leaf module (no
overlay imports); :mod:`overlay.messages` re-exports all three names.
"""

from __future__ import annotations

import enum
import logging

import attrs

__all__ = ["DropReason", "DropStats", "RateLimitedLog"]


class DropReason(enum.Enum):
    MALFORMED = "malformed"  # header or body does not parse (after a good MAC, or too short)
    BAD_VERSION = "bad_version"
    OVERSIZE = "oversize"  # length prefix above max_frame: the reader is poisoned
    BAD_MAC = "bad_mac"
    REPLAY = "replay"  # counter not above the last accepted from that sender
    TOO_MANY_SENDERS = "too_many_senders"  # the replay table is full (resource bound)


@attrs.define(slots=True)
class DropStats:
    """Frames dropped by one reader, per reason; plus frames and bytes accepted."""

    by_reason: dict[DropReason, int] = attrs.Factory(lambda: dict.fromkeys(DropReason, 0))
    accepted: int = 0
    accepted_bytes: int = 0
    discarded_bytes: int = 0  # bytes thrown away after the reader was poisoned

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def __getitem__(self, reason: DropReason) -> int:
        return self.by_reason[reason]

    def as_dict(self) -> dict[str, int]:
        """``{reason name: count}`` for reasons that occurred (NodeStats.drops keys)."""
        return {r.name: n for r, n in self.by_reason.items() if n}


class RateLimitedLog:
    """Log at most one line per ``interval`` seconds per peer; lines suppressed in between are
    counted and reported with the next line that gets through. Pure: the caller passes ``now``.
    At most ``max_peers`` peers are remembered (the oldest is forgotten first)."""

    __slots__ = ("logger", "interval", "level", "max_peers", "_last", "_suppressed")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 1.0,
        level: int = logging.WARNING,
        max_peers: int = 1024,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self.max_peers = max_peers
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, peer: str, now: float, msg: str, *args: object) -> bool:
        """Emit ``msg % args`` for ``peer`` unless one was emitted less than ``interval`` ago;
        return whether it was emitted."""
        last = self._last.get(peer)
        if last is not None and now - last < self.interval:
            self._suppressed[peer] = self._suppressed.get(peer, 0) + 1
            return False
        suppressed = self._suppressed.pop(peer, 0)
        if suppressed:
            msg += " (%d more suppressed)"
            args = (*args, suppressed)
        self.logger.log(self.level, "%s: " + msg, peer, *args)
        self._last.pop(peer, None)
        self._last[peer] = now  # dicts keep insertion order: oldest first
        while len(self._last) > self.max_peers:
            oldest = next(iter(self._last))
            del self._last[oldest]
            self._suppressed.pop(oldest, None)
        return True

    def suppressed(self, peer: str) -> int:
        return self._suppressed.get(peer, 0)
