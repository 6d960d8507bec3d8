"""Event subscriptions of an :class:`~overlay.node.OverlayNode` (``node.subscribe()``).

A :class:`Subscription` is a bounded queue of the node's path and link events; the node pushes
into every subscription in its set and closes them all when it closes.
"""

from __future__ import annotations

import collections

import trio

from overlay.types import NodeStats, OverlayEvent

__all__ = ["Subscription"]


class Subscription:
    """A bounded queue of path and link events; iterate it with ``async for``.

    When ``maxlen`` events are waiting the oldest is dropped and counted in :attr:`dropped` (and
    the node's ``stats.events_dropped``). Iteration ends when the node closes or after
    :meth:`aclose`.
    """

    def __init__(
        self, maxlen: int, *, stats: NodeStats, subscribers: set[Subscription]
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self._stats = stats
        self._subscribers = subscribers  # the node's set, which aclose() leaves
        self._queue: collections.deque[OverlayEvent] = collections.deque()
        self._maxlen = maxlen
        self._lot = trio.lowlevel.ParkingLot()
        self.closed = False
        self.dropped = 0

    def _push(self, event: OverlayEvent) -> None:
        if len(self._queue) >= self._maxlen:
            self._queue.popleft()
            self.dropped += 1
            self._stats.events_dropped += 1
        self._queue.append(event)
        self._lot.unpark_all()

    def _close(self) -> None:
        self.closed = True
        self._lot.unpark_all()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> OverlayEvent:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            await self._lot.park()
        await trio.lowlevel.checkpoint()
        return self._queue.popleft()

    async def aclose(self) -> None:
        self._subscribers.discard(self)
        self._close()
        await trio.lowlevel.checkpoint()
