"""Forwarding of application data: source routes, per-flow pinning, end-to-end reliability.

Pure logic (no trio, no clock: every method takes ``now`` in seconds); :mod:`overlay.node` owns
the tasks and the peer links.

Source routing. The source picks the whole path (``Data.path``, src .. dst) from its own
link-state view and every relay forwards to ``path[hop + 1]``. A relay never reroutes: if its
next hop is down it drops the frame (counted) and the source, which learns of the failure from
the LSA flood or its own link, resends on a new path. :func:`check_route` validates a received
frame against the link it came in on, so a peer cannot make us forward along a path that does
not pass through it and us in order.

Per-flow pinning (:class:`FlowTable`). A flow ``(dst, policy, flow)`` keeps the path it was
given until the path selector of ``(dst, policy)`` switches or the path breaks; messages of one
flow therefore follow one path and arrive in order while nothing fails.

Path selection (:class:`RouteTable`). One :class:`~overlay.routing.PathSelector` per
``(dst, policy)`` somebody asked about (sent to, or queried), at most ``max_routes`` of them:
on each database change and periodically (hold times must run out) the current path is
re-evaluated on the new graph and the selector decides; a change is reported as a
:class:`~overlay.types.PathChange` and re-pins the flows of that ``(dst, policy)``.

Reliability (:class:`Sender`, :class:`Deduplicator`). A reliable message stays in the source's
send window until its ``DataAck`` (sent by the destination back along the reversed path)
arrives. The retransmission timeout is computed per destination as in RFC 6298 (SRTT, RTTVAR,
Karn's rule: no samples from retransmitted messages; exponential backoff on expiry) with bounds
``min_rto``/``max_rto``; a message is given up (counted) after ``give_up`` seconds.

A message's timer runs from when it was (re)sent, and, as TCP's does (RFC 6298 5.3), restarts
whenever a later message on the same path is acknowledged: a path whose acks keep coming is
delivering, however long the queue in front of a message. Without the restart a bulk sender
retransmits whatever waits in the first hop's queue longer than one RTO (a window of 256
messages of 8 kB queued behind a 500 kB/s link waits 4 s), adding copies to the very queue
that delayed them. A message still unacknowledged when ``dupthresh`` messages sent after it on
the same path have been (paths are FIFO: every relay forwards in order over one TCP stream, and
the acks come back the same way) is lost, and is resent at once without backoff, as TCP's fast
retransmit does after three duplicate ACKs (RFC 5681 3.2). The window is
bounded (``window`` messages), which is what makes :meth:`OverlayNode.send` block. The
destination delivers each ``(src, msg_id)`` once: it remembers the last ``dedupe_window`` ids
per source (and ``max_sources`` sources, least recently heard evicted first); a retransmission
arriving after that many later messages from the same source would be delivered again. Message
ids start at a random 48-bit base per boot so a restarted source does not collide with its
previous ids.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

import attrs

from overlay.config import RoutingSettings
from overlay.messages import Data, DataAck
from overlay.routing import POLICIES, PathMetrics, PathSelector, Router, beats
from overlay.types import PathChange

__all__ = [
    "MAX_HOPS",
    "RttEstimator",
    "Pending",
    "Sender",
    "Deduplicator",
    "FlowTable",
    "RouteTable",
    "Verdict",
    "check_route",
    "reverse_ack",
]

MAX_HOPS = 32  # longest source route accepted (nodes on the path, ends included)


class RttEstimator:
    """End-to-end RTO of one destination, RFC 6298 section 2 (alpha 1/8, beta 1/4, K 4)."""

    __slots__ = ("srtt", "rttvar", "rto", "min_rto", "max_rto")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(self.max_rto, max(self.min_rto, self.srtt + 4 * self.rttvar))


@attrs.define(slots=True, eq=False)
class Pending:
    """A reliable message in the send window."""

    msg_id: int
    dst: str
    flow: int
    policy: str
    payload: bytes
    path: tuple[str, ...] | None  # None while there is no route
    first_sent: float
    last_sent: float
    rto: float
    order: int = 0  # position in the send order (the window is kept in this order)
    attempts: int = 1
    later_acks: int = 0  # messages sent after this one on its path, acked since it was sent

    @property
    def deadline(self) -> float:
        """When its timer expires unless acks on its path restart it (:meth:`Sender.due`)."""
        return self.last_sent + self.rto


class Sender:
    """The source side: message ids, the bounded send window, retransmission timers."""

    def __init__(
        self,
        *,
        window: int = 256,
        initial_rto: float = 1.0,
        min_rto: float = 0.2,
        max_rto: float = 8.0,
        give_up: float = 60.0,
        dupthresh: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if dupthresh < 1:
            raise ValueError(f"dupthresh must be >= 1, got {dupthresh}")
        if not 0 < min_rto <= initial_rto <= max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        self.window = window
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.give_up = give_up
        self.dupthresh = dupthresh
        self._next_id = (rng or random.Random()).getrandbits(48)
        self._pending: dict[int, Pending] = {}  # in send order (``Pending.order``)
        self._order = 0
        #: set by :meth:`on_ack` when a message was found lost (:meth:`due` has it at once)
        self.lost_found = False
        self._rtt: dict[str, RttEstimator] = {}
        # When a message on (dst, path) was last acknowledged: restarts the timers on it.
        self._last_ack: dict[tuple[str, tuple[str, ...] | None], float] = {}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def space(self) -> int:
        return self.window - len(self._pending)

    def pending(self) -> Iterator[Pending]:
        return iter(list(self._pending.values()))

    def new_id(self) -> int:
        msg_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return msg_id

    def estimator(self, dst: str) -> RttEstimator:
        est = self._rtt.get(dst)
        if est is None:
            est = self._rtt[dst] = RttEstimator(self.initial_rto, self.min_rto, self.max_rto)
        return est

    def track(
        self, msg_id: int, dst: str, flow: int, policy: str, payload: bytes,
        path: tuple[str, ...] | None, now: float,
    ) -> Pending:
        """Put a reliable message in the window (the caller checked :attr:`space`)."""
        if self.space <= 0:
            raise RuntimeError("send window full")
        rto = self.estimator(dst).rto
        self._order += 1
        entry = Pending(
            msg_id, dst, flow, policy, payload, path, now, now, rto, self._order
        )
        self._pending[msg_id] = entry
        return entry

    def on_ack(self, ack: DataAck, now: float) -> Pending | None:
        """The destination acknowledged ``ack.msg_id``: free its slot. None if unknown (late
        duplicate ack, or an ack from someone else than the destination)."""
        entry = self._pending.get(ack.msg_id)
        if entry is None or ack.src != entry.dst:
            return None
        del self._pending[ack.msg_id]
        if entry.attempts == 1:  # Karn: a retransmitted message's ack is ambiguous
            self.estimator(entry.dst).sample(now - entry.last_sent)
        key = (entry.dst, entry.path)
        self._last_ack[key] = now
        if len(self._last_ack) > 4 * self.window:  # paths no longer in use
            live = {(e.dst, e.path) for e in self._pending.values()}
            self._last_ack = {k: t for k, t in self._last_ack.items() if k in live}
        if entry.attempts > 1:
            # Which copy arrived is unknown (Karn's ambiguity): no inference about the others.
            return entry
        # Messages sent before this one on the same path and still unacknowledged. In send
        # order those are the entries ahead of it: none when acks come in order.
        for other in self._pending.values():
            if other.order > entry.order:
                break
            if (
                other.path == entry.path
                and other.dst == entry.dst
                and other.last_sent <= entry.last_sent
            ):
                other.later_acks += 1
                if other.later_acks == self.dupthresh and other.path is not None:
                    self.lost_found = True
        return entry

    def _timer_deadline(self, entry: Pending) -> float:
        """When ``entry``'s timer expires: one RTO (the destination's current one, or the
        message's backed-off one if larger) after it was sent or after the last ack on its
        path, whichever is later."""
        rto = max(entry.rto, self.estimator(entry.dst).rto)
        last_ack = self._last_ack.get((entry.dst, entry.path))
        start = entry.last_sent if last_ack is None else max(entry.last_sent, last_ack)
        return start + rto

    def due(self, now: float) -> tuple[list[Pending], list[Pending], list[Pending]]:
        """(messages whose timer expired, messages found lost by later acks (resend without
        backoff), messages given up and removed)."""
        self.lost_found = False
        timed_out: list[Pending] = []
        lost: list[Pending] = []
        expired: list[Pending] = []
        for entry in list(self._pending.values()):
            if now - entry.first_sent >= self.give_up:
                del self._pending[entry.msg_id]
                expired.append(entry)
            elif entry.later_acks >= self.dupthresh and entry.path is not None:
                # Consumed here: if the caller cannot resend it (no route just now), the timer
                # still covers it, and next_deadline does not keep reporting it as due.
                entry.later_acks = 0
                lost.append(entry)
            elif self._timer_deadline(entry) <= now:
                timed_out.append(entry)
        return timed_out, lost, expired

    def sent_again(
        self, entry: Pending, path: tuple[str, ...] | None, now: float, *, backoff: bool = True
    ) -> None:
        """``entry`` went out again on ``path``; ``backoff`` doubles its RTO (RFC 6298 5.5), not
        done for an immediate resend after a link failure (the timer did not expire)."""
        entry.path = path
        entry.attempts += 1
        entry.later_acks = 0
        entry.last_sent = now
        if backoff:
            entry.rto = min(self.max_rto, entry.rto * 2)

    def using(self, link: tuple[str, str]) -> list[Pending]:
        """Messages whose path crosses ``link`` (either direction) or that have no path."""
        u, v = link
        found = []
        for entry in self._pending.values():
            path = entry.path
            if path is None or _crosses(path, u, v):
                found.append(entry)
        return found

    def for_destination(self, dst: str, policy: str) -> list[Pending]:
        return [e for e in self._pending.values() if e.dst == dst and e.policy == policy]

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has something (already passed for a message found lost)."""
        if not self._pending:
            return None
        soonest = math.inf
        for e in self._pending.values():
            if e.later_acks >= self.dupthresh and e.path is not None:
                return e.last_sent
            soonest = min(soonest, self._timer_deadline(e), e.first_sent + self.give_up)
        return soonest


