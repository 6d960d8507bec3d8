"""OverlayNode on emulated links in virtual time: delivery, failover, loss, bad frames."""

from __future__ import annotations

import importlib.util
import math
import random
import struct
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, cast

import networkx as nx
import pytest
import trio
from overlay_helpers import KEY, PORT, open_overlay, wait_routable

from overlay import peerlink
from overlay.config import NodeConfig, RoutingSettings
from overlay.forwarding import RouteTable
from overlay.messages import (
    VERSION,
    FrameReader,
    FrameWriter,
    Hello,
    LinkAdvert,
    Lsa,
    Message,
    Probe,
)
from overlay.metrics import LinkQuality
from overlay.node import OverlayNode, Subscription
from overlay.peerlink import FLOOD_PACING, PeerLink, PeerLinks
from overlay.routing import PathMetrics, Router
from overlay.subscription import Subscription as Home
from overlay.types import Delivery, LinkChange, NodeStats, OverlayEvent, PathChange

# a - b direct is the short path; a - c - b the detour.
TRIANGLE = {("a", "b"): 0.010, ("a", "c"): 0.010, ("b", "c"): 0.010}
DETOUR = ("a", "c", "b")


async def collect(node: OverlayNode, into: list[tuple[float, Delivery]]) -> None:
    while True:
        delivery = await node.receive()
        into.append((trio.current_time(), delivery))


async def next_event(
    events: Subscription, match: Callable[[OverlayEvent], bool], timeout: float = 1.0
) -> OverlayEvent:
    with trio.fail_after(timeout):
        async for event in events:
            if match(event):
                return event
    raise AssertionError("subscription ended")


async def send_stream(
    node: OverlayNode, dst: str, count: int, *, policy: str = "latency", gap: float = 0.01,
    at: dict[int, Callable[[], None]] | None = None,
) -> list[int]:
    sent = []
    for i in range(count):
        if at and i in at:
            at[i]()
        sent.append(await node.send(dst, i.to_bytes(4, "big") * 64, policy=policy))
        await trio.sleep(gap)
    return sent


async def test_two_nodes_deliver_both_ways(autojump_clock: trio.abc.Clock) -> None:
    async with open_overlay({("a", "b"): 0.005}) as ov:
        await wait_routable(ov)
        a, b = ov.node("a"), ov.node("b")
        assert a.best_path("b") == ("a", "b")
        assert a.peers == ["b"] and b.peers == ["a"]
        mid = await a.send("b", b"ping")
        with trio.fail_after(2):
            got = await b.receive()
        assert got == Delivery("a", b"ping", ("a", "b"), mid, 0, True)
        await b.send("a", b"pong", reliable=False)
        with trio.fail_after(2):
            back = await a.receive()
        assert back.payload == b"pong" and not back.reliable
        with trio.fail_after(2):
            while a.send_window[0]:
                await trio.sleep(0.01)
        assert a.stats.acked == 1
        q = a.link_quality("b")
        assert q.up and q.info is not None
        assert 0.009 < q.latency < 0.05  # RTT of a 5 ms one-way link
        pq = a.path_quality("b")
        assert pq is not None and pq.hops == 1 and pq.samples > 0


