"""An in-process network: a switch that routes IPv4 packets between :class:`MemoryLink` s.

Every attached link has an address; the switch forwards a packet to the link whose address is
the packet's IPv4 destination (bytes 16..20, nothing else is parsed). Each link may carry an
:class:`~tcpstack.links.impairment.ImpairmentConfig` on its egress (packets it sends) and its
ingress (packets it receives). A directional path between two addresses may carry one too
(:meth:`MemoryNetwork.set_path`), so a testbed can give every link of a topology its own rate,
delay and loss and cut it (:meth:`MemoryNetwork.set_path_down`) without touching the ports. A
packet from A to B crosses A's egress, then the path A->B, then B's ingress.

Deliveries due later are held in one deadline heap served by one task, so the network works under
trio's real clock and under ``trio.testing.MockClock(autojump_threshold=0)``, where a simulation is
deterministic and runs as fast as the CPU allows. Enter it to start that task::

    async with MemoryNetwork(seed=1) as net:
        a = net.attach("198.18.0.1", impairment=ImpairmentConfig(delay=0.01))
        b = net.attach("198.18.0.2")
        a.send_batch([packet])
        batch = await b.receive_batch()

Packets with no delay are delivered during ``send_batch``, in order.
"""

from __future__ import annotations

import ipaddress
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
    LinkStats,
    OwnedNursery,
    check_max_packets,
)
from tcpstack.links.impairment import ImpairmentConfig, ImpairmentModel, ImpairmentStats

_IPV4_MIN_HEADER: Final = 20  # what base.ipv4_destination requires, with version 4

__all__ = ["MemoryLink", "MemoryNetwork", "NetworkStats"]

#: Receive queue bound of a link, in packets (Linux's default txqueuelen is 1000).
DEFAULT_QUEUE_PACKETS: Final = 1024
_MIN_MTU: Final = 68  # RFC 791: every IPv4 link carries 68-byte datagrams


@attrs.define(slots=True)
class NetworkStats:
    """What the switch did with the packets it was given, one counter per outcome."""

    delivered: int = 0
    unroutable: int = 0
    malformed: int = 0
    oversize: int = 0
    queue_full: int = 0
    link_down: int = 0
    path_down: int = 0
    pending_full: int = 0

    @property
    def dropped(self) -> int:
        return (
            self.unroutable
            + self.malformed
            + self.oversize
            + self.queue_full
            + self.link_down
            + self.path_down
            + self.pending_full
        )

    def snapshot(self) -> NetworkStats:
        return attrs.evolve(self)


