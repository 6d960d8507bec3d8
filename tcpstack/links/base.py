"""The packet channel abstraction every link and middleware implements.

A link moves whole IPv4 packets in batches (a trio wake-up costs ~40 us, so the stack reads and
writes many packets per wake-up). Sending is synchronous and never blocks: the engine side flushes
its output without awaiting, and a link whose queue is full drops and counts, as a NIC ring does.
Receiving awaits until at least one packet is there and then returns what is queued, up to a bound.

This module also holds two pieces every timed link shares: :class:`DeadlineScheduler`, which runs
deliveries at future deadlines from one heap with one task (correct under trio's real clock and
under ``trio.testing.MockClock``), and :class:`OwnedNursery`, which lets a link or network object
own its background task behind ``async with`` without leaking it.
"""

from __future__ import annotations

import abc
import contextlib
import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Final, Self

import attrs
import trio

__all__ = [
    "DEFAULT_BATCH",
    "DeadlineScheduler",
    "Link",
    "LinkStats",
    "Middleware",
    "OwnedNursery",
    "check_max_packets",
    "ipv4_destination",
]

#: Packets a receive returns per call unless asked otherwise.
DEFAULT_BATCH: Final = 64

_IPV4_MIN_HEADER: Final = 20


@attrs.define(slots=True)
class LinkStats:
    """Packet and byte counters of one link; mutated by the link, read by anyone.

    ``packets_dropped`` counts packets the link itself refused or lost in either direction
    (malformed, too big for the MTU, receive queue full, link down); drops an impairment decides
    are counted in that impairment's :class:`~tcpstack.links.impairment.ImpairmentStats`.
    """

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    packets_dropped: int = 0
    bytes_dropped: int = 0

    def snapshot(self) -> LinkStats:
        """A copy that later traffic does not change."""
        return attrs.evolve(self)

    def count_sent(self, size: int) -> None:
        self.packets_sent += 1
        self.bytes_sent += size

    def count_received(self, size: int) -> None:
        self.packets_received += 1
        self.bytes_received += size

    def count_dropped(self, size: int) -> None:
        self.packets_dropped += 1
        self.bytes_dropped += size


def check_max_packets(max_packets: int) -> None:
    """Reject a receive bound that could never return a packet."""
    if not isinstance(max_packets, int) or isinstance(max_packets, bool) or max_packets < 1:
        raise ValueError(f"max_packets must be a positive int, got {max_packets!r}")


def ipv4_destination(packet: bytes) -> bytes | None:
    """The 4-byte IPv4 destination of ``packet`` or None if it is not an IPv4 packet.

    Links route on this without parsing the rest: they know nothing above IP.
    """
    if len(packet) < _IPV4_MIN_HEADER or packet[0] >> 4 != 4:
        return None
    return packet[16:20]


class Link(abc.ABC):
    """A channel of whole IPv4 packets: the stack's only view of a network.

    Implementations: :class:`~tcpstack.links.memory.MemoryLink` (in-process switch); fd-based
    links (TUN, raw socket + pcap) wait with ``trio.lowlevel.wait_readable`` in
    :meth:`receive_batch` and drain the fd until ``EAGAIN`` up to ``max_packets``, and write with
    non-blocking syscalls in :meth:`send_batch`, counting ``EAGAIN``/``ENOBUFS`` as drops.
    Middleware (:class:`Middleware`) wraps a link and is itself a link.
    """

    @property
    @abc.abstractmethod
    def stats(self) -> LinkStats:
        """Counters of this link."""

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """The IPv4 address (dotted quad) this link receives for."""

    @property
    @abc.abstractmethod
    def mtu(self) -> int:
        """The largest packet, in bytes including the IPv4 header, the link carries."""

    @property
    @abc.abstractmethod
    def checksum_offload(self) -> bool:
        """True if the link guarantees packet integrity, so the stack may skip checksums.

        When False the stack must compute checksums on send and verify them on receive.
        """

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun."""

    @property
    def gso_max_size(self) -> int:
        """Segmentation offload (TSO/GSO): the largest IPv4/TCP packet the link accepts whose
        payload is a multiple of the connection's MSS (the last piece may be shorter) and
        delivers to the network as MSS-sized segments; 0 (the default) when it cannot.

        The pieces are cut at ``mtu`` less the packet's own IPv4 and TCP headers, as a device
        told only its MTU would cut them (virtio-net ``gso_size``): the engine builds such
        segments only when its MSS is exactly that size. A kernel TUN device with
        ``TUN_F_TSO4`` cuts them itself; a memory link hands them whole to the receiving stack,
        as veth does with GRO on the far side.
        """
        return 0

    @abc.abstractmethod
    async def receive_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        """Wait until at least one packet is available; return up to ``max_packets`` of them.

        Raises ``trio.ClosedResourceError`` if the link is closed (also when closed while waiting).
        """

    @abc.abstractmethod
    def send_batch(self, packets: Iterable[bytes]) -> None:
        """Hand packets to the link in order. Never blocks; what cannot be queued is dropped.

        Raises ``trio.ClosedResourceError`` if the link is closed.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the link; idempotent. Pending receivers get ``trio.ClosedResourceError``."""

    def set_down(self, down: bool) -> None:
        """Emulate an outage: while down every packet in either direction is dropped.

        Links that can emulate an outage (memory links, impairment middleware) override this;
        a link to real hardware cannot, and says so.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot emulate link down/up")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Middleware(Link):
    """A link that wraps another link (smoltcp's phy middleware); by default it passes through.

    Subclasses override the directions they act on. Closing the middleware closes the link it
    wraps, as trio's stream wrappers do.
    """

    def __init__(self, inner: Link) -> None:
        if not isinstance(inner, Link):
            raise TypeError(f"middleware wraps a Link, got {type(inner).__name__}")
        self.inner = inner

    @property
    def stats(self) -> LinkStats:
        # The wrapped link counts what actually crossed it; middleware adds its own counters.
        return self.inner.stats

    @property
    def address(self) -> str:
        return self.inner.address

    @property
    def mtu(self) -> int:
        return self.inner.mtu

    @property
    def checksum_offload(self) -> bool:
        return self.inner.checksum_offload

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def gso_max_size(self) -> int:
        # Middleware that acts per packet and cannot cut a super-segment must report 0.
        return self.inner.gso_max_size

    async def receive_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        return await self.inner.receive_batch(max_packets)

    def send_batch(self, packets: Iterable[bytes]) -> None:
        self.inner.send_batch(packets)

    def set_down(self, down: bool) -> None:
        self.inner.set_down(down)

    async def aclose(self) -> None:
        await self.inner.aclose()


