"""Congestion control: the interface the engine drives, the shared RFC 5681 rules, a registry.

All quantities are bytes (``cwnd``, ``ssthresh``, acked bytes); the engine converts to segments
for ``TCPInfo``. Algorithms are pure: no clock reads, ``now`` (seconds) is an argument.

What the engine owns and the algorithm does not: loss detection, the NewReno/SACK recovery
bookkeeping (RFC 6582 ``recover``, RFC 6675 pipe), PRR (RFC 6937) which drives ``cwnd`` while in
recovery, Karn's rule, and deciding whether the flow is cwnd-limited. The algorithm owns how
``cwnd`` grows outside recovery and where ``ssthresh`` lands after a congestion signal.

Algorithms register under a name (``newreno``, ``cubic``); :func:`create_congestion_control`
builds one by name, as ``TCP_CONGESTION`` does on Linux.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable
from typing import ClassVar

__all__ = [
    "ABC_LIMIT_SEGMENTS",
    "TCP_INFINITE_SSTHRESH",
    "CongestionControl",
    "available_congestion_controls",
    "create_congestion_control",
    "register_congestion_control",
    "unregister_congestion_control",
]

# Linux's TCP_INFINITE_SSTHRESH: "no congestion seen yet", so the first slow start is unbounded.
TCP_INFINITE_SSTHRESH = 0x7FFFFFFF

# RFC 3465 section 2.2: appropriate byte counting in slow start grows cwnd by at most L*SMSS per
# ACK; L=2 is the RFC's recommended limit (it lets a delayed-ACK receiver still double cwnd per RTT
# while bounding the burst a stretch ACK can release).
ABC_LIMIT_SEGMENTS = 2

# Option values the engine may pass to create_congestion_control (see there).
OptionValue = bool | int | float


def _check_size(name: str, value: int, *, minimum: int) -> None:
    if type(value) is int and value >= minimum:
        return  # the per-packet common case, before the slower checks that explain a failure
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of bytes, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} bytes, got {value}")


def _check_time(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")


class CongestionControl(abc.ABC):
    """One connection's congestion controller.

    The engine calls :meth:`on_packet_sent` for every transmission, :meth:`on_ack` for ACKs that
    advance the cumulative or SACKed edge outside loss recovery, :meth:`on_congestion_event` once
    per window on fast-retransmit loss or ECN-CE, :meth:`on_recovery_exit` when recovery ends,
    :meth:`on_retransmission_timeout` on RTO expiry and :meth:`on_idle_restart` when it restarts
    after an idle period longer than the RTO (only if the profile's cwnd validation is on).

    ``bytes_in_flight`` is always the flight *after* the event: after this ACK was processed,
    after this packet was sent (so it includes ``sent_bytes``).

    Subclasses implement :meth:`on_ack` and :meth:`on_congestion_event`; the other hooks default to
    RFC 5681 and may be extended.
    """

    name: ClassVar[str]

    # Slots: one controller per connection, made on every connect and accept. A subclass
    # that declares no __slots__ of its own simply gets a __dict__ as well.
    __slots__ = (
        "mss", "initial_window", "cwnd", "ssthresh", "abc_limit_segments", "_bytes_acked",
        "_rto_without_progress",
    )

    def __init__(self, mss: int, initial_window: int) -> None:
        _check_size("mss", mss, minimum=1)
        _check_size("initial_window", initial_window, minimum=1)
        self.mss = mss
        self.initial_window = initial_window
        self.cwnd = initial_window
        self.ssthresh = TCP_INFINITE_SSTHRESH
        # RFC 3465 L (segments per ACK in slow start); None: no cap, as Linux tcp_slow_start.
        # The engine sets it from its profile.
        self.abc_limit_segments: int | None = ABC_LIMIT_SEGMENTS
        # RFC 3465 section 2.1 bytes_acked: congestion avoidance adds one SMSS per cwnd acked.
        self._bytes_acked = 0
        # RFC 5681 section 3.1 after eq. (4): a second RTO for the same data, with no ACK of new
        # data in between, keeps ssthresh rather than halving the already collapsed flight again.
        self._rto_without_progress = False

    # -- queries ---------------------------------------------------------------------------

    @property
    def in_slow_start(self) -> bool:
        return self.cwnd < self.ssthresh

    def state_dict(self) -> dict[str, float | int | str]:
        """Algorithm internals for ``TCPInfo`` and diagnostics."""
        return {
            "algorithm": self.name,
            "cwnd": self.cwnd,
            "ssthresh": self.ssthresh,
            "mss": self.mss,
            "initial_window": self.initial_window,
            "bytes_acked": self._bytes_acked,
        }

    # -- events ----------------------------------------------------------------------------

    def set_mss(self, mss: int) -> None:
        """The sender MSS changed (PMTU discovery): keep ``cwnd`` and ``ssthresh`` in segments,
        as Linux does by counting them in packets."""
        _check_size("mss", mss, minimum=1)
        old = self.mss
        if mss == old:
            return
        self.cwnd = max(mss, self.cwnd * mss // old)
        if self.ssthresh != TCP_INFINITE_SSTHRESH:
            self.ssthresh = min(max(2 * mss, self.ssthresh * mss // old), TCP_INFINITE_SSTHRESH)
        self.initial_window = max(mss, self.initial_window * mss // old)
        self._bytes_acked = self._bytes_acked * mss // old
        self.mss = mss

    def on_packet_sent(self, sent_bytes: int, bytes_in_flight: int, now: float) -> None:  # noqa: B027
        """A segment (new or retransmitted) left; most algorithms ignore it."""

    @abc.abstractmethod
    def on_ack(
        self,
        acked_bytes: int,
        bytes_in_flight: int,
        now: float,
        *,
        rtt: float | None,
        cwnd_limited: bool,
    ) -> None:
        """``acked_bytes`` newly acknowledged (cumulatively or by SACK) outside loss recovery.

        ``rtt`` is this ACK's RTT sample (``None`` when Karn's rule forbids one); cwnd may grow
        only when ``cwnd_limited`` (RFC 7661, Linux ``tcp_is_cwnd_limited``)."""

    @abc.abstractmethod
    def on_congestion_event(self, bytes_in_flight: int, now: float) -> None:
        """Fast-retransmit loss or ECN-CE, at most once per window: set ``ssthresh``. ``cwnd`` is
        left to the engine's recovery (PRR), which ends with :meth:`on_recovery_exit`."""

    def on_recovery_exit(self, now: float) -> None:
        """Recovery is over: continue from ``ssthresh`` (RFC 6582 section 3.2 step 3, RFC 6937
        leaves cwnd at ssthresh); never raise cwnd here, PRR may have left it below, but keep
        at least one segment so the connection can always make progress."""
        _check_time("now", now)
        self.cwnd = max(min(self.cwnd, self.ssthresh), self.mss)
        self._bytes_acked = 0
        self._rto_without_progress = False

    def on_retransmission_timeout(self, bytes_in_flight: int, now: float) -> None:
        """RFC 5681 section 3.1 eq. (4) and the loss window: ssthresh = max(FlightSize/2, 2*SMSS),
        cwnd = 1 SMSS."""
        _check_size("bytes_in_flight", bytes_in_flight, minimum=0)
        _check_time("now", now)
        if not self._rto_without_progress:
            self.ssthresh = self._ssthresh_after_timeout(bytes_in_flight)
        self._rto_without_progress = True
        self.cwnd = self.mss  # RFC 5681: loss window LW = 1 full-sized segment
        self._bytes_acked = 0

    def on_idle_restart(self, idle: float, rto: float, now: float) -> None:
        """RFC 5681 section 4.1: after an idle period longer than the RTO, restart from
        RW = min(IW, cwnd). Like Linux ``tcp_cwnd_restart`` and RFC 2861, first remember
        3/4 of the old cwnd in ssthresh so slow start climbs back to it quickly."""
        _check_time("idle", idle)
        _check_time("rto", rto)
        _check_time("now", now)
        if idle <= rto:
            return
        restart_window = min(self.initial_window, self.cwnd)
        if restart_window < self.cwnd:
            self.ssthresh = max(self.ssthresh, self.cwnd * 3 // 4)
            self.cwnd = restart_window
        self._bytes_acked = 0

    def undo(self, prior_cwnd: int, prior_ssthresh: int) -> None:
        """A reduction proved spurious (D-SACK, Eifel): undo it as Linux's
        ``tcp_undo_cwnd_reduction`` does, never shrinking what grew since."""
        _check_size("prior_cwnd", prior_cwnd, minimum=1)
        _check_size("prior_ssthresh", prior_ssthresh, minimum=1)
        self.cwnd = max(self.cwnd, prior_cwnd)
        self.ssthresh = max(self.ssthresh, prior_ssthresh)
        self._rto_without_progress = False

    # -- shared RFC 5681 / RFC 3465 building blocks ------------------------------------------

    def _ssthresh_after_timeout(self, bytes_in_flight: int) -> int:
        return max(bytes_in_flight // 2, 2 * self.mss)

    def _note_progress(self, acked_bytes: int, bytes_in_flight: int, now: float) -> None:
        """Validate an ACK's arguments and note that new data was acknowledged."""
        _check_size("acked_bytes", acked_bytes, minimum=0)
        _check_size("bytes_in_flight", bytes_in_flight, minimum=0)
        _check_time("now", now)
        if acked_bytes:
            self._rto_without_progress = False

    def _slow_start(self, acked_bytes: int) -> int:
        """RFC 5681 section 3.1 slow start with RFC 3465 byte counting (at most L*SMSS per ACK,
        ``abc_limit_segments``; uncapped when None, as Linux), stopping at ssthresh. Returns the
        counted bytes left over once cwnd reached ssthresh, which the caller feeds to
        congestion avoidance (as Linux's ``tcp_slow_start`` does)."""
        limit = self.abc_limit_segments
        counted = acked_bytes if limit is None else min(acked_bytes, limit * self.mss)
        room = self.ssthresh - self.cwnd
        if counted <= room:
            self.cwnd += counted
            return 0
        self.cwnd += max(room, 0)
        return counted - max(room, 0)

    def _reno_congestion_avoidance(self, acked_bytes: int) -> None:
        """RFC 3465 section 2.1 / RFC 5681 section 3.1: one SMSS per cwnd of acknowledged bytes,
        i.e. about one segment per RTT whatever the ACK pattern."""
        self._bytes_acked += acked_bytes
        if self._bytes_acked >= self.cwnd:
            self._bytes_acked -= self.cwnd
            self.cwnd += self.mss


Factory = Callable[..., CongestionControl]

_REGISTRY: dict[str, tuple[Factory, frozenset[str]]] = {}
_BUILTINS_LOADED = False
# Types a factory has returned that are CongestionControl subclasses: the ABC's isinstance check
# runs once per type, not on every connect and accept (a handful of types, so bounded).
_CHECKED_TYPES: set[type] = set()


def _load_builtins() -> None:
    # The built-in algorithms register themselves on import; they import this module, so they
    # are loaded lazily rather than at the top (which would be circular).
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from tcpstack.tcp import cubic, newreno  # noqa: F401


def register_congestion_control(
    name: str, factory: Factory, *, options: Iterable[str] = ()
) -> None:
    """Make ``factory(mss, initial_window, **opts)`` available as ``name``.

    ``options`` names the keyword options the factory accepts (``cubic`` takes ``hystart``).
    A name can be registered once; :func:`unregister_congestion_control` frees it.
    """
    _load_builtins()
    if not isinstance(name, str) or not name or not name.isprintable() or " " in name:
        raise ValueError(f"congestion control name must be a non-empty word, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for {name!r} must be callable, got {factory!r}")
    if name in _REGISTRY:
        raise ValueError(f"congestion control {name!r} is already registered")
    _REGISTRY[name] = (factory, frozenset(options))


def _register_builtin(name: str, factory: Factory, *, options: Iterable[str] = ()) -> None:
    _REGISTRY.setdefault(name, (factory, frozenset(options)))


def unregister_congestion_control(name: str) -> None:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(_unknown(name))
    del _REGISTRY[name]


def available_congestion_controls() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def _unknown(name: str) -> str:
    return f"unknown congestion control {name!r}; available: " + ", ".join(sorted(_REGISTRY))


def create_congestion_control(
    name: str, mss: int, initial_window: int, **options: OptionValue
) -> CongestionControl:
    """A new controller of algorithm ``name``; ``ValueError`` naming the available ones if it is
    unknown.

    ``options`` are per-algorithm tunables (``hystart=False`` for ``cubic``). An option that some
    registered algorithm accepts is ignored by the others, as Linux ignores ``tcp_cubic``
    module parameters when another algorithm runs; an option no algorithm knows is an error.
    """
    _load_builtins()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(_unknown(name))
    factory, accepted = entry
    if options.keys() <= accepted:
        kwargs = options  # the common case (every connect): nothing to check or filter
    else:
        known = frozenset().union(*(opts for _, opts in _REGISTRY.values()))
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown congestion control option(s) {', '.join(unknown)}; known: "
                + (", ".join(sorted(known)) or "none")
            )
        kwargs = {key: value for key, value in options.items() if key in accepted}
    controller = factory(mss, initial_window, **kwargs)
    kind = type(controller)
    if kind not in _CHECKED_TYPES:
        if not isinstance(controller, CongestionControl):
            raise TypeError(
                f"factory for {name!r} returned {controller!r}, not a CongestionControl"
            )
        _CHECKED_TYPES.add(kind)
    return controller
