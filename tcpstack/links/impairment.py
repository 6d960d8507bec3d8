"""Network impairments: delay, jitter, loss (Bernoulli and Gilbert-Elliott), reordering,
duplication, corruption, a rate-limited drop-tail bottleneck, and link down/up.

:class:`ImpairmentModel` is the decision function for one direction: sans-IO, it takes a packet and
``now`` and says which copies leave and when. :class:`~tcpstack.links.memory.MemoryNetwork` runs
models on its paths; :class:`Impairment` is middleware that runs them around any link (the netns
testbed adds delay this way, since the kernel here has no netem).

Every random choice of one direction comes from one ``random.Random`` seeded once, and draws
happen in a fixed order per packet, so a run is reproducible from its seed.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from typing import Final

import attrs
import trio

from tcpstack.links.base import (
    DEFAULT_BATCH,
    DeadlineScheduler,
    Link,
    Middleware,
    OwnedNursery,
    check_max_packets,
)

__all__ = [
    "DEFAULT_QUEUE_BYTES",
    "Impairment",
    "ImpairmentConfig",
    "ImpairmentModel",
    "ImpairmentStats",
]

#: Bottleneck buffer when a rate is set without ``queue_bytes``: 100 full-size Ethernet packets,
#: a common router buffer in emulation studies (and ~1 BDP for 12 Mbit/s at 100 ms).
DEFAULT_QUEUE_BYTES: Final = 150_000


def _probability(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _seconds(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{attribute.name} must be finite seconds >= 0, got {value!r}")


def _rate(_inst: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0.0
    ):
        raise ValueError(f"{attribute.name} must be bits/s > 0 or None, got {value!r}")


def _queue_bytes(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive int, got {value!r}")


@attrs.frozen(slots=True)
class ImpairmentConfig:
    """What one direction of a path does to packets. All times in seconds, rate in bits/s.

    Per packet, in this order: ``down`` drops everything; ``loss`` is Bernoulli; the
    Gilbert-Elliott chain steps (good->bad with ``p_good_to_bad``, bad->good with
    ``p_bad_to_good``) and the packet is lost with ``loss_in_good``/``loss_in_bad`` of the new
    state; ``duplicate`` adds a second copy; each copy may be ``corrupt``-ed (one random bit
    flipped), then waits in the ``rate`` bottleneck (a drop-tail queue of ``queue_bytes``; a
    packet of L bytes takes L*8/rate s to serialise), then travels ``delay`` +- ``jitter``
    (uniform, never negative). Copies leave in order: a copy never overtakes the previous one,
    except that with probability ``reorder`` it is held back by ``reorder_delay`` more (or, if
    ``reorder_delay`` is 0, sent ahead without ``delay``, as netem does).
    """

    delay: float = attrs.field(default=0.0, validator=_seconds)
    jitter: float = attrs.field(default=0.0, validator=_seconds)
    loss: float = attrs.field(default=0.0, validator=_probability)
    p_good_to_bad: float = attrs.field(default=0.0, validator=_probability)
    p_bad_to_good: float = attrs.field(default=0.0, validator=_probability)
    loss_in_good: float = attrs.field(default=0.0, validator=_probability)
    loss_in_bad: float = attrs.field(default=1.0, validator=_probability)
    reorder: float = attrs.field(default=0.0, validator=_probability)
    reorder_delay: float = attrs.field(default=0.0, validator=_seconds)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    corrupt: float = attrs.field(default=0.0, validator=_probability)
    rate: float | None = attrs.field(default=None, validator=_rate)
    queue_bytes: int = attrs.field(default=DEFAULT_QUEUE_BYTES, validator=_queue_bytes)
    down: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        if self.p_good_to_bad > 0.0 and self.p_bad_to_good == 0.0:
            raise ValueError(
                "p_bad_to_good must be > 0 when p_good_to_bad > 0 (the bad state would be "
                "absorbing); use down=True for a permanent outage"
            )
        if self.reorder > 0.0 and self.delay == 0.0 and self.reorder_delay == 0.0:
            raise ValueError(
                "reorder needs delay > 0 (packets sent ahead) or reorder_delay > 0 "
                "(packets held back); with neither no packet can change place"
            )

    @property
    def gilbert_elliott(self) -> bool:
        """True if the two-state burst-loss chain can lose packets."""
        return self.loss_in_good > 0.0 or (self.p_good_to_bad > 0.0 and self.loss_in_bad > 0.0)

    @property
    def pi_bad(self) -> float:
        """Stationary probability of the Gilbert-Elliott bad state."""
        if self.p_good_to_bad == 0.0:
            return 0.0
        return self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good)

    @property
    def stationary_loss(self) -> float:
        """Long-run fraction of packets lost to ``loss`` and the Gilbert-Elliott chain."""
        pi_bad = self.pi_bad
        burst = (1.0 - pi_bad) * self.loss_in_good + pi_bad * self.loss_in_bad
        return 1.0 - (1.0 - self.loss) * (1.0 - burst)

    @property
    def timed(self) -> bool:
        """True if packets may leave later than they arrive (a delivery task is needed)."""
        return (
            self.delay > 0.0
            or self.jitter > 0.0
            or self.rate is not None
            or self.reorder_delay > 0.0
        )


@attrs.define(slots=True)
class ImpairmentStats:
    """Counters of one direction's impairment, one per cause."""

    offered: int = 0
    passed: int = 0
    dropped_down: int = 0
    dropped_loss: int = 0
    dropped_burst: int = 0
    dropped_queue: int = 0
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_down + self.dropped_loss + self.dropped_burst + self.dropped_queue

    def snapshot(self) -> ImpairmentStats:
        return attrs.evolve(self)


