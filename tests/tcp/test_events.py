"""Connection events: frozen typed values with time and conn_id, JSON-ready."""

from __future__ import annotations

import json

import attrs
import pytest

from tcpstack.tcp import events as ev
from tcpstack.tcp.state import CaState, TcpiOption, TcpState

SAMPLES: list[ev.Event] = [
    ev.StateChanged(1.5, 7, TcpState.SYN_SENT, TcpState.ESTABLISHED),
    ev.SegmentRetransmitted(2.0, 7, ev.RetransmitKind.FAST, 1000, 2460),
    ev.RtoFired(3.0, 7, 2, 0.8),
    ev.RecoveryEntered(4.0, 7, 14600, 10220, "dupacks"),
    ev.RecoveryExited(5.0, 7, 10220, 10220),
    ev.LossDetected(5.5, 7, 3, True),
    ev.LossProbeSent(5.6, 7, 9000, 10000, True),
    ev.UndoneReduction(5.7, 7, 14600, 20000, "dsack"),
    ev.ZeroWindowSeen(6.0, 7),
    ev.ZeroWindowCleared(6.5, 7),
    ev.ResetReceived(7.0, 7, "in-window"),
    ev.ResetSent(7.5, 7, "close-with-unread-data"),
    ev.KeepaliveTimeout(8.0, 7, 9),
    ev.UserTimeout(9.0, 7, 30.0),
    ev.ChallengeAckSent(9.5, 7, "syn"),
    ev.IcmpReceived(10.0, 7, 3, 4, 1400),
]


def test_every_event_type_has_a_sample() -> None:
    assert {type(e) for e in SAMPLES} == set(ev.EVENT_TYPES.values())
    assert len(ev.EVENT_TYPES) == len(SAMPLES)  # event_type names are unique


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_events_are_frozen_values_with_time_and_conn_id(event: ev.Event) -> None:
    assert isinstance(event, ev.Event)
    names = [f.name for f in attrs.fields(type(event))]
    assert names[:2] == ["time", "conn_id"]
    assert event.conn_id == 7 and event.time > 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.time = 0.0  # type: ignore[misc]
    assert event == attrs.evolve(event)
    assert hash(event) == hash(attrs.evolve(event))
    assert event != attrs.evolve(event, conn_id=8)
    assert not hasattr(event, "__dict__")  # slotted: events are made on the hot path


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_to_dict_is_json(event: ev.Event) -> None:
    d = json.loads(json.dumps(event.to_dict()))
    assert d["event"] == event.event_type
    assert ev.EVENT_TYPES[d["event"]] is type(event)
    assert d["time"] == event.time and d["conn_id"] == event.conn_id
    assert set(d) == {"event"} | {f.name for f in attrs.fields(type(event))}


def test_field_names_and_values() -> None:
    s = ev.StateChanged(time=0.25, conn_id=1, old=TcpState.LISTEN, new=TcpState.SYN_RECEIVED)
    assert (s.old, s.new) == (TcpState.LISTEN, TcpState.SYN_RECEIVED)
    assert s.to_dict()["new"] == "SYN_RECEIVED"

    r = ev.SegmentRetransmitted(time=1.0, conn_id=1, kind=ev.RetransmitKind.RTO, start=5, end=9)
    assert (r.kind, r.start, r.end) == (ev.RetransmitKind.RTO, 5, 9)
    assert r.to_dict()["kind"] == "rto"
    assert ev.RetransmitKind("sack-recovery") is ev.RetransmitKind.SACK_RECOVERY
    assert ev.RetransmitKind("probe") is ev.RetransmitKind.PROBE

    e = ev.RecoveryEntered(time=1.0, conn_id=1, cwnd=100, ssthresh=70, reason="ecn")
    assert (e.cwnd, e.ssthresh, e.reason) == (100, 70, "ecn")
    assert ev.RtoFired(time=1.0, conn_id=1, backoff=3, rto=1.6).backoff == 3
    assert ev.LossDetected(time=1.0, conn_id=1, segments=1, burst=False).segments == 1
    assert ev.KeepaliveTimeout(time=1.0, conn_id=1, probes=9).probes == 9
    assert ev.UserTimeout(time=1.0, conn_id=1, timeout=5.0).timeout == 5.0
    icmp = ev.IcmpReceived(time=1.0, conn_id=1, type=11, code=0)
    assert icmp.next_hop_mtu is None and (icmp.type, icmp.code) == (11, 0)


def test_missing_fields_are_errors() -> None:
    with pytest.raises(TypeError):
        ev.StateChanged(1.0, 1, TcpState.CLOSED)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ev.ZeroWindowSeen(1.0)  # type: ignore[call-arg]


def test_state_linux_codes_and_synchronized() -> None:
    # include/net/tcp_states.h
    codes = {
        TcpState.ESTABLISHED: 1, TcpState.SYN_SENT: 2, TcpState.SYN_RECEIVED: 3,
        TcpState.FIN_WAIT_1: 4, TcpState.FIN_WAIT_2: 5, TcpState.TIME_WAIT: 6,
        TcpState.CLOSED: 7, TcpState.CLOSE_WAIT: 8, TcpState.LAST_ACK: 9,
        TcpState.LISTEN: 10, TcpState.CLOSING: 11,
    }
    assert len(TcpState) == 11
    for state, code in codes.items():
        assert state.linux_code == code
        assert TcpState.from_linux_code(code) is state
    with pytest.raises(ValueError, match="Linux code 12"):
        TcpState.from_linux_code(12)
    unsynchronized = {TcpState.CLOSED, TcpState.LISTEN, TcpState.SYN_SENT, TcpState.SYN_RECEIVED}
    for state in TcpState:
        assert state.synchronized is (state not in unsynchronized)
    assert str(TcpState.FIN_WAIT_1) == "FIN-WAIT-1"


def test_ca_state_and_tcpi_option_values() -> None:
    assert [int(s) for s in CaState] == [0, 1, 2, 3, 4]
    assert CaState.LOSS.name == "LOSS"
    assert [int(o) for o in TcpiOption] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert TcpiOption(7) == TcpiOption.TIMESTAMPS | TcpiOption.SACK | TcpiOption.WSCALE
