"""Topologies: nodes, links with rate/delay/loss/queue, scheduled events and traffic flows.

A :class:`Topology` is a validated value: every link names two known nodes, every event names an
existing link, every flow two distinct known nodes, and every number is in range, so a back end
never meets a bad one. Build it from a TOML file (:meth:`Topology.from_toml`), from a networkx
graph (:meth:`Topology.from_graph`) or at random (:meth:`Topology.random`, seeded and always
connected). Units: rate in bytes/s, delay in seconds one way, loss a probability per packet per
direction, queue the bottleneck buffer in bytes. A link is symmetric: both directions get the
same impairment.

TOML layout (every key optional except ``nodes`` and ``links``; unknown keys are errors)::

    name = "ron8"
    duration = 40.0                       # seconds a `testbed run` lasts by default
    nodes = ["a", "b", "c"]               # or [[nodes]] tables: id = "a", address = "198.18.0.9"
    [defaults]                            # link fields used where a link leaves them out
    rate = 1_250_000                      # 10 Mbit/s
    delay = 0.010
    [[links]]
    a = "a"
    b = "b"
    delay = 0.025
    [[events]]                            # the default scenario
    at = 12.0
    kind = "down"                         # down | up | loss | delay
    a = "a"
    b = "b"
    [[flows]]                             # application traffic during a run
    src = "a"
    dst = "c"
    interval = 0.05
    [scenarios.quiet]                     # alternative event lists, chosen with --scenario
    events = []
    [overlay]                             # passed to overlay.NodeConfig.from_dict for every node
    routing = { hold_time = 2.0 }
"""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import random
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import networkx as nx

from tcpstack.links.impairment import DEFAULT_QUEUE_BYTES, ImpairmentConfig

__all__ = [
    "ADDRESS_NETWORK",
    "Event",
    "EventKind",
    "Flow",
    "LinkSpec",
    "Topology",
    "TopologyError",
    "default_address",
]

