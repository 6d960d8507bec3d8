"""The link-state database: every node's latest LSA, flooding rules, ageing, and the graph.

Each node originates one :class:`~overlay.messages.Lsa` listing a :class:`LinkAdvert` per
neighbour (latency = the link's srtt in seconds, loss as a fraction, throughput in bytes/s, up).
The rules follow OSPF (RFC 2328) where the overlay has the same problem, simplified where the
overlay's messages are simpler:

* Sequence numbers (RFC 2328 section 13.1): a received LSA replaces the stored one only if its
  ``seq`` is larger. Equal is a duplicate (not re-flooded, which is what ends a flood); smaller
  is stale and ignored, and the caller may answer the sender with ours (:meth:`get`) so it
  catches up. The wire field is 64 bits and starts near 0 (or at ``seq_start``): it cannot wrap
  in any node's lifetime, so there is no wrap-around comparison.
* Our own LSA coming back newer than ours (section 13.4): we restarted and the network still
  holds LSAs from our previous life. We jump our sequence number past it and re-originate at
  once, so the stale copy is displaced instead of blocking us until it ages out.
* Ageing: LSAs carry no age field on the wire, so age is local (time since we installed the
  copy). An originator re-originates every ``lsa_refresh`` seconds even if nothing changed
  (its first refresh ``refresh_advance`` early: nodes started together would otherwise refresh
  together forever, one network-wide burst of every origin's LSA per ``lsa_refresh``, where
  IS-IS jitters its LSP refresh for the same reason);
  copies older than ``lsa_max_age`` are purged. A purged origin leaves a tombstone for another
  ``lsa_max_age`` so a neighbour still holding the old copy cannot resurrect it: only a
  strictly newer sequence number is accepted.
* Origination is rate-limited: at most one LSA per ``lsa_interval`` for good news (a link came
  up, or a metric moved significantly from what we last advertised, see below);
  bad news (a link we advertised up is now down or gone) is originated at once, because failover
  elsewhere waits on it. That is still bounded: a link can only go down again after an "up" was
  advertised, and "up" is rate-limited, so a flapping link costs at most two LSAs per
  ``lsa_interval``.
* Significant change: a metric of a link advertised up moved from ``old`` (last advertised) to
  ``new`` when ``|new - old| > max(change_threshold * |old|, floor)``, with absolute floors
  ``LATENCY_FLOOR`` = 2 ms, ``LOSS_FLOOR`` = 0.005 and ``THROUGHPUT_FLOOR`` = 10 kB/s. The
  relative part keeps the test scale-free; the floor is there because below it a relative move
  is measurement noise that routing cannot use (a 5 ms link's RTT moving by 0.6 ms, a loss
  estimate moving between 0.1 % and 0.2 %) and re-flooding it network-wide would cost every
  node control traffic for nothing. Everything else waits for the ``lsa_refresh``.
* LSAs carry finite numbers only (:func:`validate_lsa`); a link that cannot be measured yet is
  advertised down (:meth:`overlay.metrics.LinkEstimator.advert`).
* Bounded: at most ``max_lsas`` origins (an LSA from a new origin beyond that is rejected and
  counted) and at most ``max_links`` adverts per LSA.

The graph (:meth:`LinkStateDatabase.graph`) is a ``networkx.DiGraph`` with one node per origin
and an edge ``u -> v`` only when the link is usable: ``u`` advertises ``v`` up **and** ``v``
advertises ``u`` up (the OSPF two-way check, section 16.1 step 2(b)). A half-open link, where
one end still believes in it, is not routable. The edge's attributes come from ``u``'s advert of
``v`` (``u`` measures its own sending direction): ``latency``, ``loss``, ``throughput``, ``up``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence

import attrs
import networkx as nx

from overlay.config import RoutingSettings
from overlay.messages import LinkAdvert, Lsa

__all__ = [
    "DEFAULT_MAX_LINKS",
    "DEFAULT_MAX_LSAS",
    "LinkStateDatabase",
    "LsdbStats",
    "Received",
    "Rejection",
    "bad_news",
    "significant_change",
    "validate_lsa",
]

DEFAULT_MAX_LSAS = 4096
DEFAULT_MAX_LINKS = 256
MAX_NODE_ID = 64  # characters; node ids are short strings
MAX_SEQ = (1 << 64) - 1  # the wire field is a u64

# A metric moved significantly only if by more than max(change_threshold * old, floor): below
# these absolute floors a move is noise (see "Significant change" in the module docstring).
LATENCY_FLOOR = 0.002  # s
LOSS_FLOOR = 0.005  # fraction
THROUGHPUT_FLOOR = 10_000.0  # bytes/s


class Received(enum.Enum):
    """What :meth:`LinkStateDatabase.receive_lsa` did with an LSA."""

    INSTALLED = "installed"  # newer: stored; flood it to every other neighbour
    DUPLICATE = "duplicate"  # same seq as ours: the flood ends here
    STALE = "stale"  # older than ours: ignored; the sender may be answered with ours
    SELF_NEWER = "self_newer"  # our own origin, newer than we hold: re-originate now
    REJECTED = "rejected"  # invalid, over the bounds, or a purged copy


class Rejection(enum.Enum):
    INVALID = "invalid"
    TOO_MANY_LINKS = "too_many_links"
    DATABASE_FULL = "database_full"
    PURGED = "purged"


@attrs.define
class LsdbStats:
    originated: int = 0
    installed: int = 0
    duplicates: int = 0
    stale: int = 0
    self_newer: int = 0
    purged: int = 0
    rejected: dict[Rejection, int] = attrs.Factory(dict)

    def reject(self, why: Rejection) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1


@attrs.frozen
class _Entry:
    lsa: Lsa
    installed_at: float


def _finite_nonneg(x: object) -> bool:
    if type(x) is float:  # the common case, decoded from the wire; NaN fails the comparison
        return 0.0 <= x < math.inf
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def validate_lsa(lsa: Lsa, max_links: int = DEFAULT_MAX_LINKS) -> Rejection | None:
    """Why ``lsa`` must not enter a database, or None if it may.

    The MAC only proves a neighbour sent it, not that its contents are sane, and one bad LSA
    would poison every node's graph, so every field is checked.
    """
    if not isinstance(lsa.origin, str) or not 0 < len(lsa.origin) <= MAX_NODE_ID:
        return Rejection.INVALID
    if not isinstance(lsa.seq, int) or isinstance(lsa.seq, bool) or not 0 <= lsa.seq <= MAX_SEQ:
        return Rejection.INVALID
    if len(lsa.links) > max_links:
        return Rejection.TOO_MANY_LINKS
    seen: set[str] = set()
    for adv in lsa.links:
        nbr = adv.neighbour
        if not isinstance(nbr, str) or not 0 < len(nbr) <= MAX_NODE_ID or nbr == lsa.origin:
            return Rejection.INVALID
        if nbr in seen:
            return Rejection.INVALID
        seen.add(nbr)
        if not (_finite_nonneg(adv.latency) and _finite_nonneg(adv.throughput)):
            return Rejection.INVALID
        if not (_finite_nonneg(adv.loss) and adv.loss <= 1.0):
            return Rejection.INVALID
        if not isinstance(adv.up, bool):
            return Rejection.INVALID
    return None


def _moved(old: float, new: float, threshold: float, floor: float) -> bool:
    """``new`` differs from ``old`` by more than ``threshold`` of it and by more than ``floor``."""
    return abs(new - old) > max(threshold * abs(old), floor)


class LinkStateDatabase:
    """One node's view of every origin's latest LSA. Pure: every method takes ``now``."""

    def __init__(
        self,
        self_id: str,
        settings: RoutingSettings,
        *,
        max_lsas: int = DEFAULT_MAX_LSAS,
        max_links: int = DEFAULT_MAX_LINKS,
        seq_start: int = 0,
        refresh_advance: float = 0.0,
    ) -> None:
        if not isinstance(self_id, str) or not 0 < len(self_id) <= MAX_NODE_ID:
            raise ValueError(f"self_id must be a non-empty string of at most {MAX_NODE_ID} chars")
        if max_lsas < 1 or max_links < 1:
            raise ValueError("max_lsas and max_links must be at least 1")
        if not 0 <= seq_start < MAX_SEQ:
            raise ValueError("seq_start must be in [0, 2**64 - 1)")
        if not 0 <= refresh_advance < settings.lsa_refresh:
            raise ValueError("refresh_advance must be in [0, lsa_refresh)")
        self.self_id = self_id
        self.settings = settings
        self.max_lsas = max_lsas
        self.max_links = max_links
        self.version = 0
        self.stats = LsdbStats()
        self._seq = seq_start  # the last sequence number we used (or must exceed)
        self._entries: dict[str, _Entry] = {}
        # origin -> (purged seq, purged at). At most max_lsas: everything purged in the last
        # lsa_max_age was installed before and still present lsa_max_age ago, all at once.
        self._tombstones: dict[str, tuple[int, float]] = {}
        self._last_originated: float | None = None
        self._refresh_advance = refresh_advance  # until the first refresh (module docstring)
        self._must_reoriginate = False
        self._up: dict[str, dict[str, LinkAdvert]] = {}  # origin -> neighbour -> advert, up only
        self._graph: nx.DiGraph | None = None

    # -- origination -------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def own(self) -> Lsa | None:
        entry = self._entries.get(self.self_id)
        return entry.lsa if entry is not None else None

    def originate(self, links: Sequence[LinkAdvert], now: float) -> Lsa:
        """Build and install our next LSA unconditionally (seq + 1). Flood the result.

        :meth:`maybe_originate` is the rate-limited entry point; this one is for the cases the
        caller knows must go out (first LSA, after :attr:`Received.SELF_NEWER`).
        """
        links = tuple(links)
        why = validate_lsa(Lsa(origin=self.self_id, seq=self._seq + 1, links=links), self.max_links)
        if why is not None:
            raise ValueError(f"cannot originate an LSA with these links: {why.value}")
        self._seq += 1
        lsa = Lsa(origin=self.self_id, seq=self._seq, links=links)
        self._entries[self.self_id] = _Entry(lsa, now)
        self._last_originated = now
        self._must_reoriginate = False
        self.stats.originated += 1
        self._changed((self.self_id,))
        return lsa

    def origination_due(self, links: Sequence[LinkAdvert], now: float) -> float:
        """The earliest time at which :meth:`maybe_originate` with these links would originate.

        ``now`` if it would originate right away; otherwise the end of the rate limit (a change
        is pending) or the refresh time.
        """
        own = self.own
        if own is None or self._must_reoriginate or self._last_originated is None:
            return now
        last = self._last_originated
        if bad_news(own.links, links):
            return now
        if _good_news(own.links, links, self.settings.change_threshold):
            return max(now, last + self.settings.lsa_interval)
        return max(now, last + self.settings.lsa_refresh - self._refresh_advance)

    def maybe_originate(self, links: Sequence[LinkAdvert], now: float) -> Lsa | None:
        """Originate if the rules in the module docstring say so; None otherwise."""
        if self.origination_due(links, now) > now:
            return None
        own = self.own
        if (own is not None and not self._must_reoriginate
                and not bad_news(own.links, links)
                and not _good_news(own.links, links, self.settings.change_threshold)):
            self._refresh_advance = 0.0  # a refresh: from now on every lsa_refresh
        return self.originate(links, now)

    # -- reception ---------------------------------------------------------------------------

    def receive(self, lsa: Lsa, now: float) -> bool:
        """True if ``lsa`` was newer and installed, i.e. the caller floods it on."""
        return self.receive_lsa(lsa, now) is Received.INSTALLED

    def receive_lsa(self, lsa: Lsa, now: float) -> Received:
        """Apply the flooding rules to a received LSA; see :class:`Received`."""
        current = self._entries.get(lsa.origin)
        if current is not None and lsa is current.lsa:
            # The very object we validated and installed (flooded copies decode to one object,
            # see overlay.messages): the common duplicate, without validating it again.
            self.stats.duplicates += 1
            return Received.DUPLICATE
        why = validate_lsa(lsa, self.max_links)
        if why is not None:
            self.stats.reject(why)
            return Received.REJECTED
        if lsa.origin == self.self_id:
            return self._receive_own(lsa)
        if current is not None:
            if lsa.seq == current.lsa.seq:
                self.stats.duplicates += 1
                return Received.DUPLICATE
            if lsa.seq < current.lsa.seq:
                self.stats.stale += 1
                return Received.STALE
        else:
            tomb = self._tombstones.get(lsa.origin)
            if tomb is not None:
                if lsa.seq <= tomb[0]:
                    self.stats.reject(Rejection.PURGED)
                    return Received.REJECTED
                del self._tombstones[lsa.origin]
            if len(self._entries) >= self.max_lsas:
                self.stats.reject(Rejection.DATABASE_FULL)
                return Received.REJECTED
        self._entries[lsa.origin] = _Entry(lsa, now)
        self.stats.installed += 1
        self._changed((lsa.origin,))
        return Received.INSTALLED

    def _receive_own(self, lsa: Lsa) -> Received:
        own = self.own
        if own is not None and lsa.seq == own.seq and lsa.links == own.links:
            self.stats.duplicates += 1
            return Received.DUPLICATE
        if own is not None and lsa.seq < own.seq:
            self.stats.stale += 1
            return Received.STALE
        # A copy from a previous life of ours (newer, or same seq with other contents). Jump
        # past it; the caller re-originates, and ours then wins everywhere.
        self._seq = max(self._seq, lsa.seq)
        self._must_reoriginate = True
        self.stats.self_newer += 1
        return Received.SELF_NEWER

    # -- ageing ------------------------------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Purge LSAs older than ``lsa_max_age`` (never our own); return their origins."""
        max_age = self.settings.lsa_max_age
        for origin, (_, at) in list(self._tombstones.items()):
            if now - at > max_age:
                del self._tombstones[origin]
        purged = [
            origin
            for origin, entry in self._entries.items()
            if origin != self.self_id and now - entry.installed_at > max_age
        ]
        for origin in purged:
            self._tombstones[origin] = (self._entries.pop(origin).lsa.seq, now)
        if purged:
            self.stats.purged += len(purged)
            self._changed(purged)
        return purged

    def age(self, origin: str, now: float) -> float | None:
        entry = self._entries.get(origin)
        return None if entry is None else now - entry.installed_at

    # -- queries -----------------------------------------------------------------------------

    def get(self, origin: str) -> Lsa | None:
        entry = self._entries.get(origin)
        return entry.lsa if entry is not None else None

    def lsas(self) -> list[Lsa]:
        """Every stored LSA (ours included), e.g. to synchronise a neighbour that just came up."""
        return [entry.lsa for entry in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, origin: object) -> bool:
        return origin in self._entries

    def graph(self) -> nx.DiGraph:
        """The routable graph (see the module docstring).

        Built once, then kept up to date in place: a changed LSA re-derives only the edges of
        its origin (O(degree), not O(edges)), which is what keeps recomputation after an LSA
        cheap on a 1,000-node overlay. ``graph.graph["version"]`` is the database
        :attr:`version` (the router keys its caches on it). The same object is returned every
        time, so treat it as read-only and ``copy()`` it for a snapshot.
        """
        g = self._graph
        if g is None:
            g = self._graph = nx.DiGraph(version=self.version)
            g.add_nodes_from(self._entries)
            g.add_edges_from(
                (origin, nbr, _edge_attrs(adv))
                for origin, adverts in self._up.items()
                for nbr, adv in adverts.items()
                if origin in self._up.get(nbr, ())
            )
        return g

    def _changed(self, origins: Iterable[str]) -> None:
        self.version += 1
        g = self._graph
        for origin in origins:
            entry = self._entries.get(origin)
            old = self._up.pop(origin, {})
            new = {} if entry is None else {adv.neighbour: adv for adv in entry.lsa.links if adv.up}
            if entry is not None:
                self._up[origin] = new
            if g is None:
                continue
            if entry is None:
                if origin in g:
                    g.remove_node(origin)  # and every edge at it
                continue
            if origin not in g:
                g.add_node(origin)
            # Only this origin's two-way edges can change, and only where its adverts did: an
            # LSA re-originated with most links as they were touches few edges (the data dicts
            # of the others are updated in place).
            succ = g.succ[origin]
            for nbr in old.keys() - new.keys():
                if nbr in succ:
                    g.remove_edge(origin, nbr)
                    g.remove_edge(nbr, origin)
            for nbr, adv in new.items():
                back = self._up.get(nbr, {}).get(origin)
                if back is None:
                    continue  # not two-way (yet): no edge either way
                data = succ.get(nbr)
                if data is None:
                    g.add_edge(origin, nbr, **_edge_attrs(adv))
                    g.add_edge(nbr, origin, **_edge_attrs(back))
                elif old.get(nbr) != adv:
                    data.update(_edge_attrs(adv))
        if g is not None:
            g.graph["version"] = self.version


