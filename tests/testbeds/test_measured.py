"""Issue 6, "Measured in virtual time", items 3 and 4, on the emulated testbed.

Item 3: the ``throughput`` policy's choice against the best path found by trying all paths.
Item 4: no flapping between two paths within +-5% of each other under delay noise.

Both run the full stack (tcpstack streams between overlay nodes on a MemoryNetwork with per-link
rate, delay and loss) under trio's MockClock, each topology in its own ``trio.run`` so it starts
at virtual time 0 and replays exactly from its seed.

Pinning a path (item 3, test-only hook). The overlay's source picks a flow's path in
``OverlayNode._flow_path(dst, policy, flow, now)`` (first send and every retransmission go
through it). :func:`pin` wraps that method on one node instance so that one flow id uses a given
source route; every other flow, and everything the relays and the destination do, is the
overlay's normal code. The wrapper is removed afterwards.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
import networkx as nx
import pytest
import trio
import trio.testing

from overlay import OverlayNode
from overlay.node import ROUTE_TICK, SPF_DELAY
from testbeds.emulated import EmulatedTestbed, Recorder, seed_trio_scheduler
from testbeds.scenario import run_scenario
from testbeds.topology import Event, Flow, LinkSpec, Topology

# ------------------------------------------------------------------------------ helpers


_PINS: dict[int, dict[int, tuple[str, ...]]] = {}  # id(node) -> flow -> pinned path


@contextmanager
def pin(node: OverlayNode, flow: int, path: tuple[str, ...]) -> Iterator[None]:
    """Make ``node`` send flow ``flow`` along ``path`` (see the module docstring); several
    flows of one node may be pinned at once."""
    pins = _PINS.get(id(node))
    if pins is None:
        pins = _PINS[id(node)] = {}
        original: Callable[[str, str, int, float], tuple[str, ...] | None] = node._flow_path

        def pinned(dst: str, policy: str, flow_id: int, now: float) -> tuple[str, ...] | None:
            route = pins.get(flow_id)
            if route is None:
                return original(dst, policy, flow_id, now)
            assert route[0] == node.node_id and route[-1] == dst
            return route

        setattr(node, "_flow_path", pinned)  # noqa: B010 (an instance attribute shadows the method)
    pins[flow] = path
    try:
        yield
    finally:
        del pins[flow]
        if not pins:
            del _PINS[id(node)]
            delattr(node, "_flow_path")  # noqa: B043 (the class's method again)


MESSAGE = 8_000  # bytes of payload per overlay message
BULK = 32  # messages per goodput measurement (256 kB)
WARM_UP = 48  # messages per link direction in the warm-up (384 kB: past slow start at ~1 BDP)


class Arrivals:
    """One receive loop per node, recording each delivery's time per flow, so measurements
    running at once never take each other's messages."""

    def __init__(self, tb: EmulatedTestbed) -> None:
        self.times: dict[int, list[float]] = defaultdict(list)
        self._waiting: dict[int, tuple[int, trio.Event]] = {}
        self.paths: dict[int, set[tuple[str, ...]]] = defaultdict(set)
        for node in tb.topology.nodes:
            tb.start_soon(self._receive, tb.node(node))

    async def _receive(self, node: OverlayNode) -> None:
        while True:
            delivery = await node.receive()
            times = self.times[delivery.flow]
            times.append(trio.current_time())
            self.paths[delivery.flow].add(delivery.path)
            waiting = self._waiting.get(delivery.flow)
            if waiting is not None and len(times) >= waiting[0]:
                waiting[1].set()

    async def wait(self, flow: int, count: int) -> None:
        event = trio.Event()
        self._waiting[flow] = (count, event)
        if len(self.times[flow]) < count:
            await event.wait()
        del self._waiting[flow]