async def test_unacknowledged_counts_reliable_messages_per_destination_and_flow(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_overlay(TRIANGLE) as ov:
        await wait_routable(ov)
        a, b, c = ov.node("a"), ov.node("b"), ov.node("c")
        for _ in range(3):
            await a.send("b", b"x", flow=1)
        for _ in range(2):
            await a.send("c", b"y", flow=2)
        await a.send("c", b"z", flow=1)
        await a.send("c", b"not tracked", reliable=False)
        # Accepted, not yet acknowledged (no virtual time has passed: nothing arrived yet).
        assert a.unacknowledged() == 6 == a.send_window[0]
        assert (a.unacknowledged("b"), a.unacknowledged("c")) == (3, 3)
        assert (a.unacknowledged(flow=1), a.unacknowledged("c", flow=1)) == (4, 1)
        assert a.unacknowledged("c", flow=2) == 2 and a.unacknowledged("b", flow=2) == 0
        with trio.fail_after(5):
            for node, count in ((b, 3), (c, 4)):
                for _ in range(count):
                    await node.receive()
            while a.unacknowledged():
                await trio.sleep(0.01)
        assert a.send_window[0] == 0 and a.stats.expired == 0


async def test_three_nodes_relay_through_the_middle(autojump_clock: trio.abc.Clock) -> None:
    async with open_overlay({("a", "b"): 0.01, ("b", "c"): 0.01}) as ov:
        await wait_routable(ov)
        a, b, c = ov.node("a"), ov.node("b"), ov.node("c")
        assert a.best_path("c") == ("a", "b", "c")
        assert set(a.topology().edges) == {("a", "b"), ("b", "a"), ("b", "c"), ("c", "b")}
        ids = [await a.send("c", bytes([i]) * 100) for i in range(20)]
        got: list[Delivery] = []
        with trio.fail_after(5):
            while len(got) < 20:
                got.append(await c.receive())
        assert [d.msg_id for d in got] == ids  # one flow, one path: in order
        assert all(d.path == ("a", "b", "c") for d in got)
        with trio.fail_after(5):
            while a.send_window[0]:
                await trio.sleep(0.01)
        assert b.stats.forwarded == 40  # 20 Data + 20 DataAcks relayed
        assert b.stats.delivered == 0 and a.stats.retransmitted == 0


async def test_reliable_traffic_survives_a_hard_cut_within_one_second(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Measured item 1 (with traffic): failover < 1 s virtual, no loss, no duplicate."""
    async with open_overlay(TRIANGLE) as ov:
        await wait_routable(ov)
        a, b = ov.node("a"), ov.node("b")
        assert a.best_path("b") == ("a", "b")
        events = a.subscribe()
        got: list[tuple[float, Delivery]] = []
        cut_at: list[float] = []

        def cut() -> None:
            cut_at.append(trio.current_time())
            ov.cut("a", "b")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, b, got)
            sent = await send_stream(a, "b", 300, at={100: cut})
            with trio.fail_after(20):
                while len(got) < len(sent) or a.send_window[0]:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        ids = [d.msg_id for _, d in got]
        assert sorted(ids) == sorted(sent)  # nothing lost
        assert len(ids) == len(set(ids))  # nothing twice
        resumed = min(t for t, d in got if d.path == DETOUR) - cut_at[0]
        assert resumed < 1.0, f"traffic resumed {resumed:.3f} s after the cut"
        change = await next_event(events, lambda e: isinstance(e, PathChange) and e.dst == "b"
                                  and e.new == DETOUR)
        assert isinstance(change, PathChange) and change.reason == "down"
        assert change.at - cut_at[0] < 1.0
        assert a.stats.rerouted > 0
        down = await next_event(events, lambda e: isinstance(e, LinkChange) and not e.up)
        assert isinstance(down, LinkChange) and down.peer == "b" and "RTO" in down.reason


async def test_remote_cut_reroutes_the_source_through_the_flood(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The cut link is two hops away: b sees the RTO, its LSA reaches a, a resends."""
    square = {("a", "b"): 0.005, ("b", "d"): 0.005, ("a", "c"): 0.010, ("c", "d"): 0.010}
    async with open_overlay(square) as ov:
        await wait_routable(ov)
        a, d = ov.node("a"), ov.node("d")
        assert a.best_path("d") == ("a", "b", "d")
        downs = a.stats.link_downs
        got: list[tuple[float, Delivery]] = []
        cut_at: list[float] = []

        def cut() -> None:
            cut_at.append(trio.current_time())
            ov.cut("b", "d")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, d, got)
            sent = await send_stream(a, "d", 200, at={50: cut})
            with trio.fail_after(20):
                while len(got) < len(sent) or a.send_window[0]:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        ids = [m.msg_id for _, m in got]
        assert sorted(ids) == sorted(sent) and len(set(ids)) == len(ids)
        resumed = min(t for t, m in got if m.path == ("a", "c", "d")) - cut_at[0]
        assert resumed < 1.0, f"traffic resumed {resumed:.3f} s after the cut"
        # a's own links never failed: it learned of the cut from the flooded LSAs.
        assert a.stats.link_downs == downs and a.peers == ["b", "c"]
        assert a.stats.rerouted > 0


async def test_idle_link_cut_is_found_by_probes_within_three_seconds(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Measured item 1 (no traffic): the path moves within 3 s, then traffic uses it."""
    async with open_overlay(TRIANGLE) as ov:
        await wait_routable(ov)
        a, b = ov.node("a"), ov.node("b")
        assert a.best_path("b") == ("a", "b")
        events = a.subscribe()
        await trio.sleep(5.3)  # idle: only probes and LSA refreshes on the links
        cut_at = trio.current_time()
        ov.cut("a", "b")
        change = await next_event(
            events, lambda e: isinstance(e, PathChange) and e.dst == "b", timeout=10
        )
        assert isinstance(change, PathChange) and change.new == DETOUR
        assert change.at - cut_at < 3.0, f"failover took {change.at - cut_at:.3f} s"
        await a.send("b", b"after the cut")
        with trio.fail_after(2):
            got = await b.receive()
        assert got.path == DETOUR and got.payload == b"after the cut"


async def test_probes_only_on_idle_links_and_only_from_the_dialler(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_overlay({("a", "b"): 0.005}) as ov:
        await wait_routable(ov)
        a, b = ov.node("a"), ov.node("b")
        before_a, before_b = a.stats.frames_out["Probe"], b.stats.frames_out["Probe"]
        await send_stream(a, "b", 500, gap=0.01)  # 5 s busy, acks flowing back
        busy = a.stats.frames_out["Probe"] - before_a
        await trio.sleep(5.0)
        idle = a.stats.frames_out["Probe"] - before_a - busy
        assert busy == 0
        assert idle >= 3  # about one per probe_interval once idle_after passed
        # b rides on a's probes: it sends none, yet its latency is a's probe RTT (~10 ms),
        # not TCP's srtt of a link whose only traffic is probes (delayed ACKs in it).
        assert b.stats.frames_out["Probe"] == before_b
        assert b.stats.frames_in["Probe"] >= idle
        assert a.link_quality("b").samples > 10
        assert b.link_quality("a").latency == pytest.approx(a.link_quality("b").latency, rel=0.2)
        assert 0.009 < b.link_quality("a").latency < 0.013


async def test_subscriptions_are_bounded_and_count_drops(autojump_clock: trio.abc.Clock) -> None:
    async with open_overlay(TRIANGLE) as ov:
        await wait_routable(ov)
        a = ov.node("a")
        small = a.subscribe(maxlen=1)
        a.best_path("b")
        ov.cut("a", "b")
        ov.cut("a", "c")
        with trio.fail_after(5):
            while a.peers:
                await trio.sleep(0.05)
        assert small.dropped >= 2 and a.stats.events_dropped >= small.dropped
        last = await small.__anext__()
        assert isinstance(last, (LinkChange, PathChange))
        await small.aclose()
        with pytest.raises(StopAsyncIteration):
            await small.__anext__()


async def test_link_comes_back_after_the_cut_heals(autojump_clock: trio.abc.Clock) -> None:
    async with open_overlay(TRIANGLE) as ov:
        await wait_routable(ov)
        a = ov.node("a")
        ov.cut("a", "b")
        with trio.fail_after(5):
            while "b" in a.peers:
                await trio.sleep(0.05)
        ov.cut("a", "b", down=False)
        with trio.fail_after(30):
            while a.best_path("b") != ("a", "b") or "b" not in a.peers:
                await trio.sleep(0.1)
        assert a.stats.link_downs >= 1 and a.stats.link_ups >= 2


async def test_long_outage_ends_in_a_fresh_connection(autojump_clock: trio.abc.Clock) -> None:
    async with open_overlay(TRIANGLE) as ov:
        await wait_routable(ov)
        a = ov.node("a")
        ov.cut("a", "b")
        await trio.sleep(40)  # TCP's RTO has backed off to several seconds by now
        assert "b" not in a.peers
        healed = trio.current_time()
        ov.cut("a", "b", down=False)
        with trio.fail_after(30):
            while a.best_path("b") != ("a", "b"):
                await trio.sleep(0.1)
        assert trio.current_time() - healed < 15.0
        assert a.stats.connects >= 3  # b, c, and b again


async def test_loss_on_the_active_path_moves_traffic_within_five_seconds(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Measured item 2: 10% loss on the direct link; the loss policy leaves it within 5 s."""
    async with open_overlay(TRIANGLE) as ov:
        await wait_routable(ov, policy="loss")
        a, b = ov.node("a"), ov.node("b")
        assert a.best_path("b", "loss") == ("a", "b")
        events = a.subscribe()
        got: list[tuple[float, Delivery]] = []
        lossy_at: list[float] = []

        def degrade() -> None:
            lossy_at.append(trio.current_time())
            ov.set_loss("a", "b", 0.10)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, b, got)
            sent = await send_stream(a, "b", 800, policy="loss", at={200: degrade})
            with trio.fail_after(30):
                while len(got) < len(sent):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        change = await next_event(
            events, lambda e: isinstance(e, PathChange) and e.policy == "loss" and e.new == DETOUR
        )
        assert isinstance(change, PathChange)
        assert change.at - lossy_at[0] < 5.0, f"moved after {change.at - lossy_at[0]:.3f} s"
        assert got[-1][1].path == DETOUR
        ids = [d.msg_id for _, d in got]
        assert sorted(ids) == sorted(sent) and len(set(ids)) == len(ids)


async def test_bad_frames_are_dropped_counted_and_harmless(autojump_clock: trio.abc.Clock) -> None:
    """Measured item 6: forged, replayed and truncated frames injected on the a->b link."""
    async with open_overlay(TRIANGLE) as ov:
        await wait_routable(ov)
        a, b = ov.node("a"), ov.node("b")
        paths = {(n, m): ov.node(n).best_path(m) for n in "abc" for m in "abc" if n != m}
        downs = b.stats.link_downs
        stream = a.links.links["b"].stream  # the TCP stream a -> b carries what we inject

        forged = FrameWriter(b"not the overlay key, 32 bytes..", "a").encode(Hello("a", 1, 1))
        last = b.links.replay.last("a")
        assert last is not None
        replayed = FrameWriter(KEY, "a", counter_start=last).encode(Hello("a", 1, 1))
        good = FrameWriter(KEY, "a").encode(Hello("a", 1, 1))
        cut = good[:-10]
        truncated = struct.pack(">I", len(cut) - 4) + cut[4:]
        runt = struct.pack(">IBB", 2, VERSION, 1)
        bad_version = bytearray(FrameWriter(KEY, "a").encode(Hello("a", 1, 1)))
        bad_version[4] = 99
        await stream.send_all(forged + replayed + truncated + runt + bytes(bad_version))

        mid = await a.send("b", b"still works")
        with trio.fail_after(2):
            got = await b.receive()
        assert got.msg_id == mid
        drops = b.stats.drops
        assert drops["BAD_MAC"] == 2  # forged, truncated
        assert drops["REPLAY"] == 1
        assert drops["MALFORMED"] == 1
        assert drops["BAD_VERSION"] == 1
        await trio.sleep(3)
        assert b.stats.link_downs == downs and "a" in b.peers
        assert {(n, m): ov.node(n).best_path(m) for n in "abc" for m in "abc" if n != m} == paths


async def test_oversized_prefix_closes_the_link_and_it_reconnects(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_overlay({("a", "b"): 0.005}) as ov:
        await wait_routable(ov)
        a, b = ov.node("a"), ov.node("b")
        await a.links.links["b"].stream.send_all(struct.pack(">I", 1 << 30))
        with trio.fail_after(10):
            while b.stats.drops["OVERSIZE"] == 0:
                await trio.sleep(0.01)
        with trio.fail_after(30):
            while a.stats.connects < 2 or a.best_path("b") is None:
                await trio.sleep(0.05)
        await a.send("b", b"again")
        with trio.fail_after(2):
            assert (await b.receive()).payload == b"again"


async def test_strangers_and_wrong_keys_are_refused(autojump_clock: trio.abc.Clock) -> None:
    async with open_overlay({("a", "b"): 0.005}) as ov:
        await wait_routable(ov)
        b = ov.node("b")
        before = b.stats.drops["handshake"]
        for sender, key in (("mallory", KEY), ("a", b"\x01" * 32)):
            stream = await ov.stacks["a"].open_tcp_stream(ov.addresses["b"], PORT)
            await stream.send_all(FrameWriter(key, sender).encode(Hello(sender, PORT, 7)))
            with trio.fail_after(10):
                assert await stream.receive_some() == b""  # closed without a Hello back
            await stream.aclose()
        assert b.stats.drops["handshake"] == before + 2
        assert b.stats.drops["BAD_MAC"] >= 1
        assert b.peers == ["a"]


async def test_send_blocks_while_the_window_is_full(autojump_clock: trio.abc.Clock) -> None:
    async with open_overlay({("a", "b"): 0.005}) as ov:
        await wait_routable(ov)
        a = ov.node("a")
        ov.cut("a", "b")
        with trio.fail_after(5):
            while a.best_path("b") is not None:
                await trio.sleep(0.05)
        window = a.send_window[1]
        for i in range(window):
            await a.send("b", bytes([i % 256]))
        with trio.move_on_after(2) as scope:
            await a.send("b", b"one too many")
        assert scope.cancelled_caught  # blocked: the window is full
        ov.cut("a", "b", down=False)
        got: list[tuple[float, Delivery]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, ov.node("b"), got)
            with trio.fail_after(60):
                await a.send("b", b"finally")
            with trio.fail_after(60):
                while len(got) < window + 1:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert len({d.msg_id for _, d in got}) == window + 1


async def test_send_checks_its_arguments(autojump_clock: trio.abc.Clock) -> None:
    async with open_overlay({("a", "b"): 0.005}) as ov:
        a = ov.node("a")
        with pytest.raises(ValueError, match="this node"):
            await a.send("a", b"x")
        with pytest.raises(ValueError, match="unknown policy"):
            await a.send("b", b"x", policy="fastest")
        with pytest.raises(ValueError, match="dst"):
            await a.send("x" * 65, b"x")
        with pytest.raises(ValueError, match="flow"):
            await a.send("b", b"x", flow=1 << 64)
        with pytest.raises(ValueError, match="max_payload"):
            await a.send("b", bytes(a.max_payload + 1))
        assert a.stats.sent == 0


def _load_example(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adaptive_chat_example_keeps_talking_through_the_cut(
    capsys: pytest.CaptureFixture[str],
) -> None:
    chat = _load_example("adaptive_chat")
    assert chat.main(["--lines", "8", "--cut-at", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "8 of 8 lines heard, 0 lost, 0 duplicated" in out
    assert "via alice -> carol -> bob" in out  # the detour carried lines after the cut


def test_resilient_transfer_example_arrives_intact(capsys: pytest.CaptureFixture[str]) -> None:
    transfer = _load_example("resilient_transfer")
    assert transfer.main(["--size", "300000", "--chunk", "8192"]) == 0
    out = capsys.readouterr().out
    assert "intact: 300000 of 300000 bytes" in out
    assert "(down)" in out  # the path in use broke and the transfer moved


def test_examples_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("adaptive_chat", "resilient_transfer"):
        with pytest.raises(SystemExit) as exit_info:
            _load_example(name).main(["--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


# ------------------------------------------------------------------ flooding: pacing and queues
def _lsa(origin: str, seq: int, *up: str) -> Lsa:
    return Lsa(origin, seq, tuple(LinkAdvert(n, 0.01, 0.001, 1e6, True) for n in up))


def _peer_link() -> PeerLink:
    # The queue logic never touches the stream or the reader.
    return PeerLink("b", cast(Any, None), cast(Any, None), 0.0)


def test_lsa_queue_keeps_the_newest_per_origin_and_drops_what_the_peer_has() -> None:
    link = _peer_link()
    assert link.enqueue_lsa(_lsa("x", 2), 0.0, urgent=False)
    assert link.enqueue_lsa(_lsa("x", 1), 0.0, urgent=False)  # older: the queued one stays
    assert link.enqueue_lsa(_lsa("y", 5), 0.0, urgent=False)
    assert link.enqueue_lsa(_lsa("x", 3, "z"), 0.0, urgent=False)  # newer replaces
    assert link.lsas == {"x": _lsa("x", 3, "z"), "y": _lsa("y", 5)}
    link.peer_has("x", 2)  # the peer sent us an older one: ours must still go
    link.peer_has("y", 5)  # the peer has this very instance: implied acknowledgement
    link.peer_has("q", 9)  # nothing queued: nothing happens
    assert link.lsas == {"x": _lsa("x", 3, "z")}
    # Emptied by the peer: the deadline goes with it, so the next LSA wakes the writer.
    link.peer_has("x", 3)
    assert link.lsas == {} and link.flush_at == math.inf
    link.wake = trio.Event()
    link.enqueue_lsa(_lsa("y", 6), 50.0, urgent=False)
    assert link.flush_at == pytest.approx(50.0 + FLOOD_PACING) and link.wake.is_set()


def test_lsa_queue_paces_good_news_and_sends_bad_news_at_once() -> None:
    link = _peer_link()
    link.enqueue_lsa(_lsa("x", 1), 10.0, urgent=False)
    assert link.flush_at == pytest.approx(10.0 + FLOOD_PACING) and link.wake.is_set()
    link.wake = trio.Event()
    link.enqueue_lsa(_lsa("y", 1), 10.01, urgent=False)  # rides with x: no earlier deadline
    assert link.flush_at == pytest.approx(10.0 + FLOOD_PACING) and not link.wake.is_set()
    link.enqueue_lsa(_lsa("z", 1), 10.02, urgent=True)
    assert link.flush_at == 10.02 and link.wake.is_set()


def test_lsa_queue_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peerlink, "LSA_QUEUE_LIMIT", 2)
    link = _peer_link()
    assert link.enqueue_lsa(_lsa("x", 1), 0.0, urgent=False)
    assert link.enqueue_lsa(_lsa("y", 1), 0.0, urgent=False)
    assert not link.enqueue_lsa(_lsa("z", 1), 0.0, urgent=False)
    assert link.enqueue_lsa(_lsa("x", 2), 0.0, urgent=False)  # a known origin still updates
    assert set(link.lsas) == {"x", "y"} and link.lsas["x"].seq == 2


class _Stream:
    """Records what the writer sends, and when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []

    async def send_all(self, data: bytes) -> None:
        self.sent.append((trio.current_time(), bytes(data)))
        await trio.lowlevel.checkpoint()


async def test_writer_sends_paced_lsas_together_and_lets_them_ride_with_urgent_frames(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = NodeConfig(node_id="a", key=KEY, listen_port=PORT)
    host = cast(Any, SimpleNamespace(stats=NodeStats()))
    links = PeerLinks(host, cast(Any, None), config, random.Random(1), 1)
    stream = _Stream()
    link = PeerLink("b", cast(Any, stream), cast(Any, None), 0.0)
    reader = FrameReader(KEY)

    def frames(chunk: bytes) -> list[Message]:
        return [msg for _, msg in reader.feed(chunk)]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(links._writer_task, link)
        t0 = trio.current_time()
        link.enqueue_lsa(_lsa("x", 1), t0, urgent=False)
        await trio.sleep(0.01)
        link.enqueue_lsa(_lsa("y", 1), trio.current_time(), urgent=False)
        await trio.sleep(0.1)
        # Both went in one send, FLOOD_PACING after the first was queued.
        ((at, chunk),) = stream.sent
        assert at == pytest.approx(t0 + FLOOD_PACING)
        assert frames(chunk) == [_lsa("x", 1), _lsa("y", 1)]
        # A queued LSA goes out with the next urgent frame, not after its own pacing.
        t1 = trio.current_time()
        link.enqueue_lsa(_lsa("x", 2), t1, urgent=False)
        await trio.sleep(0.005)
        link.enqueue(Probe(7, 1.0), control=True)
        await trio.sleep(0.1)
        at, chunk = stream.sent[1]
        assert len(stream.sent) == 2 and at == pytest.approx(t1 + 0.005)
        assert frames(chunk) == [Probe(7, 1.0), _lsa("x", 2)]
        # Bad news does not wait.
        t2 = trio.current_time()
        link.enqueue_lsa(_lsa("x", 3), t2, urgent=True)
        await trio.sleep(0.1)
        assert stream.sent[2][0] == t2 and frames(stream.sent[2][1]) == [_lsa("x", 3)]
        nursery.cancel_scope.cancel()


async def test_a_node_floods_nothing_until_it_has_a_link_to_announce(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our first LSA (every link still down) is not flooded, nor sent in the database
    synchronisation: the first one the network sees is the one with links in it."""
    received: list[Lsa] = []
    async with open_overlay({("a", "b"): 0.005, ("b", "c"): 0.005}) as ov:
        for node in ov.nodes.values():
            def spy(lsa: Lsa, now: float, receive: Any = node.lsdb.receive_lsa) -> Any:
                received.append(lsa)
                return receive(lsa, now)

            monkeypatch.setattr(node.lsdb, "receive_lsa", spy)
        await wait_routable(ov)
        for node in ov.nodes.values():
            own = node.lsdb.own
            assert own is not None and own.seq >= 2  # the empty first one, then links
    assert {lsa.origin for lsa in received} == {"a", "b", "c"}
    assert all(any(adv.up for adv in lsa.links) for lsa in received)


async def test_flooding_sends_each_lsa_over_a_link_about_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A ring of 6 and a chord: plain flooding would send every LSA both ways over every link
    but the origin's; the implied acknowledgements (a queued LSA the peer sent us itself is not
    sent back) save a good part of the second direction."""
    ring = {(f"n{i}", f"n{(i + 1) % 6}"): 0.005 + 0.003 * i for i in range(6)}
    ring[("n0", "n3")] = 0.02
    async with open_overlay(ring) as ov:
        await wait_routable(ov)
        await trio.sleep(3.0)
        nodes = ov.nodes.values()
        received = sum(n.stats.frames_in["Lsa"] for n in nodes)
        installed = sum(n.lsdb.stats.installed for n in nodes)
        originated_and_flooded = installed / (len(ov.nodes) - 1)  # LSAs everyone installed
        links = len(ring)
        # Plain flooding sends every LSA both ways over every link but the origin's: 2E - N + 1
        # copies; the implied acknowledgements stop most of the second direction.
        plain = originated_and_flooded * (2 * links - len(ov.nodes) + 1)
        assert received < plain * 0.85
        assert received >= installed


# ------------------------------------------------------------------ route selection cost
def _square(version: int, via_a: float, via_b: float) -> nx.DiGraph:
    g = nx.DiGraph(version=version)
    for (u, v), latency in {("s", "a"): via_a, ("a", "d"): via_a,
                            ("s", "b"): via_b, ("b", "d"): via_b}.items():
        for x, y in ((u, v), (v, u)):
            g.add_edge(x, y, latency=latency, loss=0.001, throughput=1e6, up=True)
    return g


def test_reselect_computes_alternates_only_when_the_path_may_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = RoutingSettings(hold_time=2.0, margin=0.1)
    router = Router("s", settings)
    table = RouteTable(router, settings)
    calls: list[str] = []
    full = router.candidates

    def spy(dst: str, policy: str, k: int | None = None) -> list[PathMetrics]:
        calls.append(dst)
        return full(dst, policy, k)

    monkeypatch.setattr(router, "candidates", spy)
    router.update(_square(1, 0.01, 0.02))
    current, change = table.current("d", "latency", 0.0)
    assert current is not None and current.path == ("s", "a", "d") and calls == ["d"]
    # The b path gets better, but by less than the margin: nothing can beat the current path,
    # so no alternates or detours are computed, and the path is kept.
    router.update(_square(2, 0.02, 0.019))
    assert table.reselect(1.0) == [] and calls == ["d"]
    # Now by more than the margin: the candidates are computed, and the switch waits for the
    # hold time as before.
    router.update(_square(3, 0.02, 0.01))
    assert table.reselect(2.0) == [] and calls == ["d", "d"]
    assert table.reselect(3.0) == []
    (better,) = table.reselect(4.0)
    assert better.reason == "better" and better.new == ("s", "b", "d")
    # The current path breaks: the full candidate list picks the replacement at once.
    searched = len(calls)
    router.update(_square(4, 0.02, math.inf))  # an infinite latency is no usable edge
    (down,) = table.reselect(4.1)
    assert down.reason == "down" and down.new == ("s", "a", "d") and len(calls) == searched + 1


async def test_subscription_is_bounded_counts_drops_and_ends_on_aclose() -> None:
    assert Subscription is Home  # still importable from overlay.node
    with pytest.raises(ValueError, match="maxlen"):
        Home(0, stats=NodeStats(), subscribers=set())
    stats, subscribers = NodeStats(), set[Subscription]()
    sub = Home(2, stats=stats, subscribers=subscribers)
    subscribers.add(sub)
    quality = LinkQuality("b", True, 0.01, 0.01, 0.0, 1e6, 1, 0.0)
    events = [LinkChange("b", i % 2 == 0, float(i), quality) for i in range(3)]
    for event in events:
        sub._push(event)
    # The oldest gave way; the node's counter saw the drop too.
    assert (sub.dropped, stats.events_dropped) == (1, 1)
    assert await sub.__anext__() is events[1]
    await sub.aclose()
    assert sub not in subscribers
    # What was queued is still delivered, then iteration ends.
    assert [e async for e in sub] == [events[2]]