def _crosses(path: tuple[str, ...], u: str, v: str) -> bool:
    return any({a, b} == {u, v} for a, b in zip(path, path[1:], strict=False))


class Deduplicator:
    """Which ``(src, msg_id)`` were delivered already, bounded per source and in sources."""

    def __init__(self, window: int = 8192, max_sources: int = 1024) -> None:
        if window < 1 or max_sources < 1:
            raise ValueError("window and max_sources must be >= 1")
        self.window = window
        self.max_sources = max_sources
        self._seen: OrderedDict[str, OrderedDict[int, None]] = OrderedDict()

    def seen(self, src: str, msg_id: int) -> bool:
        ids = self._seen.get(src)
        return ids is not None and msg_id in ids

    def remember(self, src: str, msg_id: int) -> None:
        ids = self._seen.get(src)
        if ids is None:
            ids = self._seen[src] = OrderedDict()
            if len(self._seen) > self.max_sources:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(src)
        ids[msg_id] = None
        if len(ids) > self.window:
            ids.popitem(last=False)


class FlowTable:
    """Per-flow path pinning, at most ``max_flows`` flows (least recently used evicted)."""

    def __init__(self, max_flows: int = 4096) -> None:
        self.max_flows = max_flows
        self._paths: OrderedDict[tuple[str, str, int], tuple[str, ...]] = OrderedDict()

    def path(
        self, dst: str, policy: str, flow: int, selected: tuple[str, ...] | None,
        usable: Callable[[tuple[str, ...]], bool],
    ) -> tuple[str, ...] | None:
        """The flow's pinned path if still usable, else ``selected`` (pinned from now on)."""
        key = (dst, policy, flow)
        pinned = self._paths.get(key)
        if pinned is not None and usable(pinned):
            self._paths.move_to_end(key)
            return pinned
        if selected is None:
            self._paths.pop(key, None)
            return None
        self._paths[key] = selected
        self._paths.move_to_end(key)
        if len(self._paths) > self.max_flows:
            self._paths.popitem(last=False)
        return selected

    def repin(self, dst: str, policy: str, new: tuple[str, ...] | None) -> int:
        """The selector of ``(dst, policy)`` switched: every flow of it moves to ``new``."""
        keys = [k for k in self._paths if k[0] == dst and k[1] == policy]
        for key in keys:
            if new is None:
                del self._paths[key]
            else:
                self._paths[key] = new
        return len(keys)

    def flows(self) -> Iterable[tuple[tuple[str, str, int], tuple[str, ...]]]:
        return list(self._paths.items())


