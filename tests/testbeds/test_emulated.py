"""EmulatedTestbed over plain tcpstack streams: links, isolation, rates, events, recording.

Everything runs under ``MockClock(autojump_threshold=0)`` (the ``autojump_clock`` fixture), so
virtual seconds cost no wall time and event times are exact.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from testbeds import cli
from testbeds.emulated import EmulatedTestbed, Recorder
from testbeds.scenario import episodes, format_result, run_scenario
from testbeds.topology import Event, Flow, LinkSpec, Topology, TopologyError

PORT = 5001


def line(events: tuple[Event, ...] = (), **link: float) -> Topology:
    """a - b - c, both links alike."""
    return Topology(
        nodes=["a", "b", "c"],
        links=[LinkSpec("a", "b", **link), LinkSpec("b", "c", **link)],  # type: ignore[arg-type]
        events=events,
        name="line",
    )


async def test_neighbours_talk_over_a_link_with_its_delay(autojump_clock: trio.testing.MockClock) -> None:
    async with EmulatedTestbed(line(delay=0.025), overlay=False) as tb:
        listener = await tb.stack("b").open_tcp_listener(PORT)
        start = trio.current_time()
        client = await tb.stack("a").open_tcp_stream(tb.address("b"), PORT)
        # SYN out and SYN-ACK back: one round trip of 2 x 25 ms.
        assert trio.current_time() - start == pytest.approx(0.050)
        server = await listener.accept()
        await client.send_all(b"hello")
        assert await server.receive_some(100) == b"hello"
        assert client.info().rtt == pytest.approx(50_000, rel=0.05)  # microseconds
        assert tb.address("a") == "198.18.0.1" and tb.stack("a").address == "198.18.0.1"


async def test_nodes_without_a_link_cannot_reach_each_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with EmulatedTestbed(line(), overlay=False) as tb:
        await tb.stack("c").open_tcp_listener(PORT)
        with trio.move_on_after(5.0) as scope:
            await tb.stack("a").open_tcp_stream(tb.address("c"), PORT)
        assert scope.cancelled_caught
        assert tb.net.stats.unroutable >= 3  # the SYN and its retransmissions


async def test_link_rate_bounds_goodput(autojump_clock: trio.testing.MockClock) -> None:
    rate = 125_000.0  # bytes/s: 1 Mbit/s
    topo = Topology(nodes=["a", "b"], links=[LinkSpec("a", "b", rate=rate, delay=0.01, queue=30_000)])
    size = 500_000
    async with EmulatedTestbed(topo, overlay=False) as tb:
        listener = await tb.stack("b").open_tcp_listener(PORT)
        client = await tb.stack("a").open_tcp_stream(tb.address("b"), PORT)
        server = await listener.accept()
        start = trio.current_time()
        received = 0

        async def send() -> None:
            await client.send_all(bytes(size))
            await client.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while chunk := await server.receive_some(65536):
                received += len(chunk)
        elapsed = trio.current_time() - start
    assert received == size
    goodput = size / elapsed
    # Headers take ~3% of the wire; slow start and the first RTTs a little more.
    assert 0.80 * rate < goodput < rate


async def test_events_apply_at_their_virtual_times_and_cut_traffic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = (
        Event(2.0, "down", "a", "b"),
        Event(4.0, "up", "a", "b"),
        Event(5.0, "loss", "b", "a", 0.2),
        Event(6.0, "delay", "a", "b", 0.05),
    )
    async with EmulatedTestbed(line(events, delay=0.01), overlay=False) as tb:
        a, b = tb.address("a"), tb.address("b")
        listener = await tb.stack("b").open_tcp_listener(PORT)
        client = await tb.stack("a").open_tcp_stream(b, PORT)
        server = await listener.accept()
        arrivals: list[float] = []
        checks: dict[float, tuple[bool, bool, float, float]] = {}

        async def tick() -> None:
            for _ in range(70):
                await client.send_all(b"x")
                await trio.sleep(0.1)

        async def read() -> None:
            while True:
                data = await server.receive_some(100)
                arrivals.extend([tb.now()] * len(data))

        async def observe() -> None:
            for at in (1.99, 2.01, 3.99, 4.01, 5.5, 6.5):
                await trio.sleep_until(tb.started_at + at)
                config = tb.net.path(a, b)
                assert config is not None
                checks[at] = (tb.net.path_is_down(a, b), tb.net.path_is_down(b, a),
                              config.loss, config.delay)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(observe)
            await tick()
            await trio.sleep(2.0)
            nursery.cancel_scope.cancel()

        assert [(round(t, 9), e.kind.value) for t, e in tb.applied] == [
            (2.0, "down"), (4.0, "up"), (5.0, "loss"), (6.0, "delay"),
        ]
        assert checks[1.99] == (False, False, 0.0, 0.01)
        assert checks[2.01] == (True, True, 0.0, 0.01)  # both directions cut
        assert checks[3.99] == (True, True, 0.0, 0.01)
        assert checks[4.01] == (False, False, 0.0, 0.01)
        assert checks[5.5] == (False, False, 0.2, 0.01)
        assert checks[6.5] == (False, False, 0.2, 0.05)
        assert tb.link("b", "a").spec.loss == 0.2 and tb.link("a", "b").up
        assert tb.link("b", "c").spec.loss == 0.0  # the other link untouched
        # Nothing crosses the cut: the byte sent just before 2.0 arrives, then none until the
        # link is back and a retransmission gets through.
        assert not [t for t in arrivals if 2.0 + 0.01 < t < 4.0]
        assert any(t > 4.0 for t in arrivals)
        assert len(arrivals) == 70  # TCP delivered all of it in the end, through cut and loss


async def test_set_link_changes_both_directions_and_rejects_bad_values(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with EmulatedTestbed(line(delay=0.01, rate=1e6), overlay=False) as tb:
        b, c = tb.address("b"), tb.address("c")
        state = tb.set_link("c", "b", loss=0.05, delay=0.02)
        assert state.spec == LinkSpec("b", "c", rate=1e6, delay=0.02, loss=0.05)
        for src, dst in ((b, c), (c, b)):
            config = tb.net.path(src, dst)
            assert config is not None
            assert (config.loss, config.delay, config.rate) == (0.05, 0.02, 8e6)
        tb.set_link("b", "c", up=False)
        assert tb.net.path_is_down(b, c) and tb.net.path_is_down(c, b)
        assert tb.net.path(b, c) is not None  # cutting keeps the config for later
        with pytest.raises(KeyError, match="no link a-c"):
            tb.set_link("a", "c", up=False)
        with pytest.raises(TopologyError, match="link a-b: loss must be a probability"):
            tb.set_link("a", "b", loss=1.5)
        with pytest.raises(KeyError, match="no node 'z'"):
            tb.stack("z")
        with pytest.raises(RuntimeError, match="without the overlay"):
            tb.node("a")


async def test_an_error_in_the_block_comes_out_as_itself_and_everything_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tb = EmulatedTestbed(line(delay=0.01), overlay=False)
    with pytest.raises(LookupError, match="boom"):
        async with tb:
            await tb.stack("a").open_tcp_listener(PORT)
            raise LookupError("boom")
    assert tb._live == 0  # every node task ended
    assert all(link.closed for link in tb.net.links) or not tb.net.links
    with pytest.raises(RuntimeError, match="entered once"):
        async with tb:
            pass


async def test_recorder_writes_events_and_link_samples_as_json_lines(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "run.jsonl"
    recorder = Recorder(path)
    topo = line((Event(1.5, "loss", "a", "b", 0.1),), delay=0.01)
    async with EmulatedTestbed(topo, overlay=False, recorder=recorder, sample_interval=0.5) as tb:
        listener = await tb.stack("b").open_tcp_listener(PORT)
        await tb.stack("a").open_tcp_stream(tb.address("b"), PORT)
        await listener.accept()
        await trio.sleep(2.2)
    recorder.close()
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    assert lines == recorder.records()
    events = [r for r in lines if r["type"] == "event"]
    assert events == [
        {"t": 1.5, "type": "event", "kind": "loss", "a": "a", "b": "b", "value": 0.1, "scheduled": 1.5}
    ]
    samples = [r for r in lines if r["type"] == "link"]
    assert sorted({r["t"] for r in samples}) == pytest.approx([0.5, 1.0, 1.5, 2.0], abs=0.05)
    assert {r["node"] for r in samples} == {"a", "b"}  # c has no connection to report
    assert all(r["state"] == "ESTABLISHED" for r in samples)


def test_same_seed_same_run_under_loss() -> None:
    # Each run gets its own trio.run and MockClock, so both start at virtual time 0 exactly
    # (timestamps and timers then round the same way).
    async def run(seed: int) -> list[tuple[float, int]]:
        topo = line(delay=0.005, loss=0.05)
        async with EmulatedTestbed(topo, overlay=False, seed=seed) as tb:
            listener = await tb.stack("b").open_tcp_listener(PORT)
            client = await tb.stack("a").open_tcp_stream(tb.address("b"), PORT)
            server = await listener.accept()
            seen: list[tuple[float, int]] = []

            async def send() -> None:
                await client.send_all(bytes(200_000))
                await client.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while chunk := await server.receive_some(65536):
                    seen.append((round(tb.now(), 9), len(chunk)))
            return seen

    def fresh(seed: int) -> list[tuple[float, int]]:
        shuffle = getattr(getattr(trio._core, "_run", None), "_r", None)  # see conftest.py
        if isinstance(shuffle, random.Random):
            shuffle.seed(0)
        return trio.run(run, seed, clock=trio.testing.MockClock(autojump_threshold=0))

    first = fresh(1)
    assert len(first) > 10
    assert first == fresh(1)
    assert first != fresh(2)


async def test_two_hundred_nodes_build_and_run_in_one_process(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topo = Topology.random(200, degree=3, seed=7)
    cpu = time.process_time()  # CPU, not wall: other CI jobs may share the machine
    async with EmulatedTestbed(topo, overlay=False) as tb:
        # Every node dials each neighbour with a higher index and exchanges a message.
        async def pair(x: str, y: str) -> None:
            stream = await tb.stack(x).open_tcp_stream(tb.address(y), PORT)
            await stream.send_all(x.encode())
            await stream.send_eof()

        async def serve(node: str, expected: int, got: list[str]) -> None:
            listener = await tb.stack(node).open_tcp_listener(PORT)
            for _ in range(expected):
                stream = await listener.accept()
                got.append((await stream.receive_some(100)).decode())

        got: dict[str, list[str]] = {n: [] for n in topo.nodes}
        async with trio.open_nursery() as nursery:
            for node in topo.nodes:
                higher = [p for p in topo.neighbours(node) if p > node]
                nursery.start_soon(serve, node, len(higher), got[node])
            await trio.testing.wait_all_tasks_blocked()
            for link in topo.links:
                x, y = sorted((link.a, link.b))
                nursery.start_soon(pair, y, x)
        await trio.sleep(3.0)
    assert sum(len(v) for v in got.values()) == len(topo.links)
    for node, peers in got.items():
        assert sorted(peers) == sorted(p for p in topo.neighbours(node) if p > node)
    assert time.process_time() - cpu < 30.0


# ---------------------------------------------------------------------- with the overlay


def diamond(events: tuple[Event, ...] = ()) -> Topology:
    """a-b-d is the short way (2 x 10 ms), a-c-d the long one (2 x 30 ms); a sends to d."""
    return Topology(
        nodes=["a", "b", "c", "d"],
        links=[
            LinkSpec("a", "b", delay=0.010, rate=1e6),
            LinkSpec("b", "d", delay=0.010, rate=1e6),
            LinkSpec("a", "c", delay=0.030, rate=1e6),
            LinkSpec("c", "d", delay=0.030, rate=1e6),
        ],
        events=events,
        flows=[Flow("a", "d", interval=0.05)],
        name="diamond",
    )


async def test_overlay_nodes_route_over_the_topology_and_record_path_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    async with EmulatedTestbed(diamond(), recorder=recorder, seed=3) as tb:
        assert tb.node("a").node_id == "a"
        assert {n.node_id for n in tb.node("a").config.neighbours} == {"b", "c"}
        await trio.sleep(5.0)
        assert tb.node("a").best_path("d") == ("a", "b", "d")
        assert tb.node("d").best_path("a") == ("d", "b", "a")
        await tb.node("a").send("d", b"over the overlay")
        delivery = await tb.node("d").receive()
        assert (delivery.src, delivery.payload, delivery.path) == ("a", b"over the overlay", ("a", "b", "d"))
    paths = [r for r in recorder.records("path") if r["node"] == "a" and r["dst"] == "d"]
    assert paths and paths[-1]["new"] == ["a", "b", "d"]
    samples = [r for r in recorder.records("link") if r["node"] == "a"]
    assert {r["peer"] for r in samples} == {"b", "c"}
    late = [r for r in samples if r["t"] >= 4.0]
    assert late and all(r["up"] for r in late)
    by_peer = {r["peer"]: r["latency"] for r in late}
    assert by_peer["b"] < by_peer["c"]  # the link model's delays show in the overlay's metrics


async def test_a_bulk_of_reliable_messages_is_not_retransmitted_while_its_acks_keep_coming(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 160 messages of 8 kB at once queue ~5 s of data behind a 250 kB/s first hop, far longer
    # than the end-to-end RTO; the path delivers all along, so nothing may be sent twice (each
    # copy would join the queue that delayed the original) and the goodput is the link's.
    rate, count, size = 250_000.0, 160, 8_000
    async with EmulatedTestbed(line(rate=rate, delay=0.02), seed=2, sample_interval=0) as tb:
        src, dst = tb.node("a"), tb.node("c")
        while src.best_path("c", "throughput") is None:
            await trio.sleep(0.1)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for _ in range(count):
                    await src.send("c", bytes(size), policy="throughput")

            nursery.start_soon(send)
            for _ in range(count):
                await dst.receive()
        elapsed = trio.current_time() - start
        assert src.stats.retransmitted == 0
        assert src.stats.acked <= count and dst.stats.delivered == count
    assert count * size / elapsed > 0.85 * rate


async def test_scenario_measures_failover_around_a_cut_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topo = diamond((Event(4.0, "down", "b", "d"), Event(7.0, "up", "b", "d")))
    result = await run_scenario(topo, duration=8.0, seed=1)
    assert [r.episode.label for r in result.rows] == ["down b-d at 4s"]
    row = result.rows[0]
    assert row.affected
    assert row.before == ("a", "b", "d")
    assert row.during == ("a", "c", "d")
    assert row.reroute is not None and row.resume is not None
    # Traffic is flowing, so TCP's RTO on the a-b or b-d link is the signal: well under 1 s
    # (RON needed ~18 s), and resumption follows the reroute by about one path delay.
    assert 0.0 < row.reroute < 1.0
    assert row.reroute <= row.resume < 1.0
    (flow,) = result.flows
    assert flow.sent == pytest.approx(8.0 / 0.05, abs=2)
    # Reliable: whatever is missing is still held, unacknowledged, by the source.
    assert flow.delivered <= flow.sent <= flow.delivered + flow.unacked
    # Unacknowledged at the end: the messages of about the last round trip, not a backlog.
    assert flow.median_latency is not None
    assert flow.unacked <= 2 * flow.median_latency / flow.flow.interval + 2
    assert flow.longest_gap < 1.0
    text = format_result(result)
    assert "down b-d at 4s" in text and "a-b-d" in text and "a-c-d" in text
    assert f"{row.reroute:.3f}" in text


def test_episodes_pair_worsening_events_with_their_restoration() -> None:
    topo = diamond()
    applied = [
        (1.0, Event(1.0, "loss", "a", "b", 0.1)),
        (2.0, Event(2.0, "loss", "a", "b", 0.2)),  # worse again while open: same episode
        (3.0, Event(3.0, "down", "c", "d")),
        (4.0, Event(4.0, "loss", "b", "a", 0.0)),  # back to the link's own loss: closes
        (5.0, Event(5.0, "delay", "a", "c", 0.01)),  # faster than 30 ms: no episode
        (6.0, Event(6.0, "delay", "a", "c", 0.09)),  # slower than before: opens, never closed
        (7.0, Event(7.0, "up", "d", "c")),
    ]
    got = [(e.a, e.b, e.kind, e.start, e.end) for e in episodes(topo, applied)]
    assert got == [
        ("a", "b", "loss", 1.0, 4.0),
        ("c", "d", "down", 3.0, 7.0),
        ("a", "c", "delay", 6.0, None),
    ]


def test_cli_run_prints_the_table_and_writes_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topo = tmp_path / "diamond.toml"
    topo.write_text(
        """