class ImpairmentModel:
    """The decision function of one direction: ``process(packet, now)`` -> copies and times.

    Sans-IO and synchronous, so tests can push tens of thousands of packets through it without
    any clock, and any runtime (memory network, middleware) can drive it.
    """

    def __init__(self, config: ImpairmentConfig, rng: random.Random) -> None:
        self.config = config
        self.stats = ImpairmentStats()
        self.down = config.down
        self._rng = rng
        self.in_bad_state = False
        self._last_departure = -math.inf  # in-order departures never precede this
        # Rate bottleneck: completion times and sizes of packets not yet fully serialised.
        self._busy_until = -math.inf
        self._backlog: deque[tuple[float, int]] = deque()
        self._backlog_bytes = 0

    def set_down(self, down: bool) -> None:
        self.down = down

    @property
    def backlog_bytes(self) -> int:
        """Bytes in the bottleneck queue at the last ``process`` call."""
        return self._backlog_bytes

    def process(self, packet: bytes, now: float) -> list[tuple[float, bytes]]:
        """Apply the impairment to one packet arriving at ``now``.

        Returns ``(departure_time, packet)`` pairs, zero (dropped), one, or two (duplicated);
        ``departure_time >= now`` and packets at ``now`` may be forwarded at once.
        """
        cfg, rng, stats = self.config, self._rng, self.stats
        stats.offered += 1
        if self.down:
            stats.dropped_down += 1
            return []
        if cfg.loss > 0.0 and rng.random() < cfg.loss:
            stats.dropped_loss += 1
            return []
        if cfg.gilbert_elliott and self._burst_loss():
            stats.dropped_burst += 1
            return []
        copies = 1
        if cfg.duplicate > 0.0 and rng.random() < cfg.duplicate:
            stats.duplicated += 1
            copies = 2
        out: list[tuple[float, bytes]] = []
        for _ in range(copies):
            copy = packet
            if cfg.corrupt > 0.0 and len(packet) > 0 and rng.random() < cfg.corrupt:
                copy = self._flip_bit(packet)
                stats.corrupted += 1
            leaves = now
            if cfg.rate is not None:
                finished = self._serialise(len(copy), now)
                if finished is None:
                    stats.dropped_queue += 1
                    continue
                leaves = finished
            out.append((self._departure(leaves), copy))
            stats.passed += 1
        return out

    def _burst_loss(self) -> bool:
        cfg, rng = self.config, self._rng
        if cfg.p_good_to_bad > 0.0:
            flip = cfg.p_bad_to_good if self.in_bad_state else cfg.p_good_to_bad
            if rng.random() < flip:
                self.in_bad_state = not self.in_bad_state
        loss = cfg.loss_in_bad if self.in_bad_state else cfg.loss_in_good
        return loss > 0.0 and rng.random() < loss

    def _flip_bit(self, packet: bytes) -> bytes:
        bit = self._rng.randrange(len(packet) * 8)
        mutated = bytearray(packet)
        mutated[bit >> 3] ^= 1 << (bit & 7)
        return bytes(mutated)

    def _serialise(self, size: int, now: float) -> float | None:
        """Enqueue ``size`` bytes at the bottleneck; the time its last bit leaves, or None."""
        cfg = self.config
        assert cfg.rate is not None
        backlog = self._backlog
        while backlog and backlog[0][0] <= now:
            self._backlog_bytes -= backlog.popleft()[1]
        # Drop-tail on bytes still to be serialised; an empty queue always takes one packet
        # even if it is larger than the buffer (a router never starves on a too-small buffer).
        if self._backlog_bytes and self._backlog_bytes + size > cfg.queue_bytes:
            return None
        finished = max(now, self._busy_until) + size * 8.0 / cfg.rate
        self._busy_until = finished
        backlog.append((finished, size))
        self._backlog_bytes += size
        return finished

    def _departure(self, leaves: float) -> float:
        cfg, rng = self.config, self._rng
        travel = cfg.delay
        if cfg.jitter > 0.0:
            travel = max(0.0, travel + rng.uniform(-cfg.jitter, cfg.jitter))
        if cfg.reorder > 0.0 and rng.random() < cfg.reorder:
            self.stats.reordered += 1
            if cfg.reorder_delay > 0.0:
                return leaves + travel + cfg.reorder_delay  # held back, overtaken by later ones
            return leaves  # sent ahead of packets still in flight
        departure = max(self._last_departure, leaves + travel)
        self._last_departure = departure
        return departure


