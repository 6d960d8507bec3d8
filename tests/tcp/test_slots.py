"""Memory layout of the engine (issue 4): slotted connections, options resolved once per value."""

from __future__ import annotations

import attrs
import pytest

from tcpstack.tcp import Connection, config
from tcpstack.tcp.config import ConnectionOptions, resolve_options
from tcpstack.tcp.core import ConnectionCore


def _conn(options: ConnectionOptions | None = None) -> Connection:
    return Connection(("10.0.0.1", 40000), ("10.0.0.2", 80), iss=1000,
                      options=options or ConnectionOptions())


def test_connection_has_no_instance_dict() -> None:
    conn = _conn()
    assert not hasattr(conn, "__dict__")
    with pytest.raises(AttributeError):
        conn.not_a_field = 1  # type: ignore[attr-defined]


def test_every_slot_is_set_by_init_and_every_mixin_is_slotted() -> None:
    conn = _conn()
    slots = [s for s in ConnectionCore.__slots__ if s != "__weakref__"]
    assert len(slots) == len(set(slots))
    unset = [name for name in slots if not hasattr(conn, name)]
    assert unset == []
    for cls in type(conn).__mro__[:-1]:
        assert "__slots__" in cls.__dict__, f"{cls.__name__} has no __slots__"


def test_resolve_options_is_cached_per_value() -> None:
    a = ConnectionOptions(mss=1200)
    b = ConnectionOptions(mss=1200)
    first = resolve_options(a)
    assert resolve_options(b) is first
    assert first == a.resolve()
    assert resolve_options(ConnectionOptions(mss=1000)).mss == 1000


def test_resolve_options_follows_a_replaced_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    options = ConnectionOptions(profile="linux")
    before = resolve_options(options)
    changed = attrs.evolve(config.PROFILES["linux"], min_rto=0.3)
    monkeypatch.setitem(config.PROFILES, "linux", changed)
    after = resolve_options(options)
    assert after.profile_obj is changed
    assert after.min_rto == 0.3 != before.min_rto


def test_resolve_options_does_not_cache_errors() -> None:
    bad = ConnectionOptions(mtu=10)
    for _ in range(2):
        with pytest.raises(ValueError, match="mtu"):
            resolve_options(bad)


@pytest.mark.parametrize("congestion", ["cubic", "newreno"])
def test_per_connection_parts_have_no_instance_dict(congestion: str) -> None:
    # Made on every connect and accept and kept by every idle or TIME-WAIT connection: a dict
    # each would cost construction time and memory (issue 4's handshake rate and 8 KiB bars).
    conn = _conn(ConnectionOptions(congestion=congestion))
    parts = [conn.rtt, conn.cc, conn.rcv, conn.rcv.ooo, conn.sb, conn.rate, conn.timers,
             conn.sndbuf]
    hystart = getattr(conn.cc, "hystart", None)
    if congestion == "cubic":
        assert hystart is not None
        parts.append(hystart)
    for part in parts:
        assert not hasattr(part, "__dict__"), type(part).__name__
