"""``OverlayNode``: one overlay node on a tcpstack :class:`~tcpstack.api.Stack`, under one nursery.

Tasks. One listener; one dialler per neighbour whose id is lexically larger than ours; per
connected peer link a reader, a writer, a sampler, an event watcher and a prober; node-wide an
LSA task (origination, refresh, ageing), a route task and the retransmission timer.

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

Failure detection (the point of the design). The sampler reads ``stream.info()`` every
``sample_interval`` and at once when the engine reports recovery or loss; the event watcher
marks the link down for routing the instant the engine reports an RTO, a reset, a user timeout
or a keep-alive timeout: a link with data in flight that needs an RTO has lost its path, and
waiting for more evidence would cost the RTO backoff. The LSA saying so is originated at once
(bad news is not rate-limited), routes are recomputed at once, and messages in the send window
whose path crossed the link are resent on the new path without waiting for their timer. The link
comes back up when TCP delivers again (``bytes_acked`` moves past its value at the failure, with
the RTO backoff cleared); a link still down after ``STALE_LINK`` seconds is closed and re-dialled,
because a fresh connection notices a healed path sooner than an RTO backed off to minutes. An
idle link (no Data or DataAck for ``idle_after``) gets a Probe every ``probe_interval``, so a cut
shows up as an RTO of the probe's segment within about ``probe_interval`` + one RTO; a link with
traffic gets no probes. A link whose estimator has heard nothing for ``down_after`` is down too.

Routes. Remote changes arrive as LSAs; recomputation waits ``SPF_DELAY`` for the rest of a
flood's burst (as OSPF's SPF delay does), and runs every ``ROUTE_TICK`` so hold times can run
out. See :mod:`overlay.forwarding` for forwarding, pinning and end-to-end reliability.

Bad input. Frames that fail authentication, replay, parse or size checks are dropped by the
:class:`~overlay.messages.FrameReader` and counted in ``stats.drops`` under the reason's name;
frames with a wrong sender, a bad source route or an invalid LSA are dropped and counted here;
all are logged at most once per second per peer. A length prefix beyond ``max_frame`` makes the
stream unrecoverable: that link is closed and re-established. An unexpected error in one link's
task closes that link (counted as "internal_error"), never the node.
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import networkx as nx
import trio

from overlay.config import NodeConfig, validate_node_id
from overlay.forwarding import (
    MAX_HOPS,
    Deduplicator,
    Pending,
    RouteTable,
    Sender,
    check_route,
    reverse_ack,
)
from overlay.linkstate import LinkStateDatabase, Received
from overlay.messages import (
    Data,
    DataAck,
    FrameReader,
    FrameWriter,
    Hello,
    LinkAdvert,
    Lsa,
    Message,
    Probe,
    ProbeReply,
    RateLimitedLog,
    ReplayGuard,
)
from overlay.metrics import LinkEstimator, LinkQuality
from overlay.routing import POLICIES, PathMetrics, Router
from overlay.types import Delivery, LinkChange, NodeStats, OverlayEvent, PathChange, PathQuality
from tcpstack.api import Stack, TCPStream
from tcpstack.tcp.events import (
    KeepaliveTimeout,
    LossDetected,
    RecoveryEntered,
    ResetReceived,
    RtoFired,
    UserTimeout,
)

__all__ = ["OverlayNode", "open_node", "Subscription", "LinkClosed"]

log = logging.getLogger(__name__)

MAX_HANDSHAKES = 64  # incoming connections waiting for their Hello at once
STALE_LINK = 15.0  # s a link may stay down (TCP still retrying) before it is closed and re-dialled
HELLO_TIMEOUT = 5.0  # s for the peer's Hello after the connection is up
CONNECT_TIMEOUT = 10.0  # s for one dial attempt
QUEUE_LIMIT = 512  # frames waiting per link and class (control / data)
RECEIVE_QUEUE = 1024  # delivered messages waiting for receive()
MAX_ROUTES = 4096  # (dst, policy) pairs tracked
ROUTE_TICK = 0.25  # s between hysteresis re-evaluations
SPF_DELAY = 0.05  # s to wait after a database change for the rest of the flood
# Bytes of a Data frame that are not payload, with 64-character ids and a MAX_HOPS path: header,
# sender and counter, MAC, src and dst, flow/msg_id/flags/hop/path_len, the path.
DATA_OVERHEAD = (7 + 64 + 8) + 32 + 2 * 65 + 19 + MAX_HOPS * 65


class LinkClosed(Exception):
    """A peer link ended; the message says why."""


class Subscription:
    """A bounded queue of path and link events; iterate it with ``async for``.

    When ``maxlen`` events are waiting the oldest is dropped and counted in :attr:`dropped` (and
    the node's ``stats.events_dropped``). Iteration ends when the node closes or after
    :meth:`aclose`.
    """

    def __init__(self, node: OverlayNode, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self._node = node
        self._queue: collections.deque[OverlayEvent] = collections.deque()
        self._maxlen = maxlen
        self._lot = trio.lowlevel.ParkingLot()
        self.closed = False
        self.dropped = 0

    def _push(self, event: OverlayEvent) -> None:
        if len(self._queue) >= self._maxlen:
            self._queue.popleft()
            self.dropped += 1
            self._node.stats.events_dropped += 1
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
        self._node._subscribers.discard(self)
        self._close()
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class _PeerLink:
    """One connected peer: its stream, frame reader, outgoing queues and liveness state."""

    peer: str
    stream: TCPStream
    reader: FrameReader
    connected_at: float
    control: collections.deque[Message] = attrs.Factory(collections.deque)
    data: collections.deque[Message] = attrs.Factory(collections.deque)
    wake: trio.Event = attrs.Factory(trio.Event)
    kick_sampler: trio.Event = attrs.Factory(trio.Event)
    scope: trio.CancelScope | None = None
    close_reason: str = ""
    last_rx: float = 0.0  # last valid frame
    last_app: float = -math.inf  # last Data/DataAck either way: probes only when idle
    acked_at_failure: int | None = None  # bytes_acked when marked down; None while up
    failed_at: float = 0.0
    probes: dict[int, float] = attrs.Factory(dict)
    drops_seen: dict[str, int] = attrs.Factory(dict)  # the reader's counts already folded in
    drops_total: int = 0
    epoch: int = 0  # connection number, so the estimator knows the counters restarted


class OverlayNode:
    """An overlay node; make one with :func:`open_node`."""

    def __init__(
        self, stack: Stack, config: NodeConfig, *, seed: int | None = None,
        send_window: int = 256,
    ) -> None:
        self.stack = stack
        self.config = config
        self.node_id = config.node_id
        self.stats = NodeStats()
        self._rng = random.Random(seed if seed is not None else random.getrandbits(64))
        self._boot = self._rng.getrandbits(63)
        self._writer = FrameWriter(config.key, self.node_id, max_frame=config.max_frame)
        # One replay guard for every link: frames captured on an old connection to a neighbour
        # cannot be replayed into its next one.
        self._replay = ReplayGuard()
        self._droplog = RateLimitedLog(log)
        self._neighbours = {n.node_id: n for n in config.neighbours}
        self._estimators = {
            peer: LinkEstimator(peer, config.metrics) for peer in self._neighbours
        }
        self._links: dict[str, _PeerLink] = {}
        self._up: set[str] = set()
        self.lsdb = LinkStateDatabase(self.node_id, config.routing)
        self.router = Router(self.node_id, config.routing)
        self._graph_version = -1
        self.routes = RouteTable(self.router, config.routing, max_routes=MAX_ROUTES)
        self._sender = Sender(window=send_window, rng=self._rng)
        self._dedupe = Deduplicator()
        self._window_lot = trio.lowlevel.ParkingLot()
        self._timer_kick = trio.Event()
        self._lsa_kick = trio.Event()
        self._route_kick = trio.Event()
        self._deliver_tx, self._deliver_rx = trio.open_memory_channel[Delivery](RECEIVE_QUEUE)
        self._subscribers: set[Subscription] = set()
        self._nursery: trio.Nursery | None = None
        self._handshaking = 0
        self._closed = False
        self.listen_port: int | None = None

    # ================================================================ application API
    async def send(
        self, dst: str, payload: bytes, *, policy: str = "latency", reliable: bool = True,
        flow: int = 0,
    ) -> int:
        """Send ``payload`` to node ``dst``; return its message id once it is accepted.

        A reliable message waits for room in the bounded send window, then is retransmitted
        until ``dst`` acknowledges it (it is delivered there exactly once). An unreliable one
        is sent once on the current path, or dropped (counted as "no_route") if there is none.
        """
        if self._closed:
            raise trio.ClosedResourceError("the node is closed")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
        validate_node_id("dst", dst)
        if dst == self.node_id:
            raise ValueError("dst is this node")
        if not 0 <= flow < 1 << 64:
            raise ValueError(f"flow must fit in 64 bits, got {flow}")
        payload = bytes(payload)
        if len(payload) > self.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes > max_payload {self.max_payload}")
        await trio.lowlevel.checkpoint()
        if reliable:
            while self._sender.space <= 0:
                await self._window_lot.park()
                if self._closed:
                    raise trio.ClosedResourceError("the node is closed")
        now = trio.current_time()
        path = self._flow_path(dst, policy, flow, now)
        msg_id = self._sender.new_id()
        self.stats.sent += 1
        if reliable:
            self._sender.track(msg_id, dst, flow, policy, payload, path, now)
            self._timer_kick.set()
        if path is None:
            if not reliable:
                self.stats.drops["no_route"] += 1
            return msg_id
        self._emit(Data(self.node_id, dst, flow, msg_id, reliable, path, 1, payload), path[1])
        return msg_id

    async def receive(self) -> Delivery:
        """The next message for this node (each reliable one exactly once)."""
        return await self._deliver_rx.receive()

    @property
    def max_payload(self) -> int:
        """The largest payload :meth:`send` takes (with node ids of up to 64 characters)."""
        return max(0, self.config.max_frame - DATA_OVERHEAD)

    @property
    def send_window(self) -> tuple[int, int]:
        """(reliable messages in flight, window size)."""
        return self._sender.in_flight, self._sender.window

    def best_path(self, dst: str, policy: str = "latency") -> tuple[str, ...] | None:
        current = self._current(dst, policy, trio.current_time())
        return None if current is None else current.path

    def path_quality(self, dst: str, policy: str = "latency") -> PathQuality | None:
        now = trio.current_time()
        current = self._current(dst, policy, now)
        if current is None:
            return None
        metrics = self.router.evaluate(current.path) or current
        path = metrics.path
        first = self._estimators[path[1]].quality(now) if path[1] in self._estimators else None
        ages = [self.lsdb.age(node, now) for node in path[1:-1]]
        age = max([first.age if first else 0.0] + [a for a in ages if a is not None])
        return PathQuality(
            dst=dst, policy=policy, path=path, hops=len(path) - 1, latency=metrics.latency,
            loss=metrics.loss, throughput=metrics.throughput, age=age,
            samples=first.samples if first else 0,
        )

    def link_quality(self, peer: str) -> LinkQuality:
        try:
            return self._estimators[peer].quality(trio.current_time())
        except KeyError:
            raise KeyError(f"{peer!r} is not a neighbour of {self.node_id!r}") from None

    def topology(self) -> nx.DiGraph:
        return self.lsdb.graph().copy()

    def subscribe(self, maxlen: int = 1024) -> Subscription:
        sub = Subscription(self, maxlen)
        if self._closed:
            sub._close()
        else:
            self._subscribers.add(sub)
        return sub

    @property
    def peers(self) -> list[str]:
        """Neighbours whose link is up for routing."""
        return sorted(self._up)

    # ================================================================ running
    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = await self.stack.open_tcp_listener(self.config.listen_port)
        self.listen_port = listener.port
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._originate(trio.current_time(), force=True)
                nursery.start_soon(self._accept_loop, listener)
                for peer in sorted(self._neighbours):
                    if self.node_id < peer:
                        nursery.start_soon(self._dial_loop, peer)
                nursery.start_soon(self._lsa_loop)
                nursery.start_soon(self._route_loop)
                nursery.start_soon(self._retransmit_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    def _close(self) -> None:
        self._closed = True
        for sub in list(self._subscribers):
            sub._close()
        self._subscribers.clear()
        self._window_lot.unpark_all()
        self._deliver_tx.close()

    # ================================================================ peer links
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
            stream.options.nodelay = True
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
        neighbour = self._neighbours[peer]
        attempt = 0
        while True:
            stream: TCPStream | None = None
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    options: dict[str, Any] = {"nodelay": True}
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
                await trio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            await self._run_link(peer, stream, reader, rest)
            await trio.sleep(self._backoff(0))

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.reconnect_max, self.config.reconnect_min * 2 ** min(attempt, 30))
        return delay * self._rng.uniform(0.5, 1.0)

    async def _handshake(
        self, stream: TCPStream, expected: str | None
    ) -> tuple[FrameReader, Hello, list[tuple[str, Message]]]:
        """Exchange Hellos; return the reader and any frames that followed the peer's Hello."""
        reader = FrameReader(
            self.config.key, max_frame=self.config.max_frame, replay=self._replay
        )
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
        if sender not in self._neighbours:
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
        frame = self._writer.encode(msg)
        self._count_out(msg, len(frame))
        await stream.send_all(frame)

    async def _run_link(
        self, peer: str, stream: TCPStream, reader: FrameReader, rest: list[tuple[str, Message]]
    ) -> None:
        now = trio.current_time()
        link = _PeerLink(peer, stream, reader, now, last_rx=now)
        link.drops_seen = reader.stats.as_dict()  # counted by the handshake
        link.drops_total = reader.stats.total
        old = self._links.get(peer)
        if old is not None and old.scope is not None:
            old.close_reason = "replaced by a newer link"
            old.scope.cancel()
        self._links[peer] = link
        self.stats.connects += 1
        link.epoch = self.stats.connects
        self._estimators[peer].on_info(stream.info(), now, epoch=link.epoch)
        try:
            with trio.CancelScope() as scope:
                link.scope = scope
                self._set_up(peer, True, now, "connected")
                for lsa in self.lsdb.lsas():  # database synchronisation
                    self._enqueue(link, lsa, control=True)
                for sender, msg in rest:
                    self._dispatch(link, sender, msg)
                async with trio.open_nursery() as nursery:
                    for task in (self._reader, self._writer_task, self._sampler, self._watcher,
                                 self._prober):
                        nursery.start_soon(self._guard, link, task)
        finally:
            with trio.CancelScope(shield=True):
                if self._links.get(peer) is link:
                    del self._links[peer]
                    self._set_up(peer, False, trio.current_time(), link.close_reason or "closed")
                log.info("%s: link to %s closed: %s", self.node_id, peer, link.close_reason)
                await stream.aclose()

    async def _guard(self, link: _PeerLink, task: Any) -> None:
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

    async def _reader(self, link: _PeerLink) -> None:
        stream, reader = link.stream, link.reader
        while True:
            data = await stream.receive_some()
            if not data:
                raise LinkClosed("peer closed the link")
            self.stats.bytes_in += len(data)
            frames = reader.feed(data)
            self._count_drops(link)
            for sender, msg in frames:
                self._dispatch(link, sender, msg)
            if reader.poisoned:
                raise LinkClosed("oversized length prefix: cannot resynchronise")

    async def _writer_task(self, link: _PeerLink) -> None:
        stream = link.stream
        while True:
            while not link.control and not link.data:
                link.wake = trio.Event()
                await link.wake.wait()
            chunks: list[bytes] = []
            size = 0
            while (link.control or link.data) and size < 65536:
                msg = link.control.popleft() if link.control else link.data.popleft()
                try:
                    frame = self._writer.encode(msg)
                except ValueError:
                    self.stats.drops["oversize_out"] += 1
                    continue
                self._count_out(msg, len(frame))
                chunks.append(frame)
                size += len(frame)
            if chunks:
                await stream.send_all(b"".join(chunks))

    async def _sampler(self, link: _PeerLink) -> None:
        metrics = self.config.metrics
        while True:
            now = trio.current_time()
            info = link.stream.info()
            self._estimators[link.peer].on_info(info, now, epoch=link.epoch)
            if link.acked_at_failure is not None:
                if now - link.failed_at > STALE_LINK:
                    # TCP backs its RTO off towards minutes; a fresh connection notices a healed
                    # path sooner (reconnect_max), so give this one up.
                    raise LinkClosed(f"down for more than {STALE_LINK:g} s")
                if info.bytes_acked > link.acked_at_failure and info.backoff == 0:
                    link.acked_at_failure = None
                    self._set_up(link.peer, True, now, "delivering again")
            elif link.peer in self._up and not self._estimators[link.peer].is_up(now):
                self._link_failed(link, now, f"nothing heard for {metrics.down_after:g} s",
                                  info.bytes_acked)
            self._lsa_kick.set()
            link.kick_sampler = trio.Event()
            with trio.move_on_after(metrics.sample_interval):
                await link.kick_sampler.wait()

    async def _watcher(self, link: _PeerLink) -> None:
        async for event in link.stream.events():
            if isinstance(event, RtoFired):
                self._link_failed(link, trio.current_time(), f"RTO (backoff {event.backoff})")
            elif isinstance(event, (ResetReceived, UserTimeout, KeepaliveTimeout)):
                self._link_failed(link, trio.current_time(), event.event_type)
            elif isinstance(event, (RecoveryEntered, LossDetected)):
                link.kick_sampler.set()

    async def _prober(self, link: _PeerLink) -> None:
        metrics = self.config.metrics
        while True:
            now = trio.current_time()
            if now - link.last_app >= metrics.idle_after:
                nonce = self._rng.getrandbits(32)
                link.probes[nonce] = now
                while len(link.probes) > 16:
                    del link.probes[next(iter(link.probes))]
                self._enqueue(link, Probe(nonce, now), control=True)
            await trio.sleep(metrics.probe_interval)

    def _link_failed(
        self, link: _PeerLink, now: float, reason: str, acked: int | None = None
    ) -> None:
        if self._links.get(link.peer) is not link:
            return
        if link.acked_at_failure is None:
            link.acked_at_failure = link.stream.info().bytes_acked if acked is None else acked
            link.failed_at = now
        self._set_up(link.peer, False, now, reason)

    def _set_up(self, peer: str, up: bool, now: float, reason: str) -> None:
        if (peer in self._up) == up:
            return
        est = self._estimators[peer]
        est.set_up(up, now)
        if up:
            self._up.add(peer)
            self.stats.link_ups += 1
        else:
            self._up.discard(peer)
            self.stats.link_downs += 1
        log.info("%s: link to %s %s (%s)", self.node_id, peer, "up" if up else "down", reason)
        self._publish(LinkChange(peer, up, now, est.quality(now), reason))
        self._originate(now, force=not up)
        self._reroute(now)
        if not up:
            for entry in self._sender.using((self.node_id, peer)):
                self._resend(entry, now, backoff=False)

    # ================================================================ frames in
    def _dispatch(self, link: _PeerLink, sender: str, msg: Message) -> None:
        name = type(msg).__name__
        now = trio.current_time()
        if sender != link.peer:
            self._drop(link, "wrong_sender", now)
            return
        self.stats.frames_in[name] += 1
        link.last_rx = now
        self._estimators[link.peer].on_frame(now)
        if isinstance(msg, Data):
            link.last_app = now
            self._on_data(link, msg, now)
        elif isinstance(msg, DataAck):
            link.last_app = now
            self._on_ack(link, msg, now)
        elif isinstance(msg, Lsa):
            self._on_lsa(link, msg, now)
        elif isinstance(msg, Probe):
            self._enqueue(link, ProbeReply(msg.nonce, msg.sent), control=True)
        elif isinstance(msg, ProbeReply):
            sent = link.probes.pop(msg.nonce, None)
            if sent is None or sent != msg.sent:
                self._drop(link, "unmatched_probe_reply", now)
            else:
                self._estimators[link.peer].on_probe_rtt(now - sent, now)
        else:  # a second Hello
            self._drop(link, "unexpected_hello", now)

    def _on_lsa(self, link: _PeerLink, lsa: Lsa, now: float) -> None:
        verdict = self.lsdb.receive_lsa(lsa, now)
        if verdict is Received.INSTALLED:
            for other in self._links.values():
                if other is not link:
                    self._enqueue(other, lsa, control=True)
                    self.stats.lsas_flooded += 1
            self._route_kick.set()
        elif verdict is Received.SELF_NEWER:
            self._originate(now, force=True)
        elif verdict is Received.STALE:
            newer = self.lsdb.get(lsa.origin)
            if newer is not None:
                self._enqueue(link, newer, control=True)
        elif verdict is Received.REJECTED:
            self._drop(link, "bad_lsa", now)

    def _on_data(self, link: _PeerLink, data: Data, now: float) -> None:
        verdict = check_route(data, link.peer, self.node_id)
        if verdict.action == "drop":
            self._drop(link, verdict.reason or "bad_path", now)
            return
        if verdict.action == "forward":
            assert verdict.next_hop is not None
            if self._emit(attrs.evolve(data, hop=data.hop + 1), verdict.next_hop):
                self.stats.forwarded += 1
            return
        if data.reliable and self._dedupe.seen(data.src, data.msg_id):
            self.stats.duplicates += 1
            self._enqueue(link, reverse_ack(data), control=True)
            return
        delivery = Delivery(data.src, data.payload, data.path, data.msg_id, data.flow,
                            data.reliable)
        try:
            self._deliver_tx.send_nowait(delivery)
        except trio.WouldBlock:
            # No ack: the source keeps it and retries once the application catches up.
            self.stats.drops["receive_queue_full"] += 1
            return
        except trio.ClosedResourceError:
            return
        self.stats.delivered += 1
        if data.reliable:
            self._dedupe.remember(data.src, data.msg_id)
            self._enqueue(link, reverse_ack(data), control=True)

    def _on_ack(self, link: _PeerLink, ack: DataAck, now: float) -> None:
        verdict = check_route(ack, link.peer, self.node_id)
        if verdict.action == "drop":
            self._drop(link, verdict.reason or "bad_path", now)
        elif verdict.action == "forward":
            assert verdict.next_hop is not None
            if self._emit(attrs.evolve(ack, hop=ack.hop + 1), verdict.next_hop, control=True):
                self.stats.forwarded += 1
        elif self._sender.on_ack(ack, now) is not None:
            self.stats.acked += 1
            self._window_lot.unpark_all()

    def _count_drops(self, link: _PeerLink) -> None:
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
                self._log_drop(link, reason, now)

    def _drop(self, link: _PeerLink, reason: str, now: float) -> None:
        self.stats.drops[reason] += 1
        self._log_drop(link, reason, now)

    def _log_drop(self, link: _PeerLink, reason: str, now: float) -> None:
        self._droplog.log(link.peer, now, "%s dropped a frame: %s", self.node_id, reason)

    # ================================================================ frames out
    def _enqueue(self, link: _PeerLink, msg: Message, *, control: bool) -> bool:
        queue = link.control if control else link.data
        if len(queue) >= QUEUE_LIMIT:
            self.stats.drops["queue_full"] += 1
            return False
        queue.append(msg)
        link.wake.set()
        return True

    def _emit(self, msg: Data | DataAck, next_hop: str, *, control: bool = False) -> bool:
        link = self._links.get(next_hop)
        if link is None or next_hop not in self._up:
            self.stats.drops["next_hop_down"] += 1
            return False
        if isinstance(msg, Data):
            link.last_app = trio.current_time()
        return self._enqueue(link, msg, control=control)

    def _count_out(self, msg: Message, size: int) -> None:
        self.stats.frames_out[type(msg).__name__] += 1
        self.stats.bytes_out += size
        if not isinstance(msg, Data):
            self.stats.control_bytes_out += size

    # ================================================================ link state and routes
    def _adverts(self, now: float) -> list[LinkAdvert]:
        """Our links as advertised: the estimators' view, except that a link is only up for
        routing while the node holds it up (an RTO marks it down before the estimator would
        notice) and has a finite RTT estimate (the LSA carries finite numbers only)."""
        adverts = []
        for peer in sorted(self._estimators):
            adv = self._estimators[peer].advert(now)
            finite = math.isfinite(adv.latency) and math.isfinite(adv.throughput)
            adverts.append(LinkAdvert(
                peer,
                adv.latency if math.isfinite(adv.latency) else 0.0,
                adv.loss,
                adv.throughput if math.isfinite(adv.throughput) else 0.0,
                adv.up and finite and peer in self._up,
            ))
        return adverts

    def _originate(self, now: float, *, force: bool = False) -> None:
        adverts = self._adverts(now)
        lsa = self.lsdb.originate(adverts, now) if force else self.lsdb.maybe_originate(adverts, now)
        if lsa is None:
            return
        self.stats.lsas_originated += 1
        for link in self._links.values():
            self._enqueue(link, lsa, control=True)
        self._route_kick.set()

    async def _lsa_loop(self) -> None:
        while True:
            now = trio.current_time()
            if self.lsdb.expire(now):
                self._route_kick.set()
            self._originate(now)
            due = self.lsdb.origination_due(self._adverts(now), now)
            wake = min(max(due, now + 0.01), now + self.config.routing.lsa_interval)
            self._lsa_kick = trio.Event()
            with trio.move_on_at(wake):
                await self._lsa_kick.wait()

    async def _route_loop(self) -> None:
        """Recompute after database changes, coalescing a flood's burst of LSAs (like OSPF's
        SPF delay), and every ROUTE_TICK so hold times run out. Our own links going down do
        not wait for this: :meth:`_set_up` reroutes at once."""
        while True:
            self._route_kick = trio.Event()
            with trio.move_on_after(ROUTE_TICK):
                await self._route_kick.wait()
                await trio.sleep(SPF_DELAY)
            self._reroute(trio.current_time())

    def _update_router(self) -> None:
        if self.lsdb.version != self._graph_version:
            self._graph_version = self.lsdb.version
            self.router.update(self.lsdb.graph())

    def _current(self, dst: str, policy: str, now: float) -> PathMetrics | None:
        self._update_router()
        current, change = self.routes.current(dst, policy, now)
        if change is not None:
            self._path_changed(change, now)
        return current

    def _reroute(self, now: float) -> None:
        self._update_router()
        for change in self.routes.reselect(now):
            self._path_changed(change, now)

    def _path_changed(self, change: PathChange, now: float) -> None:
        self.stats.path_changes += 1
        self._publish(change)
        if change.new is not None:
            # Messages waiting for a route, or whose path broke, go out now on the new one.
            for entry in self._sender.for_destination(change.dst, change.policy):
                if entry.path is None or self.router.evaluate(entry.path) is None:
                    self._resend(entry, now, backoff=False)

    def _usable(self, path: tuple[str, ...]) -> bool:
        return path[1] in self._up and self.router.evaluate(path) is not None

    def _flow_path(self, dst: str, policy: str, flow: int, now: float) -> tuple[str, ...] | None:
        self._update_router()
        path, change = self.routes.flow_path(dst, policy, flow, now, self._usable)
        if change is not None:
            self._path_changed(change, now)
        return path

    # ================================================================ retransmission
    async def _retransmit_loop(self) -> None:
        while True:
            deadline = self._sender.next_deadline()
            self._timer_kick = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._timer_kick.wait()
            now = trio.current_time()
            resend, expired = self._sender.due(now)
            for entry in resend:
                self._resend(entry, now, backoff=True)
            if expired:
                self.stats.expired += len(expired)
                log.warning("%s: gave up on %d message(s)", self.node_id, len(expired))
                self._window_lot.unpark_all()

    def _resend(self, entry: Pending, now: float, *, backoff: bool) -> None:
        path = self._flow_path(entry.dst, entry.policy, entry.flow, now)
        if path is None and not backoff:
            return  # nowhere to go yet; the timer or the next route change retries
        self._sender.sent_again(entry, path, now, backoff=backoff)
        if path is not None:
            self.stats.retransmitted += 1
            if not backoff:
                self.stats.rerouted += 1
            data = Data(self.node_id, entry.dst, entry.flow, entry.msg_id, True, path, 1,
                        entry.payload)
            self._emit(data, path[1])
        self._timer_kick.set()

    # ================================================================ events
    def _publish(self, event: OverlayEvent) -> None:
        for sub in self._subscribers:
            sub._push(event)


@asynccontextmanager
async def open_node(
    stack: Stack, config: NodeConfig, *, seed: int | None = None, send_window: int = 256
) -> AsyncIterator[OverlayNode]:
    """Run an overlay node on ``stack`` for the duration of the ``async with`` block.

    The listener is open when the block starts; peer links come up in the background
    (``seed`` makes message ids, probe nonces and backoff jitter reproducible). ``send_window``
    bounds the reliable messages in flight, beyond which :meth:`OverlayNode.send` waits.
    """
    node = OverlayNode(stack, config, seed=seed, send_window=send_window)
    async with trio.open_nursery() as nursery:
        await nursery.start(node._run)
        try:
            yield node
        finally:
            node._close()
            nursery.cancel_scope.cancel()