def _edge_attrs(adv: LinkAdvert) -> dict[str, float | bool]:
    return {
        "latency": adv.latency,
        "loss": adv.loss,
        "throughput": adv.throughput,
        "up": True,
    }


def bad_news(old: Sequence[LinkAdvert], new: Sequence[LinkAdvert]) -> bool:
    """A link advertised up in ``old`` is down or missing in ``new`` (originated at once, and
    flooded without pacing)."""
    now_up = {adv.neighbour for adv in new if adv.up}
    return any(adv.up and adv.neighbour not in now_up for adv in old)


def significant_change(old: LinkAdvert | None, new: LinkAdvert, threshold: float) -> bool:
    """Whether ``new`` is worth an LSA before the refresh, ``old`` being what our LSA says about
    the same link (None: not in it): the link appeared, went up or down, or, while up, one of
    its metrics moved significantly (see "Significant change" in the module docstring)."""
    if old is None or old.up != new.up:
        return True
    if not new.up:
        return False  # a down link's numbers route nothing
    return (
        _moved(old.latency, new.latency, threshold, LATENCY_FLOOR)
        or _moved(old.loss, new.loss, threshold, LOSS_FLOOR)
        or _moved(old.throughput, new.throughput, threshold, THROUGHPUT_FLOOR)
    )


def _good_news(old: Sequence[LinkAdvert], new: Sequence[LinkAdvert], threshold: float) -> bool:
    """Anything else worth an early LSA: a link came up or appeared, or a metric moved."""
    before = {adv.neighbour: adv for adv in old}
    if {adv.neighbour for adv in new} != set(before):
        return True
    return any(significant_change(before[adv.neighbour], adv, threshold) for adv in new)