name = "dia"
nodes = ["a", "b", "c", "d"]
[defaults]
rate = 1000000
[[links]]
a = "a"
b = "b"
delay = 0.01
[[links]]
a = "b"
b = "d"
delay = 0.01
[[links]]
a = "a"
b = "c"
delay = 0.03
[[links]]
a = "c"
b = "d"
delay = 0.03
[[flows]]
src = "a"
dst = "d"
[scenarios.cut]
events = [{ at = 4.0, kind = "down", link = ["b", "d"] }]
"""
    )
    out = tmp_path / "out"
    code = cli.main(["run", str(topo), "--scenario", "cut", "--virtual", "--duration", "7",
                     "--out", str(out), "--seed", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dia scenario cut: 7 s of virtual time in" in printed
    assert "down b-d at 4s" in printed and "a->d" in printed
    lines = [json.loads(x) for x in (out / "dia-cut.jsonl").read_text().splitlines()]
    kinds = {r["type"] for r in lines}
    assert {"event", "path", "link", "delivery"} <= kinds
    assert [r["t"] for r in lines if r["type"] == "event"] == [4.0]
    summary = json.loads((out / "dia-cut.json").read_text())
    assert summary["scenario"] == "cut" and summary["rows"][0]["affected"] is True
    assert summary["rows"][0]["resume"] < 1.0
    # --virtual with the same --seed replays exactly: every record, every timestamp.
    again = tmp_path / "again"
    assert cli.main(["run", str(topo), "--scenario", "cut", "--virtual", "--duration", "7",
                     "--out", str(again), "--seed", "2"]) == 0
    assert (again / "dia-cut.jsonl").read_text() == (out / "dia-cut.jsonl").read_text()


def test_cli_reports_bad_topologies_and_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('nodes = ["a"]\nlinks = [{ a = "a", b = "z" }]\n')
    assert cli.main(["run", str(bad), "--virtual"]) == 2
    assert "bad.toml: links[0] (a-z): unknown node 'z'" in capsys.readouterr().err
    good = tmp_path / "ok.toml"
    good.write_text('nodes = ["a", "b"]\nlinks = [{ a = "a", b = "b" }]\n')
    assert cli.main(["run", str(good), "--scenario", "nope"]) == 2
    assert "no scenario 'nope'" in capsys.readouterr().err
    assert cli.main(["run", str(good), "--duration", "-1"]) == 2
    assert "--duration must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run"])
    assert exit_info.value.code == 2
