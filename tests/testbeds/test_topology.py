"""Topology: TOML parsing and validation, networkx import, seeded random partial meshes."""

from __future__ import annotations

import itertools
from pathlib import Path

import networkx as nx
import pytest

from tcpstack.links.impairment import DEFAULT_QUEUE_BYTES
from testbeds.topology import (
    MAX_NODES,
    Event,
    EventKind,
    Flow,
    LinkSpec,
    Topology,
    TopologyError,
    default_address,
)

RON8 = Path(__file__).resolve().parents[2] / "testbeds" / "topologies" / "ron8.toml"

SMALL = """
name = "tri"
duration = 20
nodes = ["a", "b", { id = "c", address = "198.19.4.7" }]
[defaults]
rate = 125000
delay = 0.01
[[links]]
a = "a"
b = "b"
[[links]]
a = "b"
b = "c"
delay = 0.03
loss = 0.02
queue = 30000
[[events]]
at = 7.5
kind = "up"
link = ["a", "b"]
[[events]]
at = 5
kind = "down"
a = "b"
b = "a"
[[flows]]
src = "a"
dst = "c"
interval = 0.2
[scenarios.lossy]
events = [{ at = 1, kind = "loss", a = "b", b = "c", value = 0.1 }]
[overlay]
routing = { hold_time = 1.0 }
"""