async def goodput(
    tb: EmulatedTestbed, arrivals: Arrivals, src: str, dst: str, path: tuple[str, ...],
    flow: int, *, messages: int = BULK, limit: float = 60.0,
) -> float:
    """Goodput (bytes/s) of ``messages`` reliable messages sent back to back from ``src`` to
    ``dst`` pinned to ``path`` (0.0 if they do not all arrive in ``limit``): the payload after
    the first message over the time from its arrival to the last one's.

    From the first arrival, not from a later cut point such as the first quarter's arrival
    (what this measured before 2026-11-26 night, to leave slow start out): every measurement
    starts with idle peer links, so each hop restarts from its initial window (RFC 5681 4.1,
    RFC 7661) and a hop that is still in slow start releases the messages queued before it
    once per round trip, in a burst at its own, faster rate. When the cut falls just before
    such a burst, messages that crossed the bottleneck before the cut are counted as if they
    crossed after it: seed 1's n0-n10-n2 (bottleneck 756 kB/s) measured 993 and 717 kB/s for
    two transfers whose last messages arrived 408 and 406 ms after their first sends, and 719
    or 991 alternately in 12 repetitions. Measured from the first arrival the same 12
    gave 674-719 kB/s, and no measurement can exceed the bottleneck unless the first message
    itself is held back. The first arrival rather than the first send: the path's one-way
    delay is its latency, not its throughput."""
    sender = tb.node(src)

    async def send_all() -> None:
        for _ in range(messages):
            await sender.send(dst, bytes(MESSAGE), policy="throughput", flow=flow)

    with pin(sender, flow, path):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            with trio.move_on_after(limit):
                await arrivals.wait(flow, messages)
            nursery.cancel_scope.cancel()
        # Let retransmissions of the last messages drain so the next measurement starts clean.
        with trio.move_on_after(limit):
            while sender.send_window[0]:
                await trio.sleep(0.05)
    times = arrivals.times[flow]
    assert arrivals.paths[flow] <= {path}
    if len(times) < messages:
        return 0.0
    return (messages - 1) * MESSAGE / (times[messages - 1] - times[0])


def bottleneck(topo: Topology, path: tuple[str, ...]) -> float:
    """The smallest link rate on ``path`` (bytes/s): no goodput along it can be higher."""
    rates = [topo.link(a, b).rate for a, b in itertools.pairwise(path)]
    assert all(r is not None for r in rates)
    return min(r for r in rates if r is not None)


# ------------------------------------------------------------------------------ item 3

TOPOLOGIES = 10
NODES = 12
MAX_HOPS = 6  # candidate paths: every simple path of at most this many links
# One goodput measurement of a lossy path scatters by about 17 % (median 1 s.d.; a loss recovery or
# not in a 256 kB transfer; 6 repetitions of each of 24 paths of seeds 1, 2, 6 and 8, 22:30
# 2026-11-26). For two paths of equal mean goodput the ratio of means of n measurements then
# has a log s.d. of 0.17 * sqrt(2 / n), and falls below 0.9 by chance alone with probability
# Phi(ln 0.9 / that): 19 % for n = 4, 11 % for n = 8. Near-ties are common here (every path of
# seed 8 crosses the same narrowest link), so the comparison uses means of 8 (1 + REMEASURE).
REMEASURE = 7


def throughput_topology(seed: int) -> tuple[Topology, str, str]:
    """A random 12-node topology (rates 250 kB/s..2.5 MB/s, delays 2..50 ms, loss 0..1 %) and
    a source/destination pair as far apart as it has (so there are many paths to choose from)."""
    topo = Topology.random(NODES, degree=3.0, seed=seed, loss=(0.0, 0.01))
    graph = topo.graph()
    src = "n0"
    hops = nx.single_source_shortest_path_length(graph, src)
    dst = max(sorted(hops), key=lambda n: hops[n])
    return topo, src, dst


def settle_time(node: OverlayNode) -> float:
    """How long after the warm-up the source's choice can still be moving because of it.

    When the warm-up ends its links fall idle: ``idle_after`` later a link's latency is its
    probe RTT instead of TCP's srtt (see :mod:`overlay.metrics`), from the next probe (within
    ``probe_interval``), which moves its throughput estimate; its LSA goes out within
    ``lsa_interval`` (the origination rate limit) and the source recomputes ``SPF_DELAY`` after
    it arrives. A better path then has to stay better for ``hold_time``, checked every
    ``ROUTE_TICK``, before the source switches to it. (A fixed 3 s, before 2026-11-26 night,
    read seed 2's choice with such a switch 1.4 s into its 2 s hold.) All of it is well inside
    ``loss_horizon``, after which the warm-up's loss samples leave the estimates."""
    metrics, routing = node.config.metrics, node.config.routing
    return (
        metrics.idle_after + metrics.probe_interval + routing.lsa_interval + SPF_DELAY
        + routing.hold_time + ROUTE_TICK
    )