def _model(config: ImpairmentConfig | None, seed: object, direction: str) -> ImpairmentModel:
    # str seeds hash with SHA-512 in random.Random, so this is stable across processes.
    rng = random.Random(f"{seed}/{direction}")
    return ImpairmentModel(ImpairmentConfig() if config is None else config, rng)


class Impairment(Middleware):
    """Middleware applying an :class:`ImpairmentConfig` per direction around any link.

    ``tx`` acts on packets the stack sends, ``rx`` on packets it receives; a missing direction
    passes packets through (but still obeys :meth:`set_down`). Use as
    ``async with Impairment(link, tx=..., rx=..., seed=1) as link:``. Entered, it owns a nursery
    with a delivery task (releases delayed packets) and a task that drains the wrapped link, so
    receive impairments act when a packet arrives, not when the stack gets round to reading it
    (a packet arriving during an outage is lost even if read after it). Untimed impairments also
    work without entering; receive impairments then act at read time.
    """

    @property
    def gso_max_size(self) -> int:
        """0: this middleware decides loss, duplication and delay per packet and does not cut
        super-segments, so the stack must send packets of at most one MSS through it (a lost
        64 KiB segment would be ~45 packets lost at once, not the configured loss)."""
        return 0

    def __init__(
        self,
        link: Link,
        tx: ImpairmentConfig | None = None,
        rx: ImpairmentConfig | None = None,
        *,
        seed: object = 0,
        queue_packets: int = 1024,
        max_pending: int = 100_000,
    ) -> None:
        super().__init__(link)
        if queue_packets < 1:
            raise ValueError(f"queue_packets must be >= 1, got {queue_packets}")
        self.tx_model = _model(tx, seed, "tx")
        self.rx_model = _model(rx, seed, "rx")
        self.queue_packets = queue_packets
        #: Packets lost outside the impairment decision: the receive queue or the bound on
        #: pending deliveries was full, or the wrapped link closed before a packet was due.
        self.overflow_drops = 0
        self._scheduler = DeadlineScheduler(type(self).__name__, max_pending=max_pending)
        self._owned = OwnedNursery()
        self._rx_queue: deque[bytes] = deque()
        self._rx_ready = trio.lowlevel.ParkingLot()
        self._rx_error: BaseException | None = None
        self._closed = False
        self._pumping = False

    @property
    def tx_stats(self) -> ImpairmentStats:
        return self.tx_model.stats

    @property
    def rx_stats(self) -> ImpairmentStats:
        return self.rx_model.stats

    @property
    def checksum_offload(self) -> bool:
        corrupting = self.tx_model.config.corrupt > 0.0 or self.rx_model.config.corrupt > 0.0
        return self.inner.checksum_offload and not corrupting

    @property
    def closed(self) -> bool:
        return self._closed or self.inner.closed

    def set_down(self, down: bool) -> None:
        """Drop every packet in both directions while down; the wrapped link is untouched."""
        self.tx_model.set_down(down)
        self.rx_model.set_down(down)

    async def __aenter__(self) -> Impairment:
        nursery = await self._owned.open()
        await nursery.start(self._scheduler.run)
        nursery.start_soon(self._pump_rx)
        self._pumping = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.aclose()
        finally:
            await self._owned.close()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.overflow_drops += self._scheduler.clear()
            self._rx_ready.unpark_all()
        await self.inner.aclose()

    def _require_task(self, direction: str) -> None:
        if not self._scheduler.running:
            raise RuntimeError(
                f"Impairment with a timed {direction} config (delay, jitter, rate, reorder_delay) "
                "must be entered first: 'async with Impairment(...) as link:'"
            )

    def send_batch(self, packets: Iterable[bytes]) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link is closed")
        model = self.tx_model
        if model.config.timed:
            self._require_task("tx")
        now = trio.current_time()
        immediate: list[bytes] = []
        for packet in packets:
            for when, copy in model.process(bytes(packet), now):
                if when <= now:
                    immediate.append(copy)
                elif not self._scheduler.schedule(when, self._send_later, copy):
                    self.overflow_drops += 1
        if immediate:
            self.inner.send_batch(immediate)

    def _send_later(self, _when: float, packet: bytes) -> None:
        if self.inner.closed:
            self.overflow_drops += 1
            return
        self.inner.send_batch((packet,))

    async def receive_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        check_max_packets(max_packets)
        pumping = self._pumping
        if not pumping and self.rx_model.config.timed:
            self._require_task("rx")
        await trio.lowlevel.checkpoint_if_cancelled()
        queue = self._rx_queue
        while not queue:
            if self._closed:
                raise trio.ClosedResourceError("link is closed")
            if self._rx_error is not None:
                raise self._rx_error
            if pumping:
                await self._rx_ready.park()
            else:
                # Not entered and untimed: every surviving copy leaves now, so impair inline.
                batch = await self.inner.receive_batch(max_packets)
                self._impair_received(batch, trio.current_time())
        return [queue.popleft() for _ in range(min(max_packets, len(queue)))]

    def _impair_received(self, batch: list[bytes], now: float) -> None:
        for packet in batch:
            for when, copy in self.rx_model.process(packet, now):
                if when <= now:
                    self._deliver(when, copy)
                elif not self._scheduler.schedule(when, self._deliver, copy):
                    self.overflow_drops += 1

    def _deliver(self, _when: float, packet: bytes) -> None:
        if len(self._rx_queue) >= self.queue_packets:
            self.overflow_drops += 1
            return
        self._rx_queue.append(packet)
        self._rx_ready.unpark_all()

    async def _pump_rx(self) -> None:
        """Drain the wrapped link as packets arrive and pass each through the rx model."""
        try:
            while True:
                batch = await self.inner.receive_batch(DEFAULT_BATCH)
                self._impair_received(batch, trio.current_time())
        except Exception as exc:  # surfaced to whoever reads this link, not to the nursery
            self._rx_error = exc
        self._rx_ready.unpark_all()
