"""Peer links: one authenticated TCP stream per neighbour, and the tasks that keep it measured.

:class:`PeerLinks` is the part of an :class:`~overlay.node.OverlayNode` that talks to
neighbours: it listens, dials, exchanges Hellos, runs each link's tasks and re-dials with
backoff. What the frames mean (routing, forwarding) stays in the node, which it reaches through
the narrow :class:`LinkHost` interface.

Who dials. Only the smaller id dials, so two nodes never race to open two links; an incoming
connection from a neighbour we dial ourselves is refused. If a link to a peer already exists
when its new connection is accepted (the peer restarted or lost the old one first), the newer
link replaces the older. Both ends must list each other as neighbours.

Peer link. One :class:`~tcpstack.api.TCPStream` with Nagle off. Both sides send a
:class:`~overlay.messages.Hello` first (the dialler first); the authenticated sender id of every
later frame must be the peer's, and one replay guard spans all of a node's links, so a frame
captured on an old connection cannot be replayed into a new one. The dialler re-dials after a
failure with jittered exponential backoff (``reconnect_min * 2**attempt``, capped at
``reconnect_max``, times a uniform factor in [0.5, 1]).

Tasks per connected link: a reader (frames in, to :meth:`LinkHost.on_frame`), a writer (control
frames before data, batched up to 64 KiB per send), a sampler, an event watcher and a prober.

Flood pacing. LSAs wait in a per-link queue keyed by origin (:meth:`PeerLink.enqueue_lsa`) for up
to ``FLOOD_PACING`` before the writer sends them, as OSPF implementations pace flooding (Cisco's
33 ms): a flood reaches a node over all its links within a few link delays, and every origin
re-originates at about the same time after a start, so LSAs queued in that window leave in one
TCP segment instead of one segment (and one ACK) each. The queue is also where flooding saves
work: a newer LSA of the same origin replaces the queued one (only the newest matters), and an
LSA the peer sent us itself is taken off the queue to it (:meth:`PeerLink.peer_has`, OSPF's
implied acknowledgement, RFC 2328 section 13 step (7)(a)): it has that instance already. Bad news
(an LSA that takes a link down) is never paced: failover elsewhere waits on it. Any frame that
goes out takes the queued LSAs with it.

Failure detection. The sampler reads ``stream.info()`` every ``sample_interval`` while the link
carries application traffic, every ``max(sample_interval, probe_interval)`` while it is idle
(nothing but probes moves between two such reads), and at once when the engine reports recovery
or loss. The watcher reports the link failed the instant the engine reports an RTO, a reset, a
user timeout or a keep-alive timeout: a link with data in flight that needs an RTO has lost its
path, and waiting for more evidence would cost the RTO backoff. The link is back when TCP
delivers again (``bytes_acked`` moves past its value at the failure, with the RTO backoff
cleared); a link still down after ``STALE_LINK`` seconds is closed and re-dialled, because a
fresh connection notices a healed path sooner than an RTO backed off to minutes. An idle link
(no Data or DataAck for ``idle_after``) gets a Probe every ``probe_interval``, so a cut shows up
as an RTO of the probe's segment within about ``probe_interval`` + one RTO; a link with traffic
gets no probes. A link whose estimator has heard nothing for ``down_after`` is down too.

One end probes. The round trip is the same from both ends, so only the dialler (the smaller id)
probes, and each Probe carries the RTT its previous probe measured, which the other end takes
in as its own probe sample. That halves the probe traffic (each exchange is a Probe, a
ProbeReply and a delayed ACK, about 290 bytes on the wire). The other end still learns of a cut
quickly: the dialler's RTO marks the link down in its LSA, and the two-way check
(:mod:`overlay.linkstate`) takes the link out of every node's graph, this end's included, as
soon as that LSA arrives by another path; its own estimator reports the link down after
``down_after`` of silence. If no Probe comes for ``FOLLOWER_PATIENCE`` probe intervals while
the link is idle (the dialler thinks it busy, or runs older code), this end probes itself.

Bad input. Frames that fail authentication, replay, parse or size checks are dropped by the
:class:`~overlay.messages.FrameReader` and counted in ``stats.drops`` under the reason's name,
logged at most once per second per peer. A length prefix beyond ``max_frame`` makes the stream
unrecoverable: that link is closed and re-established. An unexpected error in one link's task
closes that link (counted as "internal_error"), never the node.
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from overlay.config import Neighbour, NodeConfig
from overlay.droplog import RateLimitedLog
from overlay.linkstate import DEFAULT_MAX_LSAS
from overlay.messages import (
    Data,
    FrameReader,
    FrameWriter,
    Hello,
    Lsa,
    Message,
    Probe,
    ReplayGuard,
)
from overlay.metrics import LinkEstimator
from overlay.types import NodeStats
from tcpstack.api import Stack, TCPStream
from tcpstack.tcp.events import (
    KeepaliveTimeout,
    LossDetected,
    RecoveryEntered,
    ResetReceived,
    RtoFired,
    UserTimeout,
)

__all__ = ["LinkClosed", "LinkHost", "PeerLink", "PeerLinks"]

log = logging.getLogger("overlay.node")

MAX_HANDSHAKES = 64  # incoming connections waiting for their Hello at once
STALE_LINK = 15.0  # s a link may stay down (TCP still retrying) before it is closed and re-dialled
HELLO_TIMEOUT = 5.0  # s for the peer's Hello after the connection is up
CONNECT_TIMEOUT = 10.0  # s for one dial attempt
QUEUE_LIMIT = 512  # frames waiting per link and class (control / data)
MAX_PROBES = 16  # probes awaiting their reply per link
# The end that does not lead the probing starts its own probes after this many probe intervals
# without a Probe from the leader.
FOLLOWER_PATIENCE = 2.0
WRITE_BATCH = 65536  # bytes of frames joined into one send_all
FLOOD_PACING = 0.033  # s an LSA that is not bad news may wait for others to share its segment
LSA_QUEUE_LIMIT = DEFAULT_MAX_LSAS  # origins with an LSA waiting per link (one each at most)


class LinkClosed(Exception):
    """A peer link ended; the message says why."""


@attrs.define(eq=False)
class PeerLink:
    """One connected peer: its stream, frame reader, outgoing queues and liveness state."""

    peer: str
    stream: TCPStream
    reader: FrameReader
    connected_at: float
    control: collections.deque[Message] = attrs.Factory(collections.deque)
    data: collections.deque[Message] = attrs.Factory(collections.deque)
    lsas: dict[str, Lsa] = attrs.Factory(dict)  # origin -> newest LSA waiting for the writer
    flush_at: float = math.inf  # when the waiting LSAs must go out (see "Flood pacing")
    wake: trio.Event = attrs.Factory(trio.Event)
    kick_sampler: trio.Event = attrs.Factory(trio.Event)
    scope: trio.CancelScope | None = None
    close_reason: str = ""
    last_rx: float = 0.0  # last valid frame
    last_app: float = -math.inf  # last Data/DataAck either way: probes only when idle
    acked_at_failure: int | None = None  # bytes_acked when marked down; None while up
    failed_at: float = 0.0
    probes: dict[int, float] = attrs.Factory(dict)
    last_probe_rx: float = -math.inf  # last Probe from the peer
    probe_rtt: float = 0.0  # RTT of our last answered probe, reported in the next one
    drops_seen: dict[str, int] = attrs.Factory(dict)  # the reader's counts already folded in
    drops_total: int = 0
    epoch: int = 0  # connection number, so the estimator knows the counters restarted

    def enqueue(self, msg: Message, *, control: bool) -> bool:
        """Queue ``msg`` for the writer; False (nothing queued) if that queue is full."""
        queue = self.control if control else self.data
        if len(queue) >= QUEUE_LIMIT:
            return False
        queue.append(msg)
        self.wake.set()
        return True

    def enqueue_lsa(self, lsa: Lsa, now: float, *, urgent: bool) -> bool:
        """Queue ``lsa`` for the peer: at once if ``urgent``, else within ``FLOOD_PACING``.
        It replaces a queued older LSA of the same origin; False if the queue has no room."""
        queued = self.lsas.get(lsa.origin)
        if queued is None:
            if len(self.lsas) >= LSA_QUEUE_LIMIT:
                return False
            self.lsas[lsa.origin] = lsa
        elif queued.seq < lsa.seq:
            self.lsas[lsa.origin] = lsa
        due = now if urgent else now + FLOOD_PACING
        if due < self.flush_at:
            self.flush_at = due
            self.wake.set()
        return True

    def peer_has(self, origin: str, seq: int) -> None:
        """The peer sent us ``origin``'s LSA number ``seq``: a queued one no newer is moot."""
        queued = self.lsas.get(origin)
        if queued is not None and queued.seq <= seq:
            del self.lsas[origin]
            if not self.lsas:
                self.flush_at = math.inf  # the next LSA sets its own deadline (and wakes us)

    def idle(self, now: float, idle_after: float) -> bool:
        return now - self.last_app >= idle_after