async def warm_up(tb: EmulatedTestbed, arrivals: Arrivals, topo: Topology) -> None:
    """Every link carries a bulk of one-hop messages in both directions at once, so every peer
    link's TCP has measured its path's delivery rate (what an overlay in use knows)."""
    async with trio.open_nursery() as nursery:
        for i, link in enumerate(topo.links):
            for j, (a, b) in enumerate(((link.a, link.b), (link.b, link.a))):
                nursery.start_soon(_warm, tb, arrivals, a, b, 1_000 + 2 * i + j)


async def _warm(tb: EmulatedTestbed, arrivals: Arrivals, a: str, b: str, flow: int) -> None:
    await goodput(tb, arrivals, a, b, (a, b), flow, messages=WARM_UP)


@attrs.frozen
class Trial:
    seed: int
    src: str
    dst: str
    chosen: tuple[str, ...]
    best: tuple[str, ...]
    ratio: float  # chosen path's goodput over the best path's
    tried: int  # paths measured (the chosen one too, even if it is not a candidate)
    paths: int  # candidate paths

    def describe(self) -> str:
        return (
            f"seed {self.seed}: {self.src}->{self.dst} chosen {'-'.join(self.chosen)} best "
            f"{'-'.join(self.best)} ratio {self.ratio:.3f} ({self.tried} paths measured; "
            f"{self.paths} candidates of <= {MAX_HOPS} links)"
        )


async def throughput_trial(seed: int) -> Trial:
    """One topology: warm up, wait :func:`settle_time`, take the policy's choice, then find
    the best path by trying all.

    "Trying all": every simple path from src to dst of at most ``MAX_HOPS`` links, measured one
    at a time with :func:`goodput`, in decreasing order of their bottleneck rate; once the next
    path's bottleneck rate is below the best goodput measured so far, it and every later path
    cannot win (goodput never exceeds the bottleneck), so the search stops there: branch and
    bound, still exact. The chosen path is measured the same way, after the others. If the
    winner is not the chosen path, both are measured ``REMEASURE`` more times, alternately, and
    their means compared.
    """
    topo, src, dst = throughput_topology(seed)
    async with EmulatedTestbed(topo, seed=seed, sample_interval=0) as tb:
        with trio.fail_after(30):
            while tb.node(src).best_path(dst, "throughput") is None:
                await trio.sleep(0.1)
        arrivals = Arrivals(tb)
        await warm_up(tb, arrivals, topo)
        await trio.sleep(settle_time(tb.node(src)))
        chosen = tb.node(src).best_path(dst, "throughput")
        assert chosen is not None
        paths = sorted(
            (tuple(p) for p in nx.all_simple_paths(topo.graph(), src, dst, cutoff=MAX_HOPS)),
            key=lambda p: (-bottleneck(topo, p), len(p), p),
        )
        flows = itertools.count(1)
        measured: dict[tuple[str, ...], list[float]] = {}
        for path in paths:
            if measured and bottleneck(topo, path) < max(m[0] for m in measured.values()):
                break
            measured[path] = [await goodput(tb, arrivals, src, dst, path, next(flows))]
        if chosen not in measured:
            measured[chosen] = [await goodput(tb, arrivals, src, dst, chosen, next(flows))]
        best = max(measured, key=lambda p: measured[p][0])
        if best != chosen:
            # The largest of many noisy measurements is biased upwards (the winner's curse):
            # measure the winner and the choice again and compare the means.
            for _ in range(REMEASURE):
                for path in (best, chosen):
                    measured[path].append(
                        await goodput(tb, arrivals, src, dst, path, next(flows))
                    )
    ratio = statistics.fmean(measured[chosen]) / statistics.fmean(measured[best])
    return Trial(seed, src, dst, chosen, best, ratio, len(measured), len(paths))


# Measured 9 of 10 (2026-11-26 22:43 and again 22:50, load 1.1-1.8; ratios by seed 0.924 1.000
# 1.536 1.154 1.000 1.653 0.805 1.000 1.000 1.248 both times; wall 225 s, CPU 222-223 s). Runs replay exactly (see
# tests/testbeds/test_replay.py), so that is the score of this code in any process; a change
# anywhere in the stack or the overlay moves packet timings and can move it. Seed 6 fails:
# its two paths share their narrowest link (n3-n1, 1632 kB/s at 0.93 % loss, estimated
# 196 kB/s), the latency tie-break picks n0-n4-n3-n1 (161 ms) over n0-n4-n9-n2-n8-n3-n1
# (297 ms), and the longer one delivers more: means of 8 here 0.805, means of 6 in a separate
# run 234 against 260 kB/s. Why (the hops other than the shared one) is not modelled.
@pytest.mark.slow  # ~225 s: the longest test of the suite, and the only measurement of item 3
def test_throughput_policy_picks_a_path_within_90_percent_of_the_best_in_9_of_10() -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    results = []
    for seed in range(TOPOLOGIES):
        seed_trio_scheduler(seed)
        results.append(
            trio.run(throughput_trial, seed, clock=trio.testing.MockClock(autojump_threshold=0))
        )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    report = "\n".join(r.describe() for r in results)
    print(f"{report}\nwall {wall:.1f} s, cpu {cpu:.1f} s")
    good = sum(1 for r in results if r.ratio >= 0.90)
    assert good >= 9, report


