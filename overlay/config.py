"""Overlay node configuration: :class:`NodeConfig` and its sections, loadable from TOML.

A configuration file (``examples/overlay_node.toml`` is a complete, commented sample)::

    node_id = "a"
    key_hex = "00112233445566778899aabbccddeeff"   # or: key = "a utf-8 passphrase"
    listen_port = 7000

    [[neighbours]]
    node_id = "b"
    address = "198.18.0.2"
    port = 7000

    [metrics]           # MetricSettings; every key optional
    loss_window = 200

    [routing]           # RoutingSettings; every key optional
    policy = "latency"

Every value is checked when the object is built, whether it comes from a file
(:meth:`NodeConfig.from_toml`), a parsed table (:meth:`NodeConfig.from_dict`) or Python code:
a wrong type, a value out of range or an unknown key raises :class:`ConfigError` naming the key
(``metrics.loss_alpha``, ``neighbours[2].port``) and, when loading a file, the file.
The shared key is never shown by ``repr``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = [
    "ConfigError",
    "MetricSettings",
    "Neighbour",
    "NodeConfig",
    "POLICY_NAMES",
    "RoutingSettings",
    "MIN_KEY_BYTES",
    "MIN_MAX_FRAME",
    "MAX_MAX_FRAME",
    "validate_node_id",
]

#: The routing policies a node knows (``overlay.routing.POLICIES`` names the same ones).
POLICY_NAMES: tuple[str, ...] = ("latency", "loss", "throughput", "composite")
#: HMAC-SHA256 keys shorter than 128 bits are refused: the key is the overlay's only secret.
MIN_KEY_BYTES = 16
#: ``max_frame`` bounds: room for an LSA of a few hundred links at the low end; the upper bound
#: keeps a peer's length prefix from making a reader buffer more than 16 MiB.
MIN_MAX_FRAME = 1024
MAX_MAX_FRAME = 1 << 24

# Node ids travel in every frame header (one length byte) and appear in logs and graphs: keep
# them short and printable.
_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, out of range or unknown.

    ``key`` is the dotted path of the offending key (``""`` for the whole document) and
    ``source`` the file it came from, if any; both appear in the message.
    """

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")

    def within(self, prefix: str | None = None, source: str | None = None) -> ConfigError:
        """The same error with ``prefix`` in front of its key and ``source`` attached."""
        key = self.key
        if prefix:
            key = f"{prefix}.{key}" if key and not key.startswith("[") else f"{prefix}{key}"
        return ConfigError(key, self.message, source if source is not None else self.source)


def validate_node_id(key: str, value: object) -> str:
    """``value`` if it is a valid node id, else :class:`ConfigError` naming ``key``."""
    if not isinstance(value, str) or not _NODE_ID_RE.fullmatch(value):
        raise ConfigError(
            key,
            "must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit, "
            f"got {value!r}",
        )
    return value


