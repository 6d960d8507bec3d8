"""What the per-connection and per-ACK cost work relies on: records released once acknowledged,
the fast constructors of the per-ACK value types, the options cache's identity fast path, and a
quiet connection that holds no output queue."""

from __future__ import annotations

import copy
import gc
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from tcpstack.tcp import config, recovery
from tcpstack.tcp.config import ConnectionOptions, resolve_options
from tcpstack.tcp.connection import Connection
from tcpstack.tcp.events import StateChanged
from tcpstack.tcp.fastinit import fast_constructor
from tcpstack.tcp.rate import RateSample, RateSampler
from tcpstack.tcp.scoreboard import AckResult, Scoreboard
from tcpstack.tcp.state import TcpState

MSS = 1000


def established_pair() -> tuple[Connection, Connection, float]:
    a = Connection(("198.18.0.1", 1000), ("198.18.0.2", 80), iss=1000)
    a.open_active(0.0)
    b = Connection.from_syn(a.poll_transmit(0.0)[0], iss=5000, now=0.001)
    a.on_segment(b.poll_transmit(0.001)[0], 0.002)
    for seg in a.poll_transmit(0.002):
        b.on_segment(seg, 0.003)
    b.poll_transmit(0.003)
    assert a.state is b.state is TcpState.ESTABLISHED
    return a, b, 0.003


def test_fully_acknowledged_records_are_released_at_once() -> None:
    # A connection whose data is all acknowledged (idle, or in TIME-WAIT for a minute) must not
    # keep its sent records alive for the garbage collector to scan over and over.
    sb, rate = Scoreboard(), RateSampler()
    refs = [weakref.ref(sb.on_sent(i * MSS, (i + 1) * MSS, 0.0, retransmit=False, rate=rate))
            for i in range(3)]
    res = sb.on_ack(2 * MSS, [], 0.1, MSS, rate=rate)
    assert [r.start for r in res.newly_acked] == [0, MSS]
    del res
    gc.collect()
    assert [r() is None for r in refs] == [False, False, False]  # head index: kept for now
    res = sb.on_ack(3 * MSS, [], 0.2, MSS, rate=rate)
    assert res.acked_bytes == MSS and not sb and len(sb) == 0 and sb.first() is None
    del res
    gc.collect()
    assert all(r() is None for r in refs)
    # The emptied scoreboard goes on as before.
    assert sb.snd_una == 3 * MSS and sb.bytes_in_flight == 0
    sb.on_sent(3 * MSS, 4 * MSS, 0.3, retransmit=False, rate=rate)
    assert sb.first() is not None and sb.first().start == 3 * MSS  # type: ignore[union-attr]
    assert sb.on_ack(4 * MSS, [], 0.4, MSS, rate=rate).acked_bytes == MSS


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (StateChanged, (1.5, 7, TcpState.SYN_SENT, TcpState.ESTABLISHED)),
        (RateSample, (10, 0.5, 20.0, 3, 0.4, 0.5, 2, 1, True, False, None)),
        (AckResult, (1, 2, 3, [], [], 0.25, True, (5, 6), 9, 0)),
    ],
)
def test_fast_constructor_builds_the_public_frozen_type(cls: type, values: tuple[Any, ...]) -> None:
    new: Callable[..., Any] = fast_constructor(cls)
    fast: Any = new(*values)
    slow = cls(*values)
    assert attrs.astuple(fast, recurse=False) == values
    assert type(fast) is cls
    assert fast == slow
    if cls is not AckResult:  # AckResult holds lists: unhashable either way
        assert hash(fast) == hash(slow)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.__setattr__(attrs.fields(cls)[0].name, values[0])
    with pytest.raises(TypeError):
        new(*values[:-1])  # every field is required, in order


def test_fast_constructor_refuses_classes_that_need_their_init() -> None:
    @attrs.frozen
    class Checked:
        x: int = attrs.field(validator=attrs.validators.instance_of(int))

    @attrs.frozen
    class Converted:
        x: int = attrs.field(converter=int)

    for cls in (Checked, Converted):
        with pytest.raises(TypeError, match="x"):
            fast_constructor(cls)


def test_resolve_options_identity_fast_path_follows_profile_replacement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = ConnectionOptions(mss=1200)
    first = resolve_options(options)
    assert resolve_options(options) is first
    # An equal but distinct options object gets the same (cached) resolution.
    assert resolve_options(ConnectionOptions(mss=1200)) is first
    # A profile replaced at run time (conformance sysctls do this) is seen at once, even by the
    # object resolved last.
    replaced = attrs.evolve(config.PROFILES["linux"], delayed_ack_timeout=0.123)
    monkeypatch.setitem(config.PROFILES, "linux", replaced)
    again = resolve_options(options)
    assert again is not first and again.profile_obj is replaced