# ------------------------------------------------------------------------------ item 4

NOISE = 0.05  # each link's one-way delay is redrawn within +-5 % of its base value ...
NOISE_EVERY = 0.5  # ... this often (s)
SETTLE = 5.0  # s before the measured minute: links up, LSAs flooded, first path chosen


def near_equal_paths(seed: int, minute: float = 60.0) -> Topology:
    """s-a-d (2 x 20 ms one way) and s-b-d (2 x 20.5 ms, 2.5 % longer); every link's delay
    redrawn every ``NOISE_EVERY`` s within +-``NOISE`` of its base (scheduled "delay" events);
    a flow s->d of 256-byte messages every 50 ms (latency policy) for ``SETTLE + minute`` s."""
    rng = random.Random(f"near-equal/{seed}")
    base = {("s", "a"): 0.020, ("a", "d"): 0.020, ("s", "b"): 0.0205, ("b", "d"): 0.0205}
    links = [LinkSpec(a, b, rate=1_250_000.0, delay=delay) for (a, b), delay in base.items()]
    events = [
        Event(NOISE_EVERY * k, "delay", a, b, delay * rng.uniform(1 - NOISE, 1 + NOISE))
        for k in range(1, int((SETTLE + minute) / NOISE_EVERY))
        for (a, b), delay in base.items()
    ]
    return Topology(
        nodes=["s", "a", "b", "d"], links=links, events=events, name="near-equal",
        flows=[Flow("s", "d", interval=0.05)], duration=SETTLE + minute,
    )


@pytest.mark.slow
async def test_near_equal_paths_with_delay_noise_switch_at_most_once_a_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topo = near_equal_paths(seed=4)
    recorder = Recorder()
    result = await run_scenario(topo, seed=4, recorder=recorder, sample_interval=0)
    switches = [
        r for r in recorder.records("path")
        if r["node"] == "s" and r["dst"] == "d" and r["t"] >= SETTLE and r["old"] is not None
    ]
    initial = [r for r in recorder.records("path") if r["node"] == "s" and r["dst"] == "d"]
    assert initial and initial[0]["reason"] == "initial" and initial[0]["t"] < SETTLE
    # The flow kept going, but the source switched paths at most once.
    (flow,) = result.flows
    assert flow.delivered <= flow.sent <= flow.delivered + flow.unacked
    # Unacknowledged at the end: the messages of about the last round trip, not a backlog.
    assert flow.median_latency is not None
    assert flow.unacked <= 2 * flow.median_latency / flow.flow.interval + 2
    assert len(switches) <= 1, switches


def test_the_delay_noise_makes_the_two_paths_swap_order_often() -> None:
    # The precondition of the test above: with this noise the truly shorter path changes many
    # times a minute, so a router following the raw numbers would flap.
    topo = near_equal_paths(seed=4)
    assert _order_flips(topo) >= 10
    delays = [e.value for e in topo.events if {e.a, e.b} == {"s", "a"}]
    assert all(v is not None and 0.019 <= v <= 0.021 for v in delays)


def _order_flips(topo: Topology) -> int:
    """How often the true one-way delays of s-a-d and s-b-d swapped order during the run."""
    delay = {frozenset((link.a, link.b)): link.delay for link in topo.links}
    flips, previous = 0, None
    for at, group in itertools.groupby(topo.events, key=lambda e: e.at):
        for event in group:
            assert event.value is not None
            delay[frozenset((event.a, event.b))] = event.value
        if at < SETTLE:
            continue
        via_a = delay[frozenset(("s", "a"))] + delay[frozenset(("a", "d"))]
        via_b = delay[frozenset(("s", "b"))] + delay[frozenset(("b", "d"))]
        order = via_a < via_b
        flips += int(previous is not None and order != previous)
        previous = order
    return flips