# -- attrs validators: each raises ConfigError naming the attribute ----------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_float(value: Any) -> Any:
    """TOML writes ``1`` for one second: accept ints where floats are meant (bools stay bools,
    so the validator can refuse them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _number(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    optional: bool = False,
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    bounds = []
    if gt is not None:
        bounds.append(f"> {gt:g}")
    if ge is not None:
        bounds.append(f">= {ge:g}")
    if lt is not None:
        bounds.append(f"< {lt:g}")
    if le is not None:
        bounds.append(f"<= {le:g}")
    wanted = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    if optional:
        wanted += " (or absent)"

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        ok = _is_number(value) and math.isfinite(value)
        if ok and gt is not None:
            ok = value > gt
        if ok and ge is not None:
            ok = value >= ge
        if ok and lt is not None:
            ok = value < lt
        if ok and le is not None:
            ok = value <= le
        if not ok:
            raise ConfigError(attribute.name, f"must be {wanted}, got {value!r}")

    return check


def _integer(lo: int, hi: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(attribute.name, f"must be an integer in {lo}..{hi}, got {value!r}")

    return check


def _node_id(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    validate_node_id(attribute.name, value)


def _ipv4(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    # The transport is tcpstack, an IPv4 stack: a dotted quad, no host names to resolve.
    try:
        if not isinstance(value, str):
            raise ValueError
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(
            attribute.name, f"must be an IPv4 address (dotted quad), got {value!r}"
        ) from None


_port = _integer(1, 65535)


def _weights(value: Any) -> Any:
    return tuple(_to_float(v) for v in value) if isinstance(value, list | tuple) else value


def _check_weights(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 3
        or not all(_is_number(v) and math.isfinite(v) and v >= 0 for v in value)
        or not any(v > 0 for v in value)
    ):
        raise ConfigError(
            attribute.name,
            "must be three non-negative numbers [latency, loss, throughput], not all zero, "
            f"got {value!r}",
        )


# -- value types -------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Neighbour:
    """A peer this node keeps a link to: its node id and where its overlay listener is."""

    node_id: str = attrs.field(validator=_node_id)
    address: str = attrs.field(validator=_ipv4)
    port: int = attrs.field(validator=_port)


@attrs.frozen(slots=True)
class MetricSettings:
    """How link quality is measured (see :mod:`overlay.metrics` for the formulas)."""

    #: s between ``stream.info()`` reads on a busy link.
    sample_interval: float = attrs.field(default=0.5, converter=_to_float, validator=_number(gt=0))
    #: s between probes on an idle link.
    probe_interval: float = attrs.field(default=1.0, converter=_to_float, validator=_number(gt=0))
    #: s without application traffic after which a link counts as idle (and gets probes).
    idle_after: float = attrs.field(default=1.0, converter=_to_float, validator=_number(gt=0))
    #: data segments covered by the loss sliding window.
    loss_window: int = attrs.field(default=200, validator=_integer(1, 1 << 24))
    #: s a loss sample stays in the window at most: after an episode, a link that goes quiet
    #: (probes only) forgets it in this time instead of over ``loss_window`` probe segments.
    loss_horizon: float = attrs.field(
        default=10.0, converter=_to_float, validator=_number(gt=0)
    )
    #: EWMA weight of a new loss sample.
    loss_alpha: float = attrs.field(
        default=0.25, converter=_to_float, validator=_number(gt=0, le=1)
    )
    #: loss is never reported below this (zero loss is never proven, and -log(1-p) needs p > 0).
    loss_floor: float = attrs.field(
        default=0.001, converter=_to_float, validator=_number(ge=0, lt=1)
    )
    #: s without hearing from the peer (frame, probe reply, ACK) after which the link is down.
    down_after: float = attrs.field(default=3.0, converter=_to_float, validator=_number(gt=0))

    def __attrs_post_init__(self) -> None:
        # A link probed less often than its down timer would flap on an idle but healthy path.
        if self.probe_interval >= self.down_after:
            raise ConfigError(
                "probe_interval",
                f"must be below down_after ({self.down_after:g} s), got {self.probe_interval:g}",
            )


@attrs.frozen(slots=True)
class RoutingSettings:
    """Path selection and link-state flooding."""

    #: default policy: latency | loss | throughput | composite.
    policy: str = attrs.field(default="latency")
    #: hysteresis: a new path must be better by this fraction...
    margin: float = attrs.field(default=0.10, converter=_to_float, validator=_number(ge=0, lt=1))
    #: ...continuously for this long (s); the switch is immediate if the current path is down.
    hold_time: float = attrs.field(default=2.0, converter=_to_float, validator=_number(ge=0))
    #: alternate paths kept per destination besides the best.
    alternates: int = attrs.field(default=2, validator=_integer(0, 64))
    #: minimum s between originated LSAs (rate limit).
    lsa_interval: float = attrs.field(default=1.0, converter=_to_float, validator=_number(gt=0))
    #: an unchanged LSA is re-originated this often (s). The refresh is what an idle overlay's
    #: control traffic is made of besides probes: every node forwards every origin's LSA to
    #: about (degree - 1) neighbours per refresh, so per node about
    #: ``nodes * (degree - 1) * LSA bytes / lsa_refresh``; with 50 nodes of degree ~4.5 that is
    #: about 0.6 kB/s at 60 s, against the 2 kB/s bar (tests/overlay/test_scale.py measures
    #: it). Nothing depends on a short refresh: flooding runs over TCP and a link that comes up
    #: is synchronised with the whole database, so refresh only ages out vanished origins.
    lsa_refresh: float = attrs.field(default=60.0, converter=_to_float, validator=_number(gt=0))
    #: LSAs not refreshed for this long (s) are purged (four refreshes: a few late or lost
    #: refreshes never purge a live origin).
    lsa_max_age: float = attrs.field(default=240.0, converter=_to_float, validator=_number(gt=0))
    #: re-originate early only when a link metric moved significantly (or up/down); see
    #: "Significant change" in :mod:`overlay.linkstate` (relative, with absolute floors).
    change_threshold: float = attrs.field(
        default=0.10, converter=_to_float, validator=_number(ge=0)
    )
    #: composite policy weights of (latency, loss, throughput).
    composite_weights: tuple[float, float, float] = attrs.field(
        default=(1.0, 1.0, 1.0), converter=_weights, validator=_check_weights
    )

    @policy.validator
    def _check_policy(self, attribute: attrs.Attribute[str], value: Any) -> None:
        if value not in POLICY_NAMES:
            raise ConfigError(
                attribute.name, f"must be one of {', '.join(POLICY_NAMES)}, got {value!r}"
            )

    def __attrs_post_init__(self) -> None:
        if self.lsa_refresh < self.lsa_interval:
            raise ConfigError(
                "lsa_refresh",
                f"must be >= lsa_interval ({self.lsa_interval:g} s), got {self.lsa_refresh:g}",
            )
        # Otherwise a live origin's LSA would be purged before its refresh arrives.
        if self.lsa_max_age <= self.lsa_refresh:
            raise ConfigError(
                "lsa_max_age",
                f"must exceed lsa_refresh ({self.lsa_refresh:g} s), got {self.lsa_max_age:g}",
            )


def _check_key(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bytes):
        raise ConfigError(attribute.name, f"must be bytes, got {type(value).__name__}")
    if len(value) < MIN_KEY_BYTES:
        raise ConfigError(
            attribute.name, f"must be at least {MIN_KEY_BYTES} bytes, got {len(value)}"
        )


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _check_neighbours(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(n, Neighbour) for n in value):
        raise ConfigError(attribute.name, "must be a tuple of Neighbour")
    seen: set[str] = set()
    for i, n in enumerate(value):
        if n.node_id in seen:
            raise ConfigError(f"{attribute.name}[{i}].node_id", f"duplicate {n.node_id!r}")
        seen.add(n.node_id)


def _check_instance(cls: type) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, cls):
            raise ConfigError(attribute.name, f"must be a {cls.__name__}, got {value!r}")

    return check


@attrs.frozen(slots=True)
class NodeConfig:
    """Everything one overlay node needs: who it is, its key, its peers and its settings."""

    node_id: str = attrs.field(validator=_node_id)
    key: bytes = attrs.field(repr=False, validator=_check_key)
    listen_port: int = attrs.field(default=7000, validator=_port)
    neighbours: tuple[Neighbour, ...] = attrs.field(
        default=(), converter=_as_tuple, validator=_check_neighbours
    )
    metrics: MetricSettings = attrs.field(
        factory=MetricSettings, validator=_check_instance(MetricSettings)
    )
    routing: RoutingSettings = attrs.field(
        factory=RoutingSettings, validator=_check_instance(RoutingSettings)
    )
    #: jittered exponential backoff bounds (s) for re-dialling a lost peer.
    reconnect_min: float = attrs.field(default=0.2, converter=_to_float, validator=_number(gt=0))
    reconnect_max: float = attrs.field(default=10.0, converter=_to_float, validator=_number(gt=0))
    #: largest frame, length prefix included, this node sends or accepts.
    max_frame: int = attrs.field(default=65536, validator=_integer(MIN_MAX_FRAME, MAX_MAX_FRAME))
    #: TCP user timeout (RFC 9293 3.8.3) for peer links, s; None keeps the stack's default.
    user_timeout: float | None = attrs.field(
        default=None, converter=_to_float, validator=_number(gt=0, optional=True)
    )

    def __attrs_post_init__(self) -> None:
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError(
                "reconnect_max",
                f"must be >= reconnect_min ({self.reconnect_min:g} s), got {self.reconnect_max:g}",
            )
        for i, n in enumerate(self.neighbours):
            if n.node_id == self.node_id:
                raise ConfigError(f"neighbours[{i}].node_id", "is this node's own id")

    def neighbour(self, node_id: str) -> Neighbour | None:
        """The configured neighbour with id ``node_id``, if any."""
        for n in self.neighbours:
            if n.node_id == node_id:
                return n
        return None

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, source: str | os.PathLike[str]) -> NodeConfig:
        """Load a TOML file (see the module docstring); errors name the file and the key."""
        path = os.fspath(source)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError("", f"cannot read: {exc.strerror or exc}", path) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"not valid TOML: {exc}", path) from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise exc.within(source=path) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeConfig:
        """Build from a parsed TOML document. The key is ``key_hex`` (hex digits) or ``key``
        (a UTF-8 string), exactly one of them."""
        if not isinstance(data, Mapping):
            raise ConfigError("", f"configuration must be a table, got {type(data).__name__}")
        _reject_unknown("", data, _TOP_KEYS)
        kwargs: dict[str, Any] = {}
        for name in _TOP_SCALARS:
            if name in data:
                kwargs[name] = data[name]
        if "node_id" not in data:
            raise ConfigError("node_id", "is required")
        kwargs["key"] = _key_from(data)
        if "neighbours" in data:
            kwargs["neighbours"] = _neighbours_from(data["neighbours"])
        if "metrics" in data:
            kwargs["metrics"] = _section(MetricSettings, "metrics", data["metrics"])
        if "routing" in data:
            kwargs["routing"] = _section(RoutingSettings, "routing", data["routing"])
        return cls(**kwargs)


_TOP_SCALARS = (
    "node_id",
    "listen_port",
    "reconnect_min",
    "reconnect_max",
    "max_frame",
    "user_timeout",
)
_TOP_KEYS = frozenset(_TOP_SCALARS) | {"key", "key_hex", "neighbours", "metrics", "routing"}


def _reject_unknown(prefix: str, table: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        others = f" (also: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        raise ConfigError(key, f"unknown key{others}; known: {', '.join(sorted(known))}")


def _key_from(data: Mapping[str, Any]) -> bytes:
    if "key" in data and "key_hex" in data:
        raise ConfigError("key_hex", "give either key or key_hex, not both")
    if "key_hex" in data:
        value = data["key_hex"]
        if not isinstance(value, str):
            raise ConfigError("key_hex", f"must be a string of hex digits, got {value!r}")
        try:
            key = bytes.fromhex(value)
        except ValueError:
            raise ConfigError("key_hex", "must be hex digits (an even number of them)") from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                "key_hex",
                f"must be at least {MIN_KEY_BYTES} bytes ({2 * MIN_KEY_BYTES} hex "
                f"digits), got {len(key)}",
            )
        return key
    if "key" in data:
        value = data["key"]
        if isinstance(value, bytes):  # from Python code rather than TOML
            key = value
        elif isinstance(value, str):
            key = value.encode("utf-8")
        else:
            raise ConfigError("key", f"must be a string, got {type(value).__name__}")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                "key", f"must be at least {MIN_KEY_BYTES} bytes of UTF-8, got {len(key)}"
            )
        return key
    raise ConfigError("key", 'is required (key = "..." or key_hex = "...")')


_NEIGHBOUR_KEYS = frozenset({"node_id", "address", "port"})


def _neighbours_from(value: Any) -> tuple[Neighbour, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError("neighbours", "must be an array of tables ([[neighbours]])")
    out = []
    for i, entry in enumerate(value):
        prefix = f"neighbours[{i}]"
        if isinstance(entry, Neighbour):  # from Python code: already validated
            out.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(prefix, f"must be a table, got {entry!r}")
        _reject_unknown(prefix, entry, _NEIGHBOUR_KEYS)
        for name in ("node_id", "address", "port"):
            if name not in entry:
                raise ConfigError(f"{prefix}.{name}", "is required")
        try:
            out.append(Neighbour(**entry))
        except ConfigError as exc:
            raise exc.within(prefix) from None
    return tuple(out)


def _section(cls: type[Any], name: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(name, f"must be a table ([{name}]), got {value!r}")
    _reject_unknown(name, value, frozenset(f.name for f in attrs.fields(cls)))
    try:
        return cls(**value)
    except ConfigError as exc:
        raise exc.within(name) from None