def test_quiet_connection_holds_no_output_queue() -> None:
    a, b, now = established_pair()
    for conn in (a, b):
        assert conn.outq is None
        assert conn.poll_transmit(now) == []
        assert conn.outq is None
    # Input that must be answered queues its reply until the next poll (a duplicate ACK for an
    # out-of-window segment here), then the queue is gone again.
    a.send(b"x" * 10)
    seg = a.poll_transmit(now)[0]
    b.on_segment(seg, now + 0.001)
    b.on_segment(seg, now + 0.002)  # the same data again: an immediate duplicate ACK
    out = b.poll_transmit(now + 0.002)
    assert out and all(s.ack == (seg.seq + 10) & 0xFFFFFFFF for s in out)
    assert b.outq is None


def _snapshot(obj: Any, depth: int = 0) -> Any:
    """Every value reachable from one of the engine's objects, as plain data."""
    if depth > 10:
        return repr(obj)
    if isinstance(obj, (list, tuple, deque)):
        return [_snapshot(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {k: _snapshot(v, depth + 1) for k, v in obj.items()}
    cls = type(obj)
    if cls.__module__.startswith("tcpstack."):
        if attrs.has(cls):
            names = [f.name for f in attrs.fields(cls)]
        else:
            names = [n for c in cls.__mro__ for n in getattr(c, "__slots__", ())]
            names += list(getattr(obj, "__dict__", {}))
        return {
            n: _snapshot(getattr(obj, n), depth + 1)
            for n in names if n != "__weakref__" and hasattr(obj, n)
        }
    return obj


@pytest.mark.parametrize(
    "options",
    [
        ConnectionOptions(),
        ConnectionOptions(sack=False),
        ConnectionOptions(timestamps=False, ecn=True),
        ConnectionOptions(profile="freebsd"),
    ],
    ids=["linux", "no-sack", "no-ts-ecn", "freebsd"],
)
def test_ack_of_syn_or_fin_fast_path_reaches_the_full_paths_state(
    options: ConnectionOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every segment of a handshake and a close (one side closing first, the other after a
    # delay) is fed to the receiving engine twice: as is, and to a deep copy with the SYN/FIN
    # ACK fast path off. Both must end in the same state, every counter, timer and sample alike.
    def deliver(conn: Connection, seg: Any, now: float) -> Connection:
        twin = copy.deepcopy(conn)
        conn.on_segment(seg, now)
        monkeypatch.setattr(recovery, "SYN_FIN_ACK_FAST_PATH", False)
        twin.on_segment(seg, now)
        monkeypatch.setattr(recovery, "SYN_FIN_ACK_FAST_PATH", True)
        assert _snapshot(conn) == _snapshot(twin)
        return conn

    fast_taken = 0
    original = Connection._ack_syn_or_fin

    def counting(self: Connection, *args: Any) -> None:
        nonlocal fast_taken
        fast_taken += 1
        original(self, *args)

    monkeypatch.setattr(Connection, "_ack_syn_or_fin", counting)
    a = Connection(("198.18.0.1", 1000), ("198.18.0.2", 80), iss=1000, options=options)
    a.open_active(0.0)
    b = Connection.from_syn(a.poll_transmit(0.0)[0], iss=5000, options=options, now=0.011)
    deliver(a, b.poll_transmit(0.011)[0], 0.021)
    for seg in a.poll_transmit(0.021):
        deliver(b, seg, 0.032)  # the ACK of the SYN-ACK
    assert a.state is b.state is TcpState.ESTABLISHED
    a.close()
    fin = a.poll_transmit(0.05)
    deliver(b, fin[0], 0.06)
    for seg in b.poll_transmit(0.06):
        deliver(a, seg, 0.07)  # b's ACK of the FIN (fast path)
    b.close()
    for seg in b.poll_transmit(0.2):
        deliver(a, seg, 0.21)
    for seg in a.poll_transmit(0.21):
        deliver(b, seg, 0.22)  # the last ACK, of b's FIN
    assert a.state is TcpState.TIME_WAIT and b.state is TcpState.CLOSED
    assert fast_taken == 3  # the ACKs of the SYN-ACK, of a's FIN and of b's FIN
    assert a.rtt.srtt is not None and b.rtt.srtt is not None