@attrs.frozen(slots=True)
class Verdict:
    """What to do with a received Data/DataAck: deliver here, forward to ``next_hop``, or drop
    for ``reason``."""

    action: str  # "deliver" | "forward" | "drop"
    next_hop: str | None = None
    reason: str | None = None


def check_route(msg: Data | DataAck, sender: str, self_id: str) -> Verdict:
    """Validate a source-routed frame received from neighbour ``sender``.

    The path must be a loop-free route of at most :data:`MAX_HOPS` nodes from ``msg.src`` to
    ``msg.dst``, with ``sender`` at ``hop - 1`` and us at ``hop``.
    """
    path, hop = msg.path, msg.hop
    if not 2 <= len(path) <= MAX_HOPS or len(set(path)) != len(path):
        return Verdict("drop", reason="bad_path")
    if path[0] != msg.src or path[-1] != msg.dst:
        return Verdict("drop", reason="bad_path")
    if not 1 <= hop < len(path) or path[hop] != self_id or path[hop - 1] != sender:
        return Verdict("drop", reason="bad_path")
    if hop == len(path) - 1:
        return Verdict("deliver")
    return Verdict("forward", next_hop=path[hop + 1])


def reverse_ack(data: Data) -> DataAck:
    """The end-to-end ack of ``data``, from its destination back along the reversed path."""
    return DataAck(
        src=data.dst, dst=data.src, msg_id=data.msg_id, path=tuple(reversed(data.path)), hop=1
    )


