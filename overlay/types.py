"""Value types of the overlay's application and query API.

``Delivery`` is what :meth:`OverlayNode.receive` returns; ``PathQuality`` answers
:meth:`OverlayNode.path_quality`; ``PathChange`` and ``LinkChange`` are the events
:meth:`OverlayNode.subscribe` yields; ``NodeStats`` holds the node's counters.
"""

from __future__ import annotations

from collections import Counter

import attrs

from overlay.metrics import LinkQuality

__all__ = ["Delivery", "PathQuality", "PathChange", "LinkChange", "NodeStats", "OverlayEvent"]


@attrs.frozen(slots=True)
class Delivery:
    """One application message, delivered once; ``path`` is the source route it took."""

    src: str
    payload: bytes
    path: tuple[str, ...]
    msg_id: int
    flow: int = 0
    reliable: bool = True


@attrs.frozen(slots=True)
class PathQuality:
    """The path the node would use to ``dst`` under ``policy`` and its end-to-end metrics.

    latency: sum of the links' smoothed RTTs (s); loss: 1 - prod(1 - p) over the links;
    throughput: the bottleneck (bytes/s). ``age`` is the age (s) of the stalest link sample on
    the path and ``samples`` the fewest samples any of its links has.
    """

    dst: str
    policy: str
    path: tuple[str, ...]
    hops: int
    latency: float
    loss: float
    throughput: float
    age: float
    samples: int


@attrs.frozen(slots=True)
class PathChange:
    """The node's path to ``dst`` under ``policy`` changed at ``at`` (node clock, s).

    ``reason``: "initial" (first path), "down" (the old path broke), "better" (hysteresis let
    a better path win), "unreachable" (no path left).
    """

    dst: str
    policy: str
    old: tuple[str, ...] | None
    new: tuple[str, ...] | None
    at: float
    reason: str


@attrs.frozen(slots=True)
class LinkChange:
    """The link to neighbour ``peer`` went up or down at ``at``."""

    peer: str
    up: bool
    at: float
    quality: LinkQuality
    reason: str = ""


OverlayEvent = PathChange | LinkChange


@attrs.define(slots=True)
class NodeStats:
    """Counters of one node. Frame counters are keyed by message type name ("Data", "Lsa", ...);
    ``drops`` by reason (frame reasons as :class:`overlay.messages.DropReason` names, forwarding
    reasons such as "no_route", "next_hop_down", "queue_full", "bad_path")."""

    frames_in: Counter[str] = attrs.Factory(Counter)
    frames_out: Counter[str] = attrs.Factory(Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    control_bytes_out: int = 0  # everything but Data payload frames: Hello, Lsa, DataAck, probes
    drops: Counter[str] = attrs.Factory(Counter)
    sent: int = 0  # messages accepted from the application
    delivered: int = 0  # messages handed to the application
    duplicates: int = 0  # reliable messages received again (re-acked, not delivered)
    forwarded: int = 0  # Data frames relayed for others
    retransmitted: int = 0  # reliable messages sent again by this node as the source
    rerouted: int = 0  # of those, resent at once on a new path after a failure
    acked: int = 0
    expired: int = 0  # reliable messages given up after the retry deadline
    lsas_originated: int = 0
    lsas_flooded: int = 0
    link_ups: int = 0
    link_downs: int = 0
    connects: int = 0
    connect_failures: int = 0
    path_changes: int = 0
    events_dropped: int = 0  # subscriber queues full
