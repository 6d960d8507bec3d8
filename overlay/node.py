"""``OverlayNode``: one overlay node on a tcpstack :class:`~tcpstack.api.Stack`, under one nursery.

Tasks. The peer links (listening, dialling, Hellos, and per link a reader, a writer, a sampler,
an event watcher and a prober) live in :mod:`overlay.peerlink`; this module is the orchestrator
and the application API: it turns link events into link-state (an LSA task: origination,
refresh, ageing), routes (a route task) and forwarding (the retransmission timer).

Failure handling (the point of the design). When a peer link reports its path broken (an RTO,
a reset, a user timeout, or silence for ``down_after``; see :mod:`overlay.peerlink`), the link
is marked down for routing at once, the LSA saying so is originated at once (bad news is not
rate-limited), routes are recomputed at once, and messages in the send window whose path
crossed the link are resent on the new path without waiting for their timer.

LSA origination. A new link sample or probe RTT wakes the LSA task only when the link's advert
moved significantly from what our LSA says (:func:`overlay.linkstate.significant_change`, the
same test that decides origination); otherwise the task wakes every ``lsa_interval`` for
ageing and the ``lsa_refresh``.

Flooding. LSAs go out through each link's paced LSA queue (see "Flood pacing" in
:mod:`overlay.peerlink`): bad news at once, anything else within ``FLOOD_PACING`` together with
whatever else is waiting. Until one of our LSAs has advertised a link up, ours says nothing a
router can use (a node with no links is unreachable either way), so it is not flooded: after a
start the first LSA the network sees from us is the one with our links in it.

Routes. Remote changes arrive as LSAs; recomputation waits ``SPF_DELAY`` for the rest of a
flood's burst (as OSPF's SPF delay does), and then runs every ``ROUTE_TICK`` for as long as a
hysteresis hold can still be running: until ``hold_time`` + one tick after the last change of
the graph or of a selected path. Selection depends only on the graph and the time, so after that
re-running it would change nothing. See :mod:`overlay.forwarding` for forwarding, pinning and
end-to-end reliability.

Bad input. Frame-level drops (authentication, replay, parse, size) are counted by the peer
links; frames with a wrong sender, a bad source route or an invalid LSA are dropped and counted
here; all in ``stats.drops`` under the reason's name, logged at most once per second per peer.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
from overlay.linkstate import LinkStateDatabase, Received, bad_news, significant_change
from overlay.messages import Data, DataAck, LinkAdvert, Lsa, Message, Probe, ProbeReply
from overlay.metrics import LinkEstimator, LinkQuality
from overlay.peerlink import LinkClosed, PeerLink, PeerLinks
from overlay.routing import POLICIES, PathMetrics, Router
from overlay.subscription import Subscription
from overlay.types import Delivery, LinkChange, NodeStats, OverlayEvent, PathChange, PathQuality
from tcpstack.api import Stack

__all__ = ["OverlayNode", "open_node", "Subscription", "LinkClosed"]  # Subscription, LinkClosed: old homes

log = logging.getLogger(__name__)

RECEIVE_QUEUE = 1024  # delivered messages waiting for receive()
MAX_ROUTES = 4096  # (dst, policy) pairs tracked
ROUTE_TICK = 0.25  # s between hysteresis re-evaluations
SPF_DELAY = 0.05  # s to wait after a database change for the rest of the flood
# Bytes of a Data frame that are not payload, with 64-character ids and a MAX_HOPS path: header,
# sender and counter, MAC, src and dst, flow/msg_id/flags/hop/path_len, the path.
DATA_OVERHEAD = (7 + 64 + 8) + 32 + 2 * 65 + 19 + MAX_HOPS * 65


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
        boot = self._rng.getrandbits(63)
        self._estimators = {
            n.node_id: LinkEstimator(n.node_id, config.metrics) for n in config.neighbours
        }
        self.links = PeerLinks(self, stack, config, self._rng, boot)
        self._up: set[str] = set()
        # A random phase for the refresh (see overlay.linkstate), from the boot value so the
        # rest of the seeded sequence (message ids, nonces, backoff) stays as it was.
        refresh_advance = random.Random(boot).uniform(0.0, config.routing.lsa_refresh / 2)
        self.lsdb = LinkStateDatabase(
            self.node_id, config.routing, refresh_advance=refresh_advance
        )
        self._announced = False  # an LSA of ours with a link up has been flooded
        self.router = Router(self.node_id, config.routing)
        self._graph_version = -1
        self._hold_until = -math.inf  # route ticks matter until then (see the docstring)
        self.routes = RouteTable(self.router, config.routing, max_routes=MAX_ROUTES)
        self._sender = Sender(window=send_window, rng=self._rng)
        self._dedupe = Deduplicator()
        self._window_lot = trio.lowlevel.ParkingLot()
        self._timer_kick = trio.Event()
        self._lsa_kick = trio.Event()
        self._route_kick = trio.Event()
        self._deliver_tx, self._deliver_rx = trio.open_memory_channel[Delivery](RECEIVE_QUEUE)
        self._subscribers: set[Subscription] = set()
        self._closed = False

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

    def unacknowledged(self, dst: str | None = None, *, flow: int | None = None) -> int:
        """Reliable messages sent (to ``dst``, in ``flow``; every one if None) that the
        destination has not yet acknowledged end to end: still in flight or due to be sent
        again. A message leaves this count when its ack arrives or when the node gives up on it
        (counted in ``stats.expired``), never silently."""
        return sum(
            1 for e in self._sender.pending()
            if (dst is None or e.dst == dst) and (flow is None or e.flow == flow)
        )

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
        sub = Subscription(maxlen, stats=self.stats, subscribers=self._subscribers)
        if self._closed:
            sub._close()
        else:
            self._subscribers.add(sub)
        return sub

    @property
    def listen_port(self) -> int | None:
        """The port the node listens on (known once it runs)."""
        return self.links.listen_port

    @property
    def peers(self) -> list[str]:
        """Neighbours whose link is up for routing."""
        return sorted(self._up)

    # ================================================================ running
    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = await self.stack.open_tcp_listener(self.config.listen_port)
        try:
            async with trio.open_nursery() as nursery:
                self._originate(trio.current_time(), force=True)
                self.links.start(nursery, listener)
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

    # ================================================================ peer link events
    # The LinkHost interface of overlay.peerlink.

    def estimator(self, peer: str) -> LinkEstimator:
        return self._estimators[peer]

    def link_opened(self, link: PeerLink, now: float) -> None:
        self._set_up(link.peer, True, now, "connected")
        for lsa in self.lsdb.lsas():  # database synchronisation
            if lsa.origin != self.node_id or self._announced:
                self.links.enqueue_lsa(link, lsa, now, urgent=False)

    def link_closed(self, link: PeerLink, now: float) -> None:
        self._set_up(link.peer, False, now, link.close_reason or "closed")

    def link_failed(self, link: PeerLink, now: float, reason: str) -> None:
        self._set_up(link.peer, False, now, reason)

    def link_recovered(self, link: PeerLink, now: float) -> None:
        self._set_up(link.peer, True, now, "delivering again")

    def link_routable(self, peer: str) -> bool:
        return peer in self._up

    def metrics_changed(self, link: PeerLink, now: float) -> None:
        """Wake the LSA task if this link's advert moved enough to be originated early."""
        own = self.lsdb.own
        old = None
        if own is not None:
            old = next((adv for adv in own.links if adv.neighbour == link.peer), None)
        if significant_change(old, self._advert(link.peer, now),
                              self.config.routing.change_threshold):
            self._lsa_kick.set()

    def on_frame(self, link: PeerLink, sender: str, msg: Message) -> None:
        self._dispatch(link, sender, msg)

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
    def _dispatch(self, link: PeerLink, sender: str, msg: Message) -> None:
        name = type(msg).__name__
        now = trio.current_time()
        if sender != link.peer:
            self._drop(link, "wrong_sender", now)
            return
        self.stats.frames_in[name] += 1
        link.last_rx = now
        self._estimators[link.peer].on_frame(now)
        if isinstance(msg, Data):
            self._app_traffic(link, now)
            self._on_data(link, msg, now)
        elif isinstance(msg, DataAck):
            self._app_traffic(link, now)
            self._on_ack(link, msg, now)
        elif isinstance(msg, Lsa):
            self._on_lsa(link, msg, now)
        elif isinstance(msg, Probe):
            link.last_probe_rx = now
            self._enqueue(link, ProbeReply(msg.nonce, msg.sent), control=True)
            if msg.rtt > 0:  # the peer's measurement of our common round trip
                self._estimators[link.peer].on_probe_rtt(msg.rtt, now)
                self.metrics_changed(link, now)
        elif isinstance(msg, ProbeReply):
            sent = link.probes.pop(msg.nonce, None)
            if sent is None or sent != msg.sent:
                self._drop(link, "unmatched_probe_reply", now)
            else:
                link.probe_rtt = now - sent
                self._estimators[link.peer].on_probe_rtt(now - sent, now)
                self.metrics_changed(link, now)
        else:  # a second Hello
            self._drop(link, "unexpected_hello", now)

    def _on_lsa(self, link: PeerLink, lsa: Lsa, now: float) -> None:
        old = self.lsdb.get(lsa.origin)
        verdict = self.lsdb.receive_lsa(lsa, now)
        if verdict is Received.REJECTED:
            self._drop(link, "bad_lsa", now)
            return
        link.peer_has(lsa.origin, lsa.seq)  # nothing older of this origin needs to go there
        if verdict is Received.INSTALLED:
            urgent = old is not None and bad_news(old.links, lsa.links)
            self.stats.lsas_flooded += self._flood(lsa, now, urgent=urgent, skip=link)
            self._route_kick.set()
        elif verdict is Received.SELF_NEWER:
            self._originate(now, force=True)
        elif verdict is Received.STALE:
            newer = self.lsdb.get(lsa.origin)
            if newer is not None:
                self.links.enqueue_lsa(link, newer, now, urgent=False)

    def _flood(self, lsa: Lsa, now: float, *, urgent: bool, skip: PeerLink | None = None) -> int:
        """Queue ``lsa`` on every link but ``skip``; return on how many."""
        sent = 0
        for other in self.links.links.values():
            if other is not skip:
                sent += self.links.enqueue_lsa(other, lsa, now, urgent=urgent)
        return sent

    def _on_data(self, link: PeerLink, data: Data, now: float) -> None:
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

    def _on_ack(self, link: PeerLink, ack: DataAck, now: float) -> None:
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
            if self._sender.lost_found:
                self._timer_kick.set()

    def _drop(self, link: PeerLink, reason: str, now: float) -> None:
        self.links.drop(link, reason, now)

    # ================================================================ frames out
    def _enqueue(self, link: PeerLink, msg: Message, *, control: bool) -> bool:
        return self.links.enqueue(link, msg, control=control)

    def _emit(self, msg: Data | DataAck, next_hop: str, *, control: bool = False) -> bool:
        link = self.links.links.get(next_hop)
        if link is None or next_hop not in self._up:
            self.stats.drops["next_hop_down"] += 1
            return False
        if isinstance(msg, Data):
            self._app_traffic(link, trio.current_time())
        return self._enqueue(link, msg, control=control)

    def _app_traffic(self, link: PeerLink, now: float) -> None:
        """Data or DataAck on ``link``: no probes for ``idle_after``, and TCP's srtt is its
        latency meanwhile (see :mod:`overlay.metrics`)."""
        link.last_app = now
        self._estimators[link.peer].on_app(now)

    # ================================================================ link state and routes
    def _advert(self, peer: str, now: float) -> LinkAdvert:
        """Our link to ``peer`` as advertised: the estimator's view (finite numbers; a link that
        cannot be measured yet is down), except that a link is only up for routing while the
        node holds it up (an RTO marks it down before the estimator would notice)."""
        adv = self._estimators[peer].advert(now)
        if adv.up and peer not in self._up:
            adv = attrs.evolve(adv, up=False)
        return adv

    def _adverts(self, now: float) -> list[LinkAdvert]:
        return [self._advert(peer, now) for peer in sorted(self._estimators)]

    def _originate(self, now: float, *, force: bool = False) -> None:
        adverts = self._adverts(now)
        previous = self.lsdb.own
        lsa = self.lsdb.originate(adverts, now) if force else self.lsdb.maybe_originate(adverts, now)
        if lsa is None:
            return
        self.stats.lsas_originated += 1
        self._route_kick.set()
        if not self._announced:
            if not any(adv.up for adv in lsa.links):
                return  # nothing to announce yet (see "Flooding" in the module docstring)
            self._announced = True
        urgent = previous is not None and bad_news(previous.links, lsa.links)
        self._flood(lsa, now, urgent=urgent)

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
        SPF delay), and every ROUTE_TICK while a hold time may be running. Our own links going
        down do not wait for this: :meth:`_set_up` reroutes at once."""
        while True:
            self._route_kick = trio.Event()
            if trio.current_time() <= self._hold_until:
                with trio.move_on_after(ROUTE_TICK):
                    await self._route_kick.wait()
                    await trio.sleep(SPF_DELAY)
            else:
                await self._route_kick.wait()
                await trio.sleep(SPF_DELAY)
            self._reroute(trio.current_time())

    def _update_router(self) -> None:
        if self.lsdb.version != self._graph_version:
            self._graph_version = self.lsdb.version
            self.router.update(self.lsdb.graph())
            self._hold_running(trio.current_time())

    def _hold_running(self, now: float) -> None:
        """A hysteresis hold may have started now: keep re-evaluating until it must be over."""
        self._hold_until = max(self._hold_until,
                               now + self.config.routing.hold_time + ROUTE_TICK)

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
        self._hold_running(now)
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
            timed_out, lost, expired = self._sender.due(now)
            for entry in timed_out:
                self._resend(entry, now, backoff=True)
            for entry in lost:  # later messages on its path were acked: no backoff
                self._resend(entry, now, backoff=False)
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