class MemoryLink(Link):
    """One port of a :class:`MemoryNetwork`; create it with :meth:`MemoryNetwork.attach`."""

    def __init__(
        self,
        network: MemoryNetwork,
        address: str,
        *,
        mtu: int,
        queue_packets: int,
        egress: ImpairmentModel | None,
        ingress: ImpairmentModel | None,
        gso_max_size: int = 0,
    ) -> None:
        self._network = network
        self._address = address
        self._packed = ipaddress.IPv4Address(address).packed
        self._mtu = mtu
        self._gso_max_size = gso_max_size
        # Largest packet the port sends or receives: super-segments pass whole (veth + GRO).
        self._max_packet = max(mtu, gso_max_size)
        self.queue_packets = queue_packets
        self.egress = egress
        self.ingress = ingress
        self._stats = LinkStats()
        self._queue: deque[bytes] = deque()
        self._ready = trio.lowlevel.ParkingLot()
        self._closed = False
        self.down = False

    def __repr__(self) -> str:
        return f"<MemoryLink {self._address} mtu={self._mtu}{' down' if self.down else ''}>"

    @property
    def stats(self) -> LinkStats:
        return self._stats

    @property
    def address(self) -> str:
        return self._address

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def gso_max_size(self) -> int:
        return self._gso_max_size

    @property
    def network(self) -> MemoryNetwork:
        return self._network

    @property
    def checksum_offload(self) -> bool:
        # Any corrupting direction anywhere can reach any port, and a sender that skipped its
        # checksums would make every corrupted packet undetectable: one corrupter turns it off.
        return not self._network.corrupting

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def egress_stats(self) -> ImpairmentStats | None:
        return None if self.egress is None else self.egress.stats

    @property
    def ingress_stats(self) -> ImpairmentStats | None:
        return None if self.ingress is None else self.ingress.stats

    @property
    def queued(self) -> int:
        """Packets waiting in the receive queue."""
        return len(self._queue)

    def set_down(self, down: bool) -> None:
        """While down the port drops everything it is given and everything arriving for it."""
        self.down = down

    def send_batch(self, packets: Iterable[bytes]) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link is closed")
        self._network._transmit(self, packets)

    async def receive_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        check_max_packets(max_packets)
        await trio.lowlevel.checkpoint_if_cancelled()
        queue = self._queue
        if queue:
            await trio.lowlevel.cancel_shielded_checkpoint()
        while not queue:
            if self._closed:
                raise trio.ClosedResourceError("link is closed")
            await self._ready.park()
        batch = [queue.popleft() for _ in range(min(max_packets, len(queue)))]
        stats = self._stats
        # LinkStats.count_received, inlined: once per packet.
        stats.packets_received += len(batch)
        for packet in batch:
            stats.bytes_received += len(packet)
        return batch

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._detach(self)
            self._queue.clear()
            self._ready.unpark_all()
        await trio.lowlevel.checkpoint()

    def _enqueue(self, _when: float, packet: bytes) -> None:
        """Put an arriving packet in the receive queue (drop-tail when full)."""
        network = self._network
        if self._closed:
            network.stats.unroutable += 1
            return
        if self.down:
            network.stats.link_down += 1
            self._stats.count_dropped(len(packet))
            return
        if len(self._queue) >= self.queue_packets:
            network.stats.queue_full += 1
            self._stats.count_dropped(len(packet))
            return
        network.stats.delivered += 1
        queue = self._queue
        queue.append(packet)
        if len(queue) == 1:
            # A receiver parks only on an empty queue, and the first packet already woke it.
            self._ready.unpark_all()


