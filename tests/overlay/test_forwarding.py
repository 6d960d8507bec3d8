"""overlay.forwarding: source-route checks, send window and RTO, dedupe, flow pinning."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from overlay.config import RoutingSettings
from overlay.forwarding import (
    MAX_HOPS,
    Deduplicator,
    FlowTable,
    Pending,
    RouteTable,
    RttEstimator,
    Sender,
    check_route,
    reverse_ack,
)
from overlay.messages import Data, DataAck
from overlay.routing import Router


def data(path: tuple[str, ...], hop: int, **kw: object) -> Data:
    fields: dict[str, object] = dict(
        src=path[0], dst=path[-1], flow=0, msg_id=7, reliable=True, path=path, hop=hop,
        payload=b"x",
    )
    fields.update(kw)
    return Data(**fields)  # type: ignore[arg-type]


# -------------------------------------------------------------------------- check_route
def test_relay_forwards_to_next_hop_and_destination_delivers() -> None:
    d = data(("a", "b", "c"), 1)
    assert check_route(d, "a", "b").action == "forward"
    assert check_route(d, "a", "b").next_hop == "c"
    assert check_route(data(("a", "b", "c"), 2), "b", "c").action == "deliver"


@pytest.mark.parametrize(
    ("msg", "sender", "me"),
    [
        (data(("a", "b", "c"), 1), "x", "b"),  # came from someone not at hop - 1
        (data(("a", "b", "c"), 1), "a", "c"),  # we are not at hop
        (data(("a", "b", "c"), 0), "a", "a"),  # hop 0 is the source itself
        (data(("a", "b", "c"), 3), "c", "c"),  # hop past the end
        (data(("a", "b", "a", "c"), 1), "a", "b"),  # loop
        (data(("a",), 1), "a", "a"),  # too short
        (data(("a", "b", "c"), 1, dst="z"), "a", "b"),  # path does not end at dst
        (data(("a", "b", "c"), 1, src="z"), "a", "b"),  # path does not start at src
        (data(tuple(f"n{i}" for i in range(MAX_HOPS + 1)), 1), "n0", "n1"),  # too long
    ],
)
def test_bad_source_routes_are_dropped(msg: Data, sender: str, me: str) -> None:
    verdict = check_route(msg, sender, me)
    assert verdict.action == "drop"
    assert verdict.reason == "bad_path"


def test_ack_goes_back_along_the_reversed_path() -> None:
    ack = reverse_ack(data(("a", "b", "c"), 2))
    assert ack == DataAck(src="c", dst="a", msg_id=7, path=("c", "b", "a"), hop=1)
    assert check_route(ack, "c", "b").next_hop == "a"
    assert check_route(attrs_hop(ack, 2), "b", "a").action == "deliver"


def attrs_hop(ack: DataAck, hop: int) -> DataAck:
    return DataAck(ack.src, ack.dst, ack.msg_id, ack.path, hop)


# -------------------------------------------------------------------------- RTO
def test_rtt_estimator_follows_rfc6298() -> None:
    est = RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=8.0)
    assert est.rto == 1.0
    est.sample(0.1)  # first: srtt = r, rttvar = r/2, rto = max(min, r + 4 r/2)
    assert est.srtt == pytest.approx(0.1)
    assert est.rttvar == pytest.approx(0.05)
    assert est.rto == pytest.approx(0.3)
    est.sample(0.3)  # rttvar = 3/4*0.05 + 1/4*|0.1-0.3|; srtt = 7/8*0.1 + 1/8*0.3
    assert est.rttvar == pytest.approx(0.0875)
    assert est.srtt == pytest.approx(0.125)
    assert est.rto == pytest.approx(0.125 + 4 * 0.0875)
    for _ in range(50):
        est.sample(0.001)
    assert est.rto == pytest.approx(0.2)  # floored


# -------------------------------------------------------------------------- Sender
def test_window_bounds_messages_in_flight_and_acks_free_slots() -> None:
    s = Sender(window=2, rng=random.Random(1))
    a, b = s.new_id(), s.new_id()
    assert b == a + 1
    s.track(a, "d", 0, "latency", b"1", ("s", "d"), 0.0)
    s.track(b, "d", 0, "latency", b"2", ("s", "d"), 0.0)
    assert s.space == 0
    with pytest.raises(RuntimeError):
        s.track(s.new_id(), "d", 0, "latency", b"3", ("s", "d"), 0.0)
    # An ack from someone else than the destination does not free the slot.
    assert s.on_ack(DataAck("x", "s", a, ("x", "s"), 1), 0.1) is None
    assert s.on_ack(DataAck("d", "s", a, ("d", "s"), 1), 0.1) is not None
    assert s.space == 1
    assert s.on_ack(DataAck("d", "s", a, ("d", "s"), 1), 0.2) is None  # late duplicate


def test_retransmission_timer_backs_off_and_karn_skips_retransmitted_samples() -> None:
    s = Sender(window=8, initial_rto=1.0, min_rto=0.2, max_rto=4.0, give_up=20.0)
    m = s.new_id()
    entry = s.track(m, "d", 0, "latency", b"p", ("s", "d"), 0.0)
    assert s.next_deadline() == 1.0
    assert s.due(0.99) == ([], [], [])
    timed_out, lost, expired = s.due(1.0)
    assert timed_out == [entry] and lost == [] and expired == []
    s.sent_again(entry, ("s", "x", "d"), 1.0)
    assert entry.rto == 2.0 and entry.deadline == 3.0 and entry.attempts == 2
    s.sent_again(entry, ("s", "x", "d"), 3.0)
    s.sent_again(entry, ("s", "x", "d"), 7.0)
    assert entry.rto == 4.0  # capped
    s.on_ack(DataAck("d", "s", m, ("d", "x", "s"), 1), 7.05)
    assert s.estimator("d").srtt is None  # Karn: no sample from a retransmitted message
    m2 = s.new_id()
    s.track(m2, "d", 0, "latency", b"p", ("s", "d"), 10.0)
    s.on_ack(DataAck("d", "s", m2, ("d", "s"), 1), 10.05)
    assert s.estimator("d").srtt == pytest.approx(0.05)


def test_immediate_resend_after_failure_does_not_back_off() -> None:
    s = Sender(initial_rto=1.0)
    entry = s.track(s.new_id(), "d", 0, "latency", b"p", ("s", "b", "d"), 0.0)
    assert s.using(("b", "s")) == [entry]  # either direction of the link
    assert s.using(("b", "x")) == []
    s.sent_again(entry, ("s", "c", "d"), 0.3, backoff=False)
    assert entry.rto == 1.0 and entry.deadline == pytest.approx(1.3)
    assert s.using(("s", "b")) == []


def test_messages_are_given_up_after_the_deadline() -> None:
    s = Sender(give_up=5.0)
    s.track(s.new_id(), "d", 0, "latency", b"p", None, 0.0)
    timed_out, _, expired = s.due(4.0)
    assert len(timed_out) == 1 and expired == []
    timed_out, _, expired = s.due(5.0)
    assert timed_out == [] and len(expired) == 1 and s.in_flight == 0


def _ack(s: Sender, entry: Pending, now: float) -> None:
    assert entry.path is not None
    assert s.on_ack(DataAck(entry.dst, "s", entry.msg_id, entry.path[::-1], 1), now) is entry


def test_acks_on_a_path_restart_the_timers_of_messages_queued_behind_them() -> None:
    # RFC 6298 5.3 for the overlay: a bulk of messages queued behind a slow first hop is not
    # retransmitted while the acks of the ones ahead keep coming.
    s = Sender(window=64, initial_rto=1.0, min_rto=0.2, max_rto=8.0)
    path = ("s", "b", "d")
    queued = [s.track(s.new_id(), "d", 0, "throughput", b"p", path, 0.0) for _ in range(40)]
    for k, entry in enumerate(queued[:30]):  # one ack every 0.1 s, in order
        now = 0.5 + 0.1 * k
        _ack(s, entry, now)
        assert s.due(now) == ([], [], [])
    # 3.4 s after the rest were sent, they are still not due: the last ack was at 3.4 s.
    assert s.due(3.4 + 0.99 * s.estimator("d").rto) == ([], [], [])
    # The acks stop: one RTO after the last one, the timers expire.
    deadline = s.next_deadline()
    assert deadline is not None and deadline > 3.4
    timed_out, lost, _ = s.due(deadline)
    assert timed_out == queued[30:] and lost == []


def test_acks_on_another_path_do_not_hold_a_message_back() -> None:
    s = Sender(window=8, initial_rto=1.0)
    stuck = s.track(s.new_id(), "d", 0, "latency", b"p", ("s", "b", "d"), 0.0)
    for k in range(5):
        other = s.track(s.new_id(), "d", 1, "latency", b"p", ("s", "c", "d"), 0.1 * k)
        _ack(s, other, 0.1 * k + 0.05)
    timed_out, lost, _ = s.due(1.0)
    assert timed_out == [stuck] and lost == []


def test_a_message_passed_by_dupthresh_later_acks_on_its_path_is_lost_and_resent_at_once() -> None:
    s = Sender(window=16, initial_rto=1.0, dupthresh=3)
    path = ("s", "b", "d")
    first, *later = [s.track(s.new_id(), "d", 0, "latency", b"p", path, 0.0) for _ in range(4)]
    for k, entry in enumerate(later[:2]):
        _ack(s, entry, 0.1 + 0.01 * k)
        assert not s.lost_found and s.due(0.2) == ([], [], [])
    _ack(s, later[2], 0.12)  # the third later message acknowledged: `first` is lost
    assert s.lost_found
    assert s.next_deadline() == 0.0  # due at once, long before its RTO
    timed_out, lost, _ = s.due(0.12)
    assert timed_out == [] and lost == [first] and not s.lost_found
    # Reported once: if it cannot be resent now (no route), only its timer is left.
    assert s.due(0.13) == ([], [], []) and s.next_deadline() == pytest.approx(1.12)
    s.sent_again(first, path, 0.12, backoff=False)
    assert first.rto == 1.0 and first.later_acks == 0
    assert s.due(0.5) == ([], [], [])


def test_the_ack_of_a_retransmitted_message_says_nothing_about_the_others() -> None:
    # Karn's ambiguity: the ack may be the first copy's, sent before the others.
    s = Sender(window=16, initial_rto=1.0, dupthresh=1)
    path = ("s", "b", "d")
    old = s.track(s.new_id(), "d", 0, "latency", b"p", path, 0.0)
    newer = s.track(s.new_id(), "d", 0, "latency", b"p", path, 0.5)
    s.sent_again(old, path, 1.0)
    _ack(s, old, 1.05)
    assert newer.later_acks == 0 and not s.lost_found


def test_message_ids_start_at_a_random_base() -> None:
    assert Sender(rng=random.Random(1)).new_id() != Sender(rng=random.Random(2)).new_id()


# -------------------------------------------------------------------------- Deduplicator
def test_dedupe_is_per_source_and_bounded() -> None:
    d = Deduplicator(window=3, max_sources=2)
    d.remember("a", 1)
    assert d.seen("a", 1) and not d.seen("b", 1)
    for i in (2, 3, 4):
        d.remember("a", i)
    assert not d.seen("a", 1)  # pushed out of the window
    assert d.seen("a", 4)
    d.remember("b", 1)
    d.remember("c", 1)  # third source evicts the least recently heard ("a")
    assert not d.seen("a", 4) and d.seen("b", 1) and d.seen("c", 1)


# -------------------------------------------------------------------------- FlowTable
def test_flow_keeps_its_path_until_the_selector_switches_or_it_breaks() -> None:
    flows = FlowTable()
    p1, p2 = ("s", "a", "d"), ("s", "b", "d")
    usable = {p1, p2}
    assert flows.path("d", "latency", 1, p1, usable.__contains__) == p1
    # The selector now prefers p2, but the flow stays pinned while p1 works.
    assert flows.path("d", "latency", 1, p2, usable.__contains__) == p1
    assert flows.path("d", "latency", 2, p2, usable.__contains__) == p2  # a new flow
    usable.discard(p1)  # p1 breaks: the flow moves to the selected path
    assert flows.path("d", "latency", 1, p2, usable.__contains__) == p2
    assert flows.repin("d", "latency", p1) == 2
    usable.add(p1)
    assert flows.path("d", "latency", 2, p2, usable.__contains__) == p1
    assert flows.repin("d", "latency", None) == 2
    assert flows.path("d", "latency", 1, None, usable.__contains__) is None


def test_flow_table_is_bounded() -> None:
    flows = FlowTable(max_flows=3)
    for f in range(10):
        flows.path("d", "latency", f, ("s", "d"), lambda p: True)
    assert len(list(flows.flows())) == 3


# -------------------------------------------------------------------------- RouteTable
def _graph(version: int, edges: dict[tuple[str, str], float]) -> nx.DiGraph:
    g = nx.DiGraph(version=version)
    for (u, v), latency in edges.items():
        for x, y in ((u, v), (v, u)):
            g.add_edge(x, y, latency=latency, loss=0.001, throughput=1e6, up=True)
    return g


def test_route_table_reports_initial_better_and_down_changes() -> None:
    settings = RoutingSettings(hold_time=2.0, margin=0.1)
    router = Router("s", settings)
    table = RouteTable(router, settings)
    router.update(_graph(1, {("s", "a"): 0.01, ("a", "d"): 0.01, ("s", "b"): 0.02,
                             ("b", "d"): 0.02}))
    current, change = table.current("d", "latency", 0.0)
    assert current is not None and current.path == ("s", "a", "d")
    assert change is not None and change.reason == "initial" and change.old is None
    assert table.flows.path("d", "latency", 5, current.path, lambda p: True) == ("s", "a", "d")
    # The b detour becomes much better: switched only once it has held for hold_time.
    router.update(_graph(2, {("s", "a"): 0.05, ("a", "d"): 0.05, ("s", "b"): 0.01,
                             ("b", "d"): 0.01}))
    assert table.reselect(1.0) == []
    assert table.reselect(2.5) == []
    (better,) = table.reselect(3.1)
    assert better.reason == "better" and better.new == ("s", "b", "d")
    assert table.flows.path("d", "latency", 5, None, lambda p: True) == ("s", "b", "d")  # re-pinned
    # The b path breaks: the a path is taken at once.
    router.update(_graph(3, {("s", "a"): 0.05, ("a", "d"): 0.05, ("s", "b"): 0.01}))
    (down,) = table.reselect(3.2)
    assert down.reason == "down" and down.old == ("s", "b", "d") and down.new == ("s", "a", "d")
    router.update(_graph(4, {("s", "b"): 0.01}))
    (gone,) = table.reselect(3.3)
    assert gone.reason == "unreachable" and gone.new is None
    with pytest.raises(ValueError):
        table.current("d", "fastest", 4.0)