class LinkHost(Protocol):
    """What :class:`PeerLinks` needs from the node that owns it."""

    node_id: str
    config: NodeConfig
    stats: NodeStats

    def estimator(self, peer: str) -> LinkEstimator: ...

    def link_opened(self, link: PeerLink, now: float) -> None:
        """``link`` is registered and its tasks are about to start: bring it up for routing."""

    def link_closed(self, link: PeerLink, now: float) -> None:
        """``link`` was the peer's current link and is gone."""

    def link_failed(self, link: PeerLink, now: float, reason: str) -> None:
        """The engine or the estimator says the path is broken (``link.acked_at_failure`` set)."""

    def link_recovered(self, link: PeerLink, now: float) -> None:
        """TCP delivers again on a link that had failed."""

    def link_routable(self, peer: str) -> bool:
        """The node holds the link to ``peer`` up for routing."""

    def metrics_changed(self, link: PeerLink, now: float) -> None:
        """The estimator of ``link`` took a new sample."""

    def on_frame(self, link: PeerLink, sender: str, msg: Message) -> None:
        """An authenticated frame after the Hello."""


class PeerLinks:
    """Listening, dialling, handshakes and the per-link tasks of one node."""

    def __init__(
        self, host: LinkHost, stack: Stack, config: NodeConfig, rng: random.Random, boot: int
    ) -> None:
        self.host = host
        self.stack = stack
        self.config = config
        self.node_id = config.node_id
        self.stats = host.stats
        self._rng = rng
        self._boot = boot
        self.writer = FrameWriter(config.key, self.node_id, max_frame=config.max_frame)
        # One replay guard for every link: frames captured on an old connection to a neighbour
        # cannot be replayed into its next one.
        self.replay = ReplayGuard()
        self.droplog = RateLimitedLog(log)
        self.neighbours: dict[str, Neighbour] = {n.node_id: n for n in config.neighbours}
        self.links: dict[str, PeerLink] = {}
        self.listen_port: int | None = None
        self._handshaking = 0
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery, listener: Any) -> None:
        """Accept on ``listener`` and dial every neighbour with a larger id, in ``nursery``."""
        self._nursery = nursery
        self.listen_port = listener.port
        nursery.start_soon(self._accept_loop, listener)
        for peer in sorted(self.neighbours):
            if self.node_id < peer:
                nursery.start_soon(self._dial_loop, peer)

    # ---------------------------------------------------------------- connecting
    async def _accept_loop(self, listener: Any) -> None:
        assert self._nursery is not None
        while True:
            stream = await listener.accept()
            if self._handshaking >= MAX_HANDSHAKES:  # a connection flood costs no more than this
                self.stats.drops["handshake_limit"] += 1
                await stream.aclose()
                continue
            self._nursery.start_soon(self._accepted, stream)

    async def _accepted(self, stream: TCPStream) -> None:
        self._handshaking += 1
        try:
            # No Nagle (frames are messages) and no delayed ACK: the peer's srtt, our latency
            # metric on busy links, then measures the path, not the path plus 40 ms of ACK delay.
            stream.options.update(nodelay=True, quickack=True)
            if self.config.user_timeout is not None:
                stream.options.user_timeout = self.config.user_timeout
            reader, hello, rest = await self._handshake(stream, expected=None)
        except (LinkClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.stats.drops["handshake"] += 1
            log.info("%s: incoming link rejected: %s", self.node_id, exc)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        finally:
            self._handshaking -= 1
        await self._run_link(hello.node_id, stream, reader, rest)

    async def _dial_loop(self, peer: str) -> None:
        neighbour = self.neighbours[peer]
        attempt = 0
        while True:
            stream: TCPStream | None = None
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    options: dict[str, Any] = {"nodelay": True, "quickack": True}
                    if self.config.user_timeout is not None:
                        options["user_timeout"] = self.config.user_timeout
                    stream = await self.stack.open_tcp_stream(
                        neighbour.address, neighbour.port, **options
                    )
                reader, _hello, rest = await self._handshake(stream, expected=peer)
            except (LinkClosed, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
                self.stats.connect_failures += 1
                log.debug("%s: dial %s failed: %s", self.node_id, peer, exc)
                if stream is not None:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                await trio.sleep(self.backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            await self._run_link(peer, stream, reader, rest)
            await trio.sleep(self.backoff(0))

    def backoff(self, attempt: int) -> float:
        """Delay before re-dial number ``attempt`` (jittered exponential, see the docstring)."""
        delay = min(self.config.reconnect_max, self.config.reconnect_min * 2 ** min(attempt, 30))
        return delay * self._rng.uniform(0.5, 1.0)

    async def _handshake(
        self, stream: TCPStream, expected: str | None
    ) -> tuple[FrameReader, Hello, list[tuple[str, Message]]]:
        """Exchange Hellos; return the reader and any frames that followed the peer's Hello."""
        reader = FrameReader(self.config.key, max_frame=self.config.max_frame, replay=self.replay)
        hello = Hello(self.node_id, self.listen_port or self.config.listen_port, self._boot)
        if expected is not None:  # the dialler speaks first
            await self._send_raw(stream, hello)
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                while True:
                    data = await stream.receive_some()
                    if not data:
                        raise LinkClosed("closed during handshake")
                    self.stats.bytes_in += len(data)
                    frames = reader.feed(data)
                    if reader.poisoned:
                        raise LinkClosed("unparseable stream during handshake")
                    if frames:
                        break
        except trio.TooSlowError:
            raise LinkClosed("no Hello in time") from None
        finally:
            for reason, count in reader.stats.as_dict().items():
                self.stats.drops[reason] += count
        sender, first = frames[0]
        if not isinstance(first, Hello) or first.node_id != sender:
            raise LinkClosed(f"first frame from {sender!r} is not its Hello")
        if expected is not None and sender != expected:
            raise LinkClosed(f"dialled {expected!r} but {sender!r} answered")
        if sender not in self.neighbours:
            raise LinkClosed(f"{sender!r} is not a configured neighbour")
        if expected is None and self.node_id < sender:
            # We dial this one ourselves; taking its call too would leave two links that keep
            # replacing each other.
            raise LinkClosed(f"{sender!r} dialled us, but the smaller id ({self.node_id}) dials")
        if expected is None:
            await self._send_raw(stream, hello)
        self.stats.frames_in["Hello"] += 1
        return reader, first, frames[1:]

    async def _send_raw(self, stream: TCPStream, msg: Message) -> None:
        frame = self.writer.encode(msg)
        self.count_out(msg, len(frame))
        await stream.send_all(frame)

    # ---------------------------------------------------------------- a connected link
    async def _run_link(
        self, peer: str, stream: TCPStream, reader: FrameReader, rest: list[tuple[str, Message]]
    ) -> None:
        now = trio.current_time()
        link = PeerLink(peer, stream, reader, now, last_rx=now)
        link.drops_seen = reader.stats.as_dict()  # counted by the handshake
        link.drops_total = reader.stats.total
        old = self.links.get(peer)
        if old is not None and old.scope is not None:
            old.close_reason = "replaced by a newer link"
            old.scope.cancel()
        self.links[peer] = link
        self.stats.connects += 1
        link.epoch = self.stats.connects
        self.host.estimator(peer).on_info(stream.info(), now, epoch=link.epoch)
        try:
            with trio.CancelScope() as scope:
                link.scope = scope
                self.host.link_opened(link, now)
                for sender, msg in rest:
                    self.host.on_frame(link, sender, msg)
                tasks: tuple[Callable[[PeerLink], Awaitable[None]], ...] = (
                    self._reader, self._writer_task, self._sampler, self._watcher, self._prober
                )
                async with trio.open_nursery() as nursery:
                    for task in tasks:
                        nursery.start_soon(self._guard, link, task)
        finally:
            with trio.CancelScope(shield=True):
                if self.links.get(peer) is link:
                    del self.links[peer]
                    self.host.link_closed(link, trio.current_time())
                log.info("%s: link to %s closed: %s", self.node_id, peer, link.close_reason)
                await stream.aclose()

    async def _guard(
        self, link: PeerLink, task: Callable[[PeerLink], Awaitable[None]]
    ) -> None:
        """Run one task of a link; whatever ends it ends the link, never the node."""
        try:
            await task(link)
        except (LinkClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if not link.close_reason:
                link.close_reason = str(exc) or type(exc).__name__
        except Exception as exc:  # a bug must cost one link, not the node and its other links
            log.exception("%s: link to %s failed", self.node_id, link.peer)
            self.stats.drops["internal_error"] += 1
            link.close_reason = f"internal error: {exc!r}"
        assert link.scope is not None
        link.scope.cancel()

    async def _reader(self, link: PeerLink) -> None:
        stream, reader = link.stream, link.reader
        while True:
            data = await stream.receive_some()
            if not data:
                raise LinkClosed("peer closed the link")
            self.stats.bytes_in += len(data)
            frames = reader.feed(data)
            self._count_drops(link)
            for sender, msg in frames:
                self.host.on_frame(link, sender, msg)
            if reader.poisoned:
                raise LinkClosed("oversized length prefix: cannot resynchronise")

    async def _writer_task(self, link: PeerLink) -> None:
        stream = link.stream
        control, lsas, data = link.control, link.lsas, link.data
        while True:
            while not control and not data:
                if lsas and link.flush_at <= trio.current_time():
                    break
                link.wake = trio.Event()
                with trio.move_on_at(link.flush_at if lsas else math.inf):
                    await link.wake.wait()
            # Urgent control frames, then every waiting LSA (due or not: they ride along),
            # then data.
            chunks: list[bytes] = []
            size = 0
            while size < WRITE_BATCH and (control or lsas or data):
                if control:
                    msg = control.popleft()
                elif lsas:
                    msg = lsas.pop(next(iter(lsas)))
                else:
                    msg = data.popleft()
                try:
                    frame = self.writer.encode(msg)
                except ValueError:
                    self.stats.drops["oversize_out"] += 1
                    continue
                self.count_out(msg, len(frame))
                chunks.append(frame)
                size += len(frame)
            if not lsas:
                link.flush_at = math.inf
            if chunks:
                await stream.send_all(b"".join(chunks))

    async def _sampler(self, link: PeerLink) -> None:
        metrics = self.config.metrics
        estimator = self.host.estimator(link.peer)
        while True:
            now = trio.current_time()
            info = link.stream.info()
            estimator.on_info(info, now, epoch=link.epoch)
            if link.acked_at_failure is not None:
                if now - link.failed_at > STALE_LINK:
                    # TCP backs its RTO off towards minutes; a fresh connection notices a healed
                    # path sooner (reconnect_max), so give this one up.
                    raise LinkClosed(f"down for more than {STALE_LINK:g} s")
                if info.bytes_acked > link.acked_at_failure and info.backoff == 0:
                    link.acked_at_failure = None
                    self.host.link_recovered(link, now)
            elif self.host.link_routable(link.peer) and not estimator.is_up(now):
                self.fail(link, now, f"nothing heard for {metrics.down_after:g} s",
                          info.bytes_acked)
            self.host.metrics_changed(link, now)
            link.kick_sampler = trio.Event()
            interval = metrics.sample_interval
            if link.idle(now, metrics.idle_after):
                interval = max(interval, metrics.probe_interval)
            with trio.move_on_after(interval):
                await link.kick_sampler.wait()

    async def _watcher(self, link: PeerLink) -> None:
        async for event in link.stream.events():
            if isinstance(event, RtoFired):
                self.fail(link, trio.current_time(), f"RTO (backoff {event.backoff})")
            elif isinstance(event, (ResetReceived, UserTimeout, KeepaliveTimeout)):
                self.fail(link, trio.current_time(), event.event_type)
            elif isinstance(event, (RecoveryEntered, LossDetected)):
                link.kick_sampler.set()

    async def _prober(self, link: PeerLink) -> None:
        metrics = self.config.metrics
        leader = self.node_id < link.peer
        patience = FOLLOWER_PATIENCE * metrics.probe_interval
        while True:
            now = trio.current_time()
            # Waiting for the leader counts from when the link went idle or last heard a Probe.
            waited = now - max(link.last_probe_rx, link.connected_at,
                               link.last_app + metrics.idle_after)
            if link.idle(now, metrics.idle_after) and (leader or waited > patience):
                nonce = self._rng.getrandbits(32)
                link.probes[nonce] = now
                while len(link.probes) > MAX_PROBES:
                    del link.probes[next(iter(link.probes))]
                self.enqueue(link, Probe(nonce, now, link.probe_rtt), control=True)
            await trio.sleep(metrics.probe_interval)

    def fail(self, link: PeerLink, now: float, reason: str, acked: int | None = None) -> None:
        """Mark ``link`` failed (if it is still the peer's link) and tell the host."""
        if self.links.get(link.peer) is not link:
            return
        if link.acked_at_failure is None:
            link.acked_at_failure = link.stream.info().bytes_acked if acked is None else acked
            link.failed_at = now
        self.host.link_failed(link, now, reason)

    # ---------------------------------------------------------------- frames and counters
    def enqueue(self, link: PeerLink, msg: Message, *, control: bool) -> bool:
        if link.enqueue(msg, control=control):
            return True
        self.stats.drops["queue_full"] += 1
        return False

    def enqueue_lsa(self, link: PeerLink, lsa: Lsa, now: float, *, urgent: bool) -> bool:
        if link.enqueue_lsa(lsa, now, urgent=urgent):
            return True
        self.stats.drops["queue_full"] += 1
        return False

    def count_out(self, msg: Message, size: int) -> None:
        self.stats.frames_out[type(msg).__name__] += 1
        self.stats.bytes_out += size
        if not isinstance(msg, Data):
            self.stats.control_bytes_out += size

    def _count_drops(self, link: PeerLink) -> None:
        """Fold the reader's per-reason drop counters into the node's, logging new drops."""
        if link.reader.stats.total == link.drops_total:
            return
        link.drops_total = link.reader.stats.total
        now = trio.current_time()
        for reason, count in link.reader.stats.as_dict().items():
            new = count - link.drops_seen.get(reason, 0)
            if new > 0:
                link.drops_seen[reason] = count
                self.stats.drops[reason] += new
                self.log_drop(link, reason, now)

    def drop(self, link: PeerLink, reason: str, now: float) -> None:
        """Count and (rate-limited) log a frame from ``link`` refused for ``reason``."""
        self.stats.drops[reason] += 1
        self.log_drop(link, reason, now)

    def log_drop(self, link: PeerLink, reason: str, now: float) -> None:
        self.droplog.log(link.peer, now, "%s dropped a frame: %s", self.node_id, reason)