@attrs.define(eq=False)
class _Route:
    selector: PathSelector
    current: PathMetrics | None = None


class RouteTable:
    """The path in use per ``(dst, policy)`` with hysteresis, and per-flow pinning, over a
    :class:`~overlay.routing.Router` fed the link-state graph."""

    def __init__(self, router: Router, settings: RoutingSettings, *, max_routes: int = 4096,
                 max_flows: int = 4096) -> None:
        self.router = router
        self.settings = settings
        self.max_routes = max_routes
        self.flows = FlowTable(max_flows)
        self._routes: dict[tuple[str, str], _Route] = {}

    def current(self, dst: str, policy: str, now: float) -> tuple[PathMetrics | None,
                                                                  PathChange | None]:
        """The path in use to ``dst``; the first call for a ``(dst, policy)`` selects one
        (and reports it as an "initial" change)."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
        key = (dst, policy)
        route = self._routes.get(key)
        change = None
        if route is None:
            if len(self._routes) >= self.max_routes:
                self._routes.pop(next(iter(self._routes)))
            route = self._routes[key] = _Route(PathSelector(self.settings))
            change = self._select(dst, policy, route, now)
        return route.current, change

    def reselect(self, now: float) -> list[PathChange]:
        """Re-evaluate every tracked ``(dst, policy)`` on the router's current graph."""
        changes = []
        for (dst, policy), route in list(self._routes.items()):
            change = self._select(dst, policy, route, now)
            if change is not None:
                changes.append(change)
        return changes

    def _select(self, dst: str, policy: str, route: _Route, now: float) -> PathChange | None:
        old = route.current
        current = self.router.evaluate(old.path) if old is not None else None
        candidates = self._candidates(dst, policy, route, current)
        chosen = route.selector.choose(current, candidates, policy, now)
        route.current = chosen
        old_path = None if old is None else old.path
        new_path = None if chosen is None else chosen.path
        if old_path == new_path:
            return None
        if old_path is None:
            reason = "initial"
        elif new_path is None:
            reason = "unreachable"
        elif current is None:
            reason = "down"
        else:
            reason = "better"
        self.flows.repin(dst, policy, new_path)
        return PathChange(dst, policy, old_path, new_path, now, reason)

    def _candidates(
        self, dst: str, policy: str, route: _Route, current: PathMetrics | None
    ) -> list[PathMetrics]:
        """What the selector must see to decide. While the current path is up and the best
        path does not beat it by the margin, no candidate does (the best has the least cost of
        them all, and :func:`~overlay.routing.beats` compares costs), so the selector keeps the
        current path and forgets its challengers whatever else is offered: then the best path
        alone is enough, and the alternates and detours (k + degree more searches) are only
        computed for destinations whose path may actually change."""
        if current is not None and current.path == route.selector.path:
            best = self.router.best(dst, policy)
            if best is not None and (
                best.path == current.path
                or not beats(best, current, policy, self.settings.margin, self.router.weights)
            ):
                return [best]
        return self.router.candidates(dst, policy, self.settings.alternates)

    def flow_path(
        self, dst: str, policy: str, flow: int, now: float,
        usable: Callable[[tuple[str, ...]], bool],
    ) -> tuple[tuple[str, ...] | None, PathChange | None]:
        """The path for the next message of ``flow``: its pinned path while ``usable``, else
        the selected one."""
        current, change = self.current(dst, policy, now)
        selected = None if current is None else current.path
        return self.flows.path(dst, policy, flow, selected, usable), change