DeliveryCallback = Callable[[float, bytes], None]


class DeadlineScheduler:
    """Runs ``callback(when, packet)`` at trio time ``when``, for many packets, with one task.

    Entries sit in a heap ordered by (deadline, insertion order), so packets due at the same
    instant keep the order they were scheduled in. The task sleeps in a cancel scope whose deadline
    is the earliest entry; scheduling an earlier entry moves that deadline instead of waking the
    task. Under ``MockClock(autojump_threshold=0)`` the clock jumps straight to each deadline, so a
    callback runs at exactly ``when`` and a simulation takes no real time waiting.

    The callback receives the scheduled ``when`` (not a re-read clock) so models downstream see
    the exact virtual instant.
    """

    def __init__(self, owner: str, *, max_pending: int = 100_000) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._owner = owner
        self.max_pending = max_pending
        self._heap: list[tuple[float, int, DeliveryCallback, bytes]] = []
        self._order = itertools.count()
        self._wake: trio.CancelScope | None = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def pending(self) -> int:
        return len(self._heap)

    def schedule(self, when: float, callback: DeliveryCallback, packet: bytes) -> bool:
        """Queue a delivery; False (nothing queued) if ``max_pending`` entries already wait."""
        if not self._running:
            raise RuntimeError(
                f"{self._owner} has no running delivery task; enter it with 'async with' "
                "before sending packets that are delayed, jittered or rate limited"
            )
        if len(self._heap) >= self.max_pending:
            return False
        heapq.heappush(self._heap, (when, next(self._order), callback, packet))
        wake = self._wake
        if wake is not None and when < wake.deadline:
            wake.deadline = when
        return True

    def clear(self) -> int:
        """Forget every pending delivery; returns how many there were."""
        dropped = len(self._heap)
        self._heap.clear()
        return dropped

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError(f"{self._owner}: delivery task already running")
        self._running = True
        task_status.started()
        try:
            while True:
                deadline = self._heap[0][0] if self._heap else math.inf
                with trio.CancelScope(deadline=deadline) as scope:
                    self._wake = scope
                    await trio.sleep_forever()
                self._wake = None
                self._run_due(trio.current_time())
        finally:
            self._wake = None
            self._running = False

    def _run_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, callback, packet = heapq.heappop(heap)
            callback(when, packet)


class OwnedNursery:
    """A nursery owned by an object behind ``async with`` (a network, a middleware).

    The owner's background tasks only ever end by cancellation, so an exception raised in the
    ``async with`` body is re-raised as itself rather than wrapped in an ExceptionGroup by the
    nursery (trio's strict exception groups would wrap it otherwise).
    """

    def __init__(self) -> None:
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("not entered: use 'async with'")
        return self._nursery

    async def open(self) -> trio.Nursery:
        if self._stack is not None:
            raise RuntimeError("already entered; an owner can be entered once")
        stack = contextlib.AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        return self._nursery

    async def close(self) -> None:
        stack, nursery = self._stack, self._nursery
        if stack is None or nursery is None:
            return
        self._nursery = None
        nursery.cancel_scope.cancel()
        # Our tasks end only by cancellation, so the body's exception (if any) is not handed to
        # the nursery: the caller's ``async with`` re-raises it unwrapped, Cancelled included.
        await stack.__aexit__(None, None, None)