#: RFC 2544's benchmarking range: the addresses the testbeds give their nodes.
ADDRESS_NETWORK: Final = ipaddress.IPv4Network("198.18.0.0/15")
#: Hosts per /24 used for automatic addresses (x.y.z.1 .. x.y.z.254: no .0, no broadcast).
_PER_24: Final = 254
MAX_NODES: Final = (ADDRESS_NETWORK.num_addresses // 256) * _PER_24
_NODE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


class TopologyError(ValueError):
    """A topology is invalid; the message names the file and the offending entry."""


def default_address(index: int) -> str:
    """The address of the node at ``index``: 198.18.0.1, ..., 198.18.0.254, 198.18.1.1, ..."""
    if not 0 <= index < MAX_NODES:
        raise TopologyError(f"node index {index} outside 0..{MAX_NODES - 1}")
    offset = (index // _PER_24) * 256 + index % _PER_24 + 1
    return str(ADDRESS_NETWORK.network_address + offset)


def _node_id(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _NODE_ID.fullmatch(value):
        raise TopologyError(
            f"{attribute.name}: node id must be 1-32 characters [A-Za-z0-9_.-] starting with a "
            f"letter or digit, got {value!r}"
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (_number(value) and value >= 0.0):
        raise TopologyError(f"{attribute.name} must be finite seconds >= 0, got {value!r}")


def _loss(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    # 1.0 would be an outage, which is what a "down" event is for.
    if not (_number(value) and 0.0 <= value < 1.0):
        raise TopologyError(f"{attribute.name} must be a probability in [0, 1), got {value!r}")


def _rate(_inst: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (_number(value) and value > 0.0):
        raise TopologyError(f"{attribute.name} must be bytes/s > 0 or absent, got {value!r}")


def _queue(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise TopologyError(f"{attribute.name} must be a positive number of bytes, got {value!r}")


def _float(value: object) -> object:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


@attrs.frozen(slots=True)
class LinkSpec:
    """One bidirectional link between nodes ``a`` and ``b``; both directions impaired alike."""

    a: str = attrs.field(validator=_node_id)
    b: str = attrs.field(validator=_node_id)
    rate: float | None = attrs.field(default=None, converter=_float, validator=_rate)
    delay: float = attrs.field(default=0.0, converter=_float, validator=_seconds)
    loss: float = attrs.field(default=0.0, converter=_float, validator=_loss)
    queue: int = attrs.field(default=DEFAULT_QUEUE_BYTES, validator=_queue)

    def __attrs_post_init__(self) -> None:
        if self.a == self.b:
            raise TopologyError(f"link {self.a}-{self.b} joins a node to itself")

    @property
    def key(self) -> frozenset[str]:
        return frozenset((self.a, self.b))

    def joins(self, a: str, b: str) -> bool:
        return {a, b} == {self.a, self.b}

    def impairment(self) -> ImpairmentConfig:
        """The per-direction impairment of this link (ImpairmentConfig counts rate in bits/s)."""
        return ImpairmentConfig(
            delay=self.delay,
            loss=self.loss,
            rate=None if self.rate is None else self.rate * 8.0,
            queue_bytes=self.queue,
        )


class EventKind(enum.StrEnum):
    """What an event does to a link; compares equal to its string ("down" == EventKind.DOWN)."""

    DOWN = "down"
    UP = "up"
    LOSS = "loss"
    DELAY = "delay"


def _kind(value: object) -> object:
    if isinstance(value, EventKind):
        return value
    if isinstance(value, str) and value in EventKind.__members__.values():
        return EventKind(value)
    kinds = ", ".join(k.value for k in EventKind)
    raise TopologyError(f"event kind must be one of {kinds}, got {value!r}")


@attrs.frozen(slots=True)
class Event:
    """At ``at`` seconds after the start, change link ``a``-``b`` (both directions).

    ``down``/``up`` cut and restore it (no value); ``loss`` sets its loss probability and
    ``delay`` its one-way delay to ``value``.
    """

    at: float = attrs.field(converter=_float, validator=_seconds)
    kind: EventKind = attrs.field(converter=_kind)
    a: str = attrs.field(validator=_node_id)
    b: str = attrs.field(validator=_node_id)
    value: float | None = attrs.field(default=None, converter=_float)

    def __attrs_post_init__(self) -> None:
        if self.kind in (EventKind.DOWN, EventKind.UP):
            if self.value is not None:
                raise TopologyError(f"a {self.kind.value} event takes no value, got {self.value!r}")
        elif self.kind is EventKind.LOSS:
            _loss(None, attrs.fields(Event).value, self.value)  # type: ignore[arg-type]
        else:
            _seconds(None, attrs.fields(Event).value, self.value)  # type: ignore[arg-type]

    def describe(self) -> str:
        tail = "" if self.value is None else f"={self.value:g}"
        return f"{self.kind.value} {self.a}-{self.b}{tail} at {self.at:g}s"


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (_number(value) and value > 0):
        raise TopologyError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(slots=True)
class Flow:
    """Application traffic during a run: ``size``-byte messages from ``src`` to ``dst`` every
    ``interval`` seconds under routing ``policy``."""

    src: str = attrs.field(validator=_node_id)
    dst: str = attrs.field(validator=_node_id)
    interval: float = attrs.field(default=0.1, converter=_float, validator=_positive)
    size: int = attrs.field(default=256, validator=_positive)
    policy: str = attrs.field(default="latency", validator=attrs.validators.instance_of(str))
    reliable: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        if self.src == self.dst:
            raise TopologyError(f"flow {self.src}->{self.dst} goes nowhere")
        if not isinstance(self.size, int) or self.size > 60_000:
            raise TopologyError(f"flow size must be an int of at most 60000 bytes, got {self.size!r}")


def _strs(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _links(value: Iterable[LinkSpec]) -> tuple[LinkSpec, ...]:
    return tuple(value)


def _flows(value: Iterable[Flow]) -> tuple[Flow, ...]:
    return tuple(value)


def _events(value: Iterable[Event]) -> tuple[Event, ...]:
    return tuple(sorted(value, key=lambda e: e.at))  # sorted is stable: same-time order kept


def _scenarios(value: Mapping[str, Iterable[Event]]) -> tuple[tuple[str, tuple[Event, ...]], ...]:
    return tuple((name, _events(events)) for name, events in dict(value).items())


@attrs.frozen(slots=True)
class Topology:
    """Nodes, links, the default scenario's events, traffic flows and named alternative scenarios.

    ``addresses`` maps each node to its IPv4 address (defaults: :func:`default_address` of its
    index); ``overlay`` is a table of overlay settings for every node (see the module docstring).
    """

    nodes: tuple[str, ...] = attrs.field(converter=_strs)
    links: tuple[LinkSpec, ...] = attrs.field(converter=_links)
    events: tuple[Event, ...] = attrs.field(default=(), converter=_events)
    name: str = "topology"
    flows: tuple[Flow, ...] = attrs.field(default=(), converter=_flows)
    scenarios: tuple[tuple[str, tuple[Event, ...]], ...] = attrs.field(default=(), converter=_scenarios)
    duration: float | None = attrs.field(default=None, converter=attrs.converters.optional(_float))
    addresses: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    overlay: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    def __attrs_post_init__(self) -> None:
        if not self.nodes:
            raise TopologyError("a topology needs at least one node")
        if len(self.nodes) > MAX_NODES:
            raise TopologyError(f"at most {MAX_NODES} nodes fit in {ADDRESS_NETWORK}")
        seen: set[str] = set()
        for node in self.nodes:
            _node_id(None, attrs.fields(LinkSpec).a, node)
            if node in seen:
                raise TopologyError(f"node {node!r} is listed twice")
            seen.add(node)
        keys: set[frozenset[str]] = set()
        for i, link in enumerate(self.links):
            for end in (link.a, link.b):
                if end not in seen:
                    raise TopologyError(f"links[{i}] ({link.a}-{link.b}): unknown node {end!r}")
            if link.key in keys:
                raise TopologyError(f"links[{i}]: link {link.a}-{link.b} is listed twice")
            keys.add(link.key)
        for label, events in (("events", self.events), *self.scenarios):
            for event in events:
                if frozenset((event.a, event.b)) not in keys:
                    raise TopologyError(f"{label}: {event.describe()}: there is no link {event.a}-{event.b}")
        for flow in self.flows:
            for end in (flow.src, flow.dst):
                if end not in seen:
                    raise TopologyError(f"flow {flow.src}->{flow.dst}: unknown node {end!r}")
        if self.duration is not None:
            _positive(None, attrs.fields(Topology).duration, self.duration)
        self._check_addresses(seen)

    def _check_addresses(self, nodes: set[str]) -> None:
        addresses = dict(self.addresses)
        unknown = set(addresses) - nodes
        if unknown:
            raise TopologyError(f"address given for unknown node {sorted(unknown)[0]!r}")
        used: dict[str, str] = {}
        for index, node in enumerate(self.nodes):
            address = addresses.get(node)
            if address is None:
                address = default_address(index)
            else:
                try:
                    parsed = ipaddress.IPv4Address(address)
                except ValueError:
                    raise TopologyError(f"node {node!r}: not an IPv4 address: {address!r}") from None
                if parsed not in ADDRESS_NETWORK:
                    raise TopologyError(f"node {node!r}: address {address} is outside {ADDRESS_NETWORK}")
                address = str(parsed)
            if address in used:
                raise TopologyError(f"nodes {used[address]!r} and {node!r} share address {address}")
            used[address] = node
            addresses[node] = address
        object.__setattr__(self, "addresses", addresses)

    # ------------------------------------------------------------------ queries

    def address(self, node: str) -> str:
        try:
            return self.addresses[node]
        except KeyError:
            raise KeyError(f"no node {node!r} in topology {self.name!r}") from None

    def link(self, a: str, b: str) -> LinkSpec:
        for link in self.links:
            if link.joins(a, b):
                return link
        raise KeyError(f"no link {a}-{b} in topology {self.name!r}")

    def neighbours(self, node: str) -> tuple[str, ...]:
        self.address(node)  # KeyError for an unknown node
        return tuple(
            link.b if link.a == node else link.a for link in self.links if node in (link.a, link.b)
        )

    def graph(self) -> nx.Graph:
        """The topology as an undirected networkx graph; link fields are edge attributes."""
        graph = nx.Graph(name=self.name)
        graph.add_nodes_from(self.nodes)
        for link in self.links:
            graph.add_edge(link.a, link.b, rate=link.rate, delay=link.delay, loss=link.loss, queue=link.queue)
        return graph

    def is_connected(self) -> bool:
        return bool(nx.is_connected(self.graph()))

    def scenario_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.scenarios)

    def with_scenario(self, name: str) -> Topology:
        """This topology with scenario ``name``'s events as its events ("default" keeps them)."""
        if name == "default":
            return self
        for candidate, events in self.scenarios:
            if candidate == name:
                return attrs.evolve(self, events=events)
        known = ", ".join(("default", *self.scenario_names()))
        raise TopologyError(f"topology {self.name!r} has no scenario {name!r} (known: {known})")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Topology:
        """Read a topology file; a :class:`TopologyError` names the file and the bad entry."""
        source = os.fspath(path)
        try:
            with open(source, "rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise TopologyError(f"{source}: cannot read: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError(f"{source}: not valid TOML: {exc}") from exc
        data.setdefault("name", os.path.splitext(os.path.basename(source))[0])
        try:
            return cls.from_dict(data)
        except TopologyError as exc:
            raise TopologyError(f"{source}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topology:
        """Build from a parsed TOML document (see the module docstring for the layout)."""
        _known_keys(
            "topology", data,
            {"name", "duration", "nodes", "links", "defaults", "events", "flows", "scenarios", "overlay"},
        )
        for required in ("nodes", "links"):
            if required not in data:
                raise TopologyError(f"missing '{required}'")
        nodes, addresses = _parse_nodes(data["nodes"])
        defaults = _table(data.get("defaults", {}), "defaults")
        _known_keys("defaults", defaults, {"rate", "delay", "loss", "queue"})
        links = [
            _build(LinkSpec, f"links[{i}]", {**defaults, **_table(entry, f"links[{i}]")})
            for i, entry in enumerate(_array(data["links"], "links"))
        ]
        events = _parse_events(data.get("events", []), "events")
        flows = [
            _build(Flow, f"flows[{i}]", _table(entry, f"flows[{i}]"))
            for i, entry in enumerate(_array(data.get("flows", []), "flows"))
        ]
        scenarios: dict[str, list[Event]] = {}
        for name, table in _table(data.get("scenarios", {}), "scenarios").items():
            label = f"scenarios.{name}"
            if name == "default":
                raise TopologyError(f"{label}: 'default' is the name of the top-level events")
            _known_keys(label, _table(table, label), {"events"})
            scenarios[name] = _parse_events(table.get("events", []), f"{label}.events")
        name = data.get("name", "topology")
        if not isinstance(name, str):
            raise TopologyError(f"name must be a string, got {name!r}")
        try:
            return cls(
                nodes=nodes, links=links, events=events, name=name, flows=flows,
                scenarios=scenarios, duration=data.get("duration"), addresses=addresses,
                overlay=_table(data.get("overlay", {}), "overlay"),
            )
        except (TypeError, ValueError) as exc:
            raise TopologyError(str(exc)) from None

    @classmethod
    def from_graph(cls, graph: nx.Graph, *, name: str | None = None, **defaults: Any) -> Topology:
        """Build from a networkx graph: nodes become node ids (``str(node)``), edges links.

        Edge attributes ``rate``, ``delay``, ``loss``, ``queue`` override ``defaults``; other
        attributes (``weight``, say) are ignored. A directed graph is read as undirected.
        """
        _known_keys("defaults", defaults, {"rate", "delay", "loss", "queue"})
        fields = ("rate", "delay", "loss", "queue")
        links: list[LinkSpec] = []
        for a, b, attributes in graph.edges(data=True):
            values = {**defaults, **{k: v for k, v in attributes.items() if k in fields}}
            spec = _build(LinkSpec, f"edge {a}-{b}", {"a": str(a), "b": str(b), **values})
            if spec.key not in {link.key for link in links}:
                links.append(spec)
        title = name if name is not None else str(graph.graph.get("name") or "graph")
        return cls(nodes=[str(n) for n in graph.nodes], links=links, name=title)

    @classmethod
    def random(
        cls,
        n: int,
        degree: float = 3.0,
        seed: int = 0,
        *,
        rate: tuple[float, float] | None = (250_000.0, 2_500_000.0),
        delay: tuple[float, float] = (0.002, 0.050),
        loss: tuple[float, float] = (0.0, 0.0),
        queue: int = DEFAULT_QUEUE_BYTES,
        prefix: str = "n",
    ) -> Topology:
        """A connected random partial mesh of ``n`` nodes with mean degree about ``degree``.

        A random spanning tree (each node joins a random earlier one) makes it connected; random
        extra links bring it up to ``round(n * degree / 2)`` links. Each link draws its rate,
        delay and loss uniformly from the given ranges (``rate=None``: unlimited). The same
        ``seed`` gives the same topology on every machine.
        """
        if not isinstance(n, int) or n < 2:
            raise TopologyError(f"a random topology needs n >= 2 nodes, got {n!r}")
        if not (_number(degree) and 1.0 <= degree <= n - 1):
            raise TopologyError(f"degree must be in [1, n-1] = [1, {n - 1}], got {degree!r}")
        rng = random.Random(f"topology/{seed}")
        nodes = [f"{prefix}{i}" for i in range(n)]
        order = nodes[:]
        rng.shuffle(order)
        edges: set[tuple[int, int]] = set()
        index = {node: i for i, node in enumerate(nodes)}
        for position in range(1, n):
            a, b = index[order[position]], index[order[rng.randrange(position)]]
            edges.add((min(a, b), max(a, b)))
        target = min(round(n * degree / 2), n * (n - 1) // 2)
        while len(edges) < target:
            a, b = rng.sample(range(n), 2)
            edges.add((min(a, b), max(a, b)))
        links = [
            LinkSpec(
                nodes[a], nodes[b],
                rate=None if rate is None else rng.uniform(*rate),
                delay=rng.uniform(*delay),
                loss=rng.uniform(*loss),
                queue=queue,
            )
            for a, b in sorted(edges)
        ]
        return cls(nodes=nodes, links=links, name=f"random-{n}-d{degree:g}-s{seed}")


# ---------------------------------------------------------------------- TOML helpers


def _table(value: object, label: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TopologyError(f"{label} must be a table, got {type(value).__name__}")
    return dict(value)


def _array(value: object, label: str) -> list[Any]:
    if not isinstance(value, list):
        raise TopologyError(f"{label} must be an array, got {type(value).__name__}")
    return value


def _known_keys(label: str, table: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise TopologyError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _build(cls: type[Any], label: str, values: Mapping[str, Any]) -> Any:
    _known_keys(label, values, {f.name for f in attrs.fields(cls)})
    try:
        return cls(**values)
    except TopologyError as exc:
        raise TopologyError(f"{label}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"{label}: {exc}") from None


def _parse_nodes(value: object) -> tuple[list[str], dict[str, str]]:
    nodes: list[str] = []
    addresses: dict[str, str] = {}
    for i, entry in enumerate(_array(value, "nodes")):
        if isinstance(entry, str):
            nodes.append(entry)
            continue
        table = _table(entry, f"nodes[{i}]")
        _known_keys(f"nodes[{i}]", table, {"id", "address"})
        if not isinstance(table.get("id"), str):
            raise TopologyError(f"nodes[{i}]: 'id' must be a string")
        nodes.append(table["id"])
        if "address" in table:
            if not isinstance(table["address"], str):
                raise TopologyError(f"nodes[{i}]: 'address' must be a string")
            addresses[table["id"]] = table["address"]
    return nodes, addresses


def _parse_events(value: object, label: str) -> list[Event]:
    events = []
    for i, entry in enumerate(_array(value, label)):
        table = _table(entry, f"{label}[{i}]")
        if "link" in table:  # link = ["a", "b"] is accepted as a shorthand for a/b
            pair = table.pop("link")
            if not (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2):
                raise TopologyError(f"{label}[{i}]: link must be a pair of node ids, got {pair!r}")
            table["a"], table["b"] = pair
        events.append(_build(Event, f"{label}[{i}]", table))
    return events