class MemoryNetwork:
    """An in-process IPv4 switch with per-port impairments, under one trio nursery.

    ``seed`` seeds every impairment: port ``address``'s egress draws from
    ``Random(f"{seed}/{address}/egress")`` and its ingress likewise, so a simulation replays
    exactly and adding a port does not change the draws of the others. At most ``max_pending``
    future deliveries are held (about 150 MB of 1500-byte packets, over ten times the
    bandwidth-delay product of 1 Gbit/s x 100 ms); beyond that packets are dropped and counted.
    """

    def __init__(self, seed: object = 0, *, max_pending: int = 100_000) -> None:
        self.seed = seed
        self.stats = NetworkStats()
        self._ports: dict[bytes, MemoryLink] = {}
        self._scheduler = DeadlineScheduler(type(self).__name__, max_pending=max_pending)
        self._owned = OwnedNursery()
        self._corrupting = 0
        # Directional paths, keyed by the packed source then destination address: exactly the
        # bytes 12..20 of an IPv4 header, so the hot path looks a packet up without parsing.
        self._paths: dict[bytes, ImpairmentModel] = {}
        self._down_paths: set[bytes] = set()
        #: When True, a packet between two addresses with no path set (:meth:`set_path`) is
        #: unroutable, as between hosts with no link: a testbed's non-neighbours cannot talk.
        self.paths_only = False

    @property
    def links(self) -> list[MemoryLink]:
        return list(self._ports.values())

    @property
    def corrupting(self) -> bool:
        """True if some attached port corrupts packets in either direction."""
        return self._corrupting > 0

    @property
    def pending(self) -> int:
        """Deliveries scheduled for the future."""
        return self._scheduler.pending

    def link(self, address: str) -> MemoryLink:
        try:
            return self._ports[ipaddress.IPv4Address(address).packed]
        except KeyError:
            raise KeyError(f"no link attached at {address}") from None

    async def __aenter__(self) -> MemoryNetwork:
        nursery = await self._owned.open()
        await nursery.start(self._scheduler.run)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.aclose()
        finally:
            await self._owned.close()

    async def aclose(self) -> None:
        """Close every port and forget pending deliveries."""
        for port in list(self._ports.values()):
            await port.aclose()
        self._scheduler.clear()

    def attach(
        self,
        address: str,
        *,
        mtu: int = 1500,
        impairment: ImpairmentConfig | None = None,
        ingress: ImpairmentConfig | None = None,
        queue_packets: int = DEFAULT_QUEUE_PACKETS,
        gso_max_size: int = 0,
    ) -> MemoryLink:
        """Attach a port receiving for ``address``.

        ``impairment`` applies to packets the port sends, ``ingress`` to packets it receives.
        ``gso_max_size`` > 0 lets the port send and receive TCP super-segments up to that size
        (see :attr:`Link.gso_max_size`), delivered whole: give it to both ends. Impairments
        (port or path) act on a super-segment as on one packet.
        """
        try:
            parsed = ipaddress.IPv4Address(address)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 address: {address!r}") from exc
        if parsed.packed in self._ports:
            raise ValueError(f"address {parsed} is already attached")
        if not isinstance(mtu, int) or mtu < _MIN_MTU or mtu > 65535:
            raise ValueError(f"mtu must be an int in [{_MIN_MTU}, 65535], got {mtu!r}")
        if queue_packets < 1:
            raise ValueError(f"queue_packets must be >= 1, got {queue_packets}")
        if not isinstance(gso_max_size, int) or not 0 <= gso_max_size <= 65535:
            raise ValueError(f"gso_max_size must be an int in [0, 65535], got {gso_max_size!r}")
        configs = [c for c in (impairment, ingress) if c is not None]
        if any(c.timed for c in configs) and not self._scheduler.running:
            raise RuntimeError(
                "a delayed, jittered or rate-limited port needs the network's delivery task: "
                "attach it inside 'async with MemoryNetwork(...) as net:'"
            )
        name = str(parsed)
        port = MemoryLink(
            self,
            name,
            mtu=mtu,
            queue_packets=queue_packets,
            egress=self._model(impairment, name, "egress"),
            ingress=self._model(ingress, name, "ingress"),
            gso_max_size=gso_max_size,
        )
        self._ports[parsed.packed] = port
        self._corrupting += sum(1 for c in configs if c.corrupt > 0.0)
        return port

    def set_path(self, src: str, dst: str, config: ImpairmentConfig | None) -> None:
        """Impair packets from ``src`` to ``dst`` (one direction) with ``config``; None clears it.

        The path sits between ``src``'s egress and ``dst``'s ingress; neither address needs to be
        attached yet. Changing the config of a live path keeps its state: its random stream, the
        bytes waiting at its bottleneck and the order of packets in flight (a packet sent after a
        delay cut never overtakes one sent before it, as on a FIFO wire). The path draws from
        ``Random(f"{seed}/{src}->{dst}/path")``. Corruption set here is not seen by stacks
        already running (they decided on checksum offload when they started).
        """
        key = _path_key(src, dst)
        if config is not None and config.timed and not self._scheduler.running:
            raise RuntimeError(
                "a delayed, jittered or rate-limited path needs the network's delivery task: "
                "set it inside 'async with MemoryNetwork(...) as net:'"
            )
        model = self._paths.get(key)
        if model is not None and model.config.corrupt > 0.0:
            self._corrupting -= 1
        if config is None:
            self._paths.pop(key, None)
            return
        if config.corrupt > 0.0:
            self._corrupting += 1
        if model is None:
            rng = random.Random(f"{self.seed}/{_address(src)}->{_address(dst)}/path")
            self._paths[key] = ImpairmentModel(config, rng)
        else:
            model.config = config
            model.set_down(config.down)

    def path(self, src: str, dst: str) -> ImpairmentConfig | None:
        """The impairment of the path ``src`` -> ``dst``, or None if it has none."""
        model = self._paths.get(_path_key(src, dst))
        return None if model is None else model.config

    def path_stats(self, src: str, dst: str) -> ImpairmentStats | None:
        """What the path ``src`` -> ``dst`` did to the packets it was offered, if it has a config."""
        model = self._paths.get(_path_key(src, dst))
        return None if model is None else model.stats

    def set_path_down(self, src: str, dst: str, down: bool) -> None:
        """Cut (``down=True``) or restore the path ``src`` -> ``dst``, one direction.

        While down every packet reaching the path is dropped and counted in
        ``stats.path_down``; packets already past it (in its delay) still arrive, as on a
        cable pulled behind them. Independent of :meth:`set_path`: the config stays as it was.
        """
        key = _path_key(src, dst)
        if down:
            self._down_paths.add(key)
        else:
            self._down_paths.discard(key)

    def path_is_down(self, src: str, dst: str) -> bool:
        return _path_key(src, dst) in self._down_paths

    def _model(
        self, config: ImpairmentConfig | None, address: str, direction: str
    ) -> ImpairmentModel | None:
        if config is None:
            return None
        return ImpairmentModel(config, random.Random(f"{self.seed}/{address}/{direction}"))

    def _detach(self, port: MemoryLink) -> None:
        if self._ports.get(port._packed) is port:
            del self._ports[port._packed]
            self._corrupting -= sum(
                1 for m in (port.egress, port.ingress) if m is not None and m.config.corrupt > 0.0
            )

    def _transmit(self, port: MemoryLink, packets: Iterable[bytes]) -> None:
        """A port's ``send_batch``: validate, impair egress, then switch or schedule."""
        stats, port_stats, egress = self.stats, port.stats, port.egress
        now = trio.current_time()
        # Nothing between the ports (no egress, no paths): a packet goes straight to its
        # destination's port, as _switch and _arrive would take it, without their calls.
        direct = egress is None and not (self._paths or self._down_paths or self.paths_only)
        ports = self._ports
        for raw in packets:
            packet = raw if type(raw) is bytes else bytes(raw)
            size = len(packet)
            if port.down:
                stats.link_down += 1
                port_stats.count_dropped(size)
                continue
            # ipv4_destination(packet) is None, inlined: once per packet.
            if size < _IPV4_MIN_HEADER or packet[0] >> 4 != 4:
                stats.malformed += 1
                port_stats.count_dropped(size)
                continue
            if size > port._max_packet:
                stats.oversize += 1
                port_stats.count_dropped(size)
                continue
            port_stats.packets_sent += 1  # LinkStats.count_sent, inlined
            port_stats.bytes_sent += size
            if direct:
                target = ports.get(packet[16:20])
                if target is not None and target.ingress is None and size <= target._max_packet:
                    target._enqueue(now, packet)
                else:
                    self._arrive(now, packet)
                continue
            if egress is None:
                self._switch(now, packet)
                continue
            for when, copy in egress.process(packet, now):
                if when <= now:
                    self._switch(when, copy)
                elif not self._scheduler.schedule(when, self._switch, copy):
                    stats.pending_full += 1

    def _switch(self, when: float, packet: bytes) -> None:
        """A packet reaches the switch at ``when``: cross its path, if it has one, then arrive."""
        if self._paths or self._down_paths or self.paths_only:
            key = packet[12:20]
            if key in self._down_paths:
                self.stats.path_down += 1
                return
            model = self._paths.get(key)
            if model is not None:
                for due, copy in model.process(packet, when):
                    if due <= when:
                        self._arrive(due, copy)
                    elif not self._scheduler.schedule(due, self._arrive, copy):
                        self.stats.pending_full += 1
                return
            if self.paths_only:
                self.stats.unroutable += 1
                return
        self._arrive(when, packet)

    def _arrive(self, when: float, packet: bytes) -> None:
        """A packet reaches its destination's port at ``when``: ingress, then the receive queue."""
        # ipv4_destination cannot fail here: _transmit checked it and corruption keeps length;
        # a flipped destination bit simply misroutes, as on a real wire.
        port = self._ports.get(packet[16:20])
        if port is None:
            self.stats.unroutable += 1
            return
        if len(packet) > port._max_packet:
            self.stats.oversize += 1
            port.stats.count_dropped(len(packet))
            return
        ingress = port.ingress
        if ingress is None:
            port._enqueue(when, packet)
            return
        for due, copy in ingress.process(packet, when):
            if due <= when:
                port._enqueue(due, copy)
            elif not self._scheduler.schedule(due, port._enqueue, copy):
                self.stats.pending_full += 1


def _address(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError as exc:
        raise ValueError(f"not an IPv4 address: {address!r}") from exc


def _path_key(src: str, dst: str) -> bytes:
    return ipaddress.IPv4Address(_address(src)).packed + ipaddress.IPv4Address(_address(dst)).packed