def write(tmp_path: Path, text: str, name: str = "topo.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_from_toml_reads_nodes_links_defaults_events_flows_and_scenarios(tmp_path: Path) -> None:
    topo = Topology.from_toml(write(tmp_path, SMALL))
    assert topo.name == "tri"
    assert topo.nodes == ("a", "b", "c")
    assert topo.duration == 20.0
    assert topo.link("b", "a") == LinkSpec("a", "b", rate=125000.0, delay=0.01)
    assert topo.link("c", "b") == LinkSpec("b", "c", rate=125000.0, delay=0.03, loss=0.02, queue=30000)
    # Events come back sorted by time, whatever the file's order.
    assert [(e.at, e.kind) for e in topo.events] == [(5.0, EventKind.DOWN), (7.5, EventKind.UP)]
    assert topo.flows == (Flow("a", "c", interval=0.2),)
    assert topo.addresses == {"a": "198.18.0.1", "b": "198.18.0.2", "c": "198.19.4.7"}
    assert topo.neighbours("b") == ("a", "c")
    assert topo.overlay == {"routing": {"hold_time": 1.0}}
    lossy = topo.with_scenario("lossy")
    assert lossy.events == (Event(1.0, "loss", "b", "c", 0.1),)
    assert lossy.links == topo.links
    assert topo.with_scenario("default") is topo
    with pytest.raises(TopologyError, match="no scenario 'nope' .*known: default, lossy"):
        topo.with_scenario("nope")


def test_link_impairment_converts_bytes_per_second_to_bits() -> None:
    config = LinkSpec("a", "b", rate=125_000, delay=0.02, loss=0.01, queue=9000).impairment()
    assert config.rate == 1_000_000.0
    assert (config.delay, config.loss, config.queue_bytes) == (0.02, 0.01, 9000)
    assert LinkSpec("a", "b").impairment().rate is None
    assert LinkSpec("a", "b").queue == DEFAULT_QUEUE_BYTES


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('a = "b"\nb = "c"\ndelay', 'a = "b"\nb = "z"\ndelay'), r"links\[1\] \(b-z\): unknown node 'z'"),
        (("delay = 0.03", "delay = -0.03"), r"links\[1\]: delay must be finite seconds >= 0"),
        (("rate = 125000", "rate = -5"), r"links\[0\]: rate must be bytes/s > 0"),
        (("loss = 0.02", "loss = 1.0"), r"links\[1\]: loss must be a probability in \[0, 1\)"),
        (("queue = 30000", "queue = 0"), r"links\[1\]: queue must be a positive number of bytes"),
        (("queue = 30000", "qeue = 30000"), r"links\[1\]: unknown key 'qeue'"),
        (('kind = "up"', 'kind = "explode"'), r"events\[0\]: event kind must be one of down, up"),
        (('kind = "up"', 'kind = "up"\nvalue = 3'), r"events\[0\]: a up event takes no value"),
        (("value = 0.1", "value = 1.5"), r"scenarios.lossy.events\[0\]: value must be a probability"),
        (('link = ["a", "b"]', 'link = ["a", "c"]'), r"events: up a-c at 7.5s: there is no link a-c"),
        (("at = 5", "at = -1"), r"events\[1\]: at must be finite seconds >= 0"),
        (('dst = "c"', 'dst = "a"'), r"flows\[0\]: flow a->a goes nowhere"),
        (('dst = "c"', 'dst = "q"'), r"flow a->q: unknown node 'q'"),
        (('"198.19.4.7"', '"10.0.0.1"'), r"node 'c': address 10.0.0.1 is outside 198.18.0.0/15"),
        (('"198.19.4.7"', '"198.18.0.1"'), r"nodes 'a' and 'c' share address 198.18.0.1"),
        (('nodes = ["a", "b"', 'nodes = ["a", "a"'), r"node 'a' is listed twice"),
        (('nodes = ["a"', 'nodes = ["a b"'), r"node id must be 1-32 characters"),
        (("duration = 20", "duration = 0"), r"duration must be > 0"),
        (("duration = 20", "durration = 20"), r"topology: unknown key 'durration'"),
    ],
)
def test_invalid_files_fail_with_the_file_and_entry_named(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    old, new = edit
    assert old in SMALL
    path = write(tmp_path, SMALL.replace(old, new, 1))
    with pytest.raises(TopologyError, match=message) as info:
        Topology.from_toml(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unreadable_and_malformed_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        Topology.from_toml(tmp_path / "missing.toml")
    with pytest.raises(TopologyError, match="not valid TOML"):
        Topology.from_toml(write(tmp_path, "nodes = [\n"))
    with pytest.raises(TopologyError, match="missing 'links'"):
        Topology.from_toml(write(tmp_path, 'nodes = ["a"]\n'))
    with pytest.raises(TopologyError, match="links must be an array"):
        Topology.from_toml(write(tmp_path, 'nodes = ["a"]\nlinks = 3\n'))
    with pytest.raises(TopologyError, match=r"links\[0\] must be a table"):
        Topology.from_toml(write(tmp_path, 'nodes = ["a"]\nlinks = [1]\n'))


def test_duplicate_and_self_links_are_rejected() -> None:
    with pytest.raises(TopologyError, match="link b-a is listed twice"):
        Topology(nodes=["a", "b"], links=[LinkSpec("a", "b"), LinkSpec("b", "a")])
    with pytest.raises(TopologyError, match="joins a node to itself"):
        LinkSpec("a", "a")


def test_ron8_file_is_valid_connected_and_its_events_hit_links_it_has() -> None:
    topo = Topology.from_toml(RON8)
    assert len(topo.nodes) == 8 and topo.is_connected()
    kinds = {e.kind for e in topo.events}
    assert {EventKind.DOWN, EventKind.UP, EventKind.LOSS} <= kinds
    assert {"outage", "loss", "quiet"} <= set(topo.scenario_names())
    # The outage must hit a link on the mit->ucsd shortest-delay path, or there is nothing
    # for the overlay to route around.
    graph = topo.graph()
    path = nx.shortest_path(graph, "mit", "ucsd", weight="delay")
    cut = next(e for e in topo.events if e.kind is EventKind.DOWN)
    assert {cut.a, cut.b} in [set(p) for p in itertools.pairwise(path)]
    # And removing it still leaves the pair connected.
    graph.remove_edge(cut.a, cut.b)
    assert nx.has_path(graph, "mit", "ucsd")
    # The loss episode hits the direct link of the flow routed for loss (fewest hops wins while
    # every link is clean), so that flow has a reason to move.
    lossy = next(e for e in topo.events if e.kind is EventKind.LOSS)
    flow = next(f for f in topo.flows if f.policy == "loss")
    assert {lossy.a, lossy.b} == {flow.src, flow.dst} and lossy.value == 0.10


def test_from_graph_takes_edge_attributes_over_defaults() -> None:
    graph = nx.Graph()
    graph.add_edge(1, 2, delay=0.05, weight=7)
    graph.add_edge(2, 3)
    graph.add_node(4)
    topo = Topology.from_graph(graph, name="g", delay=0.01, rate=1e6)
    assert topo.nodes == ("1", "2", "3", "4")
    assert topo.link("1", "2") == LinkSpec("1", "2", rate=1e6, delay=0.05)
    assert topo.link("3", "2") == LinkSpec("2", "3", rate=1e6, delay=0.01)
    assert not topo.is_connected()  # node 4 is isolated: allowed, and visible
    # Round trip: the graph of a topology rebuilds the same topology.
    assert Topology.from_graph(topo.graph(), name="g") == topo
    with pytest.raises(TopologyError, match=r"edge 1-2: loss must be a probability"):
        bad = nx.Graph()
        bad.add_edge(1, 2, loss=2.0)
        Topology.from_graph(bad)
    with pytest.raises(TopologyError, match="unknown key 'latency'"):
        Topology.from_graph(graph, latency=0.1)


def test_random_topologies_are_connected_seeded_and_of_the_asked_degree() -> None:
    first = Topology.random(50, degree=4, seed=3)
    assert first == Topology.random(50, degree=4, seed=3)
    assert first != Topology.random(50, degree=4, seed=4)
    for seed in range(20):
        topo = Topology.random(30, degree=2.5, seed=seed, loss=(0.0, 0.02))
        assert topo.is_connected(), seed
        assert len(topo.links) == round(30 * 2.5 / 2)
        assert all(0.0 <= link.loss <= 0.02 for link in topo.links)
        assert all(link.rate is not None and 250_000 <= link.rate <= 2_500_000 for link in topo.links)
    # The minimum degree still connects (a spanning tree: n-1 links).
    tree = Topology.random(10, degree=1, seed=0)
    assert tree.is_connected() and len(tree.links) == 9
    with pytest.raises(TopologyError, match="n >= 2"):
        Topology.random(1)
    with pytest.raises(TopologyError, match="degree must be in"):
        Topology.random(5, degree=5)


def test_addresses_fill_the_benchmark_range_without_network_or_broadcast_octets() -> None:
    assert default_address(0) == "198.18.0.1"
    assert default_address(253) == "198.18.0.254"
    assert default_address(254) == "198.18.1.1"
    assert default_address(MAX_NODES - 1) == "198.19.255.254"
    with pytest.raises(TopologyError):
        default_address(MAX_NODES)
    big = Topology.random(600, degree=3, seed=1)
    assert len(set(big.addresses.values())) == 600
    assert all(not a.endswith((".0", ".255")) for a in big.addresses.values())


def test_event_kinds_compare_equal_to_their_names() -> None:
    event = Event(3, "delay", "a", "b", 0.2)
    assert event.kind == "delay" and event.kind is EventKind.DELAY
    assert event.describe() == "delay a-b=0.2 at 3s"
    assert Event(1.0, EventKind.DOWN, "a", "b").kind == "down"
