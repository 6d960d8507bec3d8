"""The AST of a packetdrill script: frozen, slotted attrs value types, compared by value.

:func:`tcpstack.conformance.script.parse_script` builds them; the conformance runner consumes them.
A :class:`Script` holds options and :class:`Event` s; each event has a :class:`TimeSpec` and one
payload (:class:`SyscallEvent`, :class:`PacketEvent`, :class:`IcmpEvent`, :class:`ShellEvent`,
:class:`CodeEvent`). System call arguments are small expression trees (:data:`Expr`); TCP options
on packet lines are :data:`PacketOption` values, convertible to the wire layer's
:class:`~tcpstack.wire.segment.TcpOptions`. ``str()`` of an expression or option prints it back in
script syntax.
"""

from __future__ import annotations

import enum
from collections import Counter

import attrs

from tcpstack.wire.segment import OptionKind, SackBlock, TcpFlags, TcpOptions, Timestamps

__all__ = [
    "Script",
    "Event",
    "TimeKind",
    "TimeSpec",
    "SyscallEvent",
    "PacketEvent",
    "IcmpEvent",
    "QuotedSegment",
    "ShellEvent",
    "CodeEvent",
    "Payload",
    "Expr",
    "IntExpr",
    "SymbolExpr",
    "StringExpr",
    "EllipsisExpr",
    "ListExpr",
    "StructExpr",
    "StructField",
    "BinaryExpr",
    "CallExpr",
    "PacketOption",
    "NopOption",
    "EolOption",
    "MssOption",
    "WindowScaleOption",
    "SackPermittedOption",
    "SackOption",
    "TimestampOption",
    "FastOpenOption",
    "UnknownOption",
    "option_size",
]


# -- time ---------------------------------------------------------------------------------------


class TimeKind(enum.Enum):
    ABSOLUTE = "absolute"  # seconds from the start of the script
    RELATIVE = "relative"  # seconds after the previous event
    ANY = "any"  # '*': whenever it happens
    NONE = "none"  # an untimed init/cleanup shell command


@attrs.frozen(slots=True)
class TimeSpec:
    """When an event happens; ``end`` equals ``start`` unless ``is_range`` (``a~b``).

    ``blocking_end`` is the time a blocking system call returns (``+0...0.2``), on the same base
    as ``start``. Times are seconds; ``start``/``end`` are None for ``*`` and untimed commands.
    """

    kind: TimeKind
    start: float | None = None
    end: float | None = None
    is_range: bool = False
    blocking_end: float | None = None


# -- system call arguments ----------------------------------------------------------------------


@attrs.frozen(slots=True)
class IntExpr:
    value: int
    hex: bool = False

    def __str__(self) -> str:
        return hex(self.value) if self.hex else str(self.value)


@attrs.frozen(slots=True)
class SymbolExpr:
    """A symbolic constant (``SOL_SOCKET``, ``O_NONBLOCK``, ``ECONNREFUSED``)."""

    name: str

    def __str__(self) -> str:
        return self.name


@attrs.frozen(slots=True)
class StringExpr:
    value: str

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'


@attrs.frozen(slots=True)
class EllipsisExpr:
    """``...``: a value the script does not check (a buffer, an address)."""

    def __str__(self) -> str:
        return "..."


@attrs.frozen(slots=True)
class ListExpr:
    """``[1]``: a pointer to a value, or an array (``[{fd=3, events=POLLIN}]``)."""

    items: tuple[Expr, ...]

    def __str__(self) -> str:
        return "[" + ", ".join(map(str, self.items)) + "]"


@attrs.frozen(slots=True)
class StructField:
    """``name=value``, ``name(index)=value`` (``msg_iov(1)=[...]``) or a positional ``value``."""

    name: str | None
    value: Expr
    index: Expr | None = None

    def __str__(self) -> str:
        if self.name is None:
            return str(self.value)
        index = "" if self.index is None else f"({self.index})"
        return f"{self.name}{index}={self.value}"


@attrs.frozen(slots=True)
class StructExpr:
    """``{l_onoff=1, l_linger=0}``: a struct (linger, sockaddr, iovec, msghdr, pollfd ...)."""

    fields: tuple[StructField, ...]

    def field(self, name: str) -> Expr | None:
        return next((f.value for f in self.fields if f.name == name), None)

    def __str__(self) -> str:
        return "{" + ", ".join(map(str, self.fields)) + "}"


@attrs.frozen(slots=True)
class BinaryExpr:
    """``O_RDWR|O_NONBLOCK`` (op ``|``), or alternatives ``a || b`` (op ``||``)."""

    op: str
    left: Expr
    right: Expr

    def __str__(self) -> str:
        sep = self.op if self.op == "|" else f" {self.op} "
        return f"{self.left}{sep}{self.right}"


@attrs.frozen(slots=True)
class CallExpr:
    """``htons(8080)``, ``inet_addr("192.0.2.1")``."""

    name: str
    args: tuple[Expr, ...]

    def __str__(self) -> str:
        return f"{self.name}(" + ", ".join(map(str, self.args)) + ")"


Expr = (
    IntExpr | SymbolExpr | StringExpr | EllipsisExpr | ListExpr | StructExpr | BinaryExpr | CallExpr
)


# -- TCP options on packet lines ----------------------------------------------------------------


@attrs.frozen(slots=True)
class NopOption:
    kind = OptionKind.NOP.value

    def __str__(self) -> str:
        return "nop"


@attrs.frozen(slots=True)
class EolOption:
    kind = OptionKind.EOL.value

    def __str__(self) -> str:
        return "eol"


@attrs.frozen(slots=True)
class MssOption:
    value: int
    kind = OptionKind.MSS.value

    def __str__(self) -> str:
        return f"mss {self.value}"


@attrs.frozen(slots=True)
class WindowScaleOption:
    shift: int
    kind = OptionKind.WSCALE.value

    def __str__(self) -> str:
        return f"wscale {self.shift}"


@attrs.frozen(slots=True)
class SackPermittedOption:
    kind = OptionKind.SACK_PERMITTED.value

    def __str__(self) -> str:
        return "sackOK"


@attrs.frozen(slots=True)
class SackOption:
    blocks: tuple[SackBlock, ...]
    kind = OptionKind.SACK.value

    def __str__(self) -> str:
        return "sack " + " ".join(f"{b.left}:{b.right}" for b in self.blocks)


@attrs.frozen(slots=True)
class TimestampOption:
    tsval: int
    tsecr: int
    kind = OptionKind.TIMESTAMP.value

    def __str__(self) -> str:
        return f"TS val {self.tsval} ecr {self.tsecr}"


TFO_KIND = 34  # RFC 7413
TFO_EXP_KIND = 254  # the experimental option with magic 0xF989 (RFC 6994)
TFO_EXP_MAGIC = b"\xf9\x89"


@attrs.frozen(slots=True)
class FastOpenOption:
    """``FO cookie`` (kind 34) or ``FOEXP cookie`` (kind 254, magic 0xF989); cookie in hex."""

    cookie: bytes
    experimental: bool = False

    @property
    def kind(self) -> int:
        return TFO_EXP_KIND if self.experimental else TFO_KIND

    def __str__(self) -> str:
        name = "FOEXP" if self.experimental else "FO"
        return f"{name} {self.cookie.hex()}" if self.cookie else name


@attrs.frozen(slots=True)
class UnknownOption:
    """``kind N`` or ``kind N 0xDATA``: any other option, with its data bytes."""

    kind: int
    data: bytes = b""

    def __str__(self) -> str:
        return f"kind {self.kind}" + (f" 0x{self.data.hex()}" if self.data else "")


PacketOption = (
    NopOption | EolOption | MssOption | WindowScaleOption | SackPermittedOption | SackOption
    | TimestampOption | FastOpenOption | UnknownOption
)


def option_size(opt: PacketOption) -> int:
    """Octets the option takes on the wire (kind and length included)."""
    if isinstance(opt, NopOption | EolOption):
        return 1
    if isinstance(opt, MssOption):
        return 4
    if isinstance(opt, WindowScaleOption):
        return 3
    if isinstance(opt, SackPermittedOption):
        return 2
    if isinstance(opt, TimestampOption):
        return 10
    if isinstance(opt, SackOption):
        return 2 + 8 * len(opt.blocks)
    if isinstance(opt, FastOpenOption):
        return 2 + len(opt.cookie) + (2 if opt.experimental else 0)
    return 2 + len(opt.data)


# -- events -------------------------------------------------------------------------------------

_FLAG_BITS = {
    "F": TcpFlags.FIN, "S": TcpFlags.SYN, "R": TcpFlags.RST, "P": TcpFlags.PSH,
    ".": TcpFlags.ACK, "U": TcpFlags.URG, "E": TcpFlags.ECE, "W": TcpFlags.CWR,
}


@attrs.frozen(slots=True)
class SyscallEvent:
    """``name(args) = result [ERRNO] [(note)]``; ``note`` is strerror text or a free remark."""

    name: str
    args: tuple[Expr, ...]
    result: Expr
    errno: str | None = None
    note: str | None = None

    @property
    def errno_text(self) -> str | None:
        return self.note if self.errno is not None else None


@attrs.frozen(slots=True)
class PacketEvent:
    """A TCP packet line: ``<`` injected into the stack, ``>`` expected from it.

    ``seq_start``/``seq_end`` are None for nplab's ``...(len)`` (sequence number not checked).
    ``ack``, ``window`` and ``urgent`` are None when the line does not give them (not checked on
    outbound packets). ``options`` is None with ``options_checked`` False for ``<...>``; an empty
    tuple means the packet carries no options. ``ecn`` is the bracket tag (``ect0``, ``ect1``,
    ``ect01``, ``ce``, ``noecn``); ``tos``/``flowlabel``/``ttl`` come from ``(tos 0x..)`` tags.
    ``text`` is the packet spec as written, for messages.
    """

    direction: str
    flags: str
    seq_start: int | None
    seq_end: int | None
    length: int
    ack: int | None = None
    window: int | None = None
    urgent: int | None = None
    options: tuple[PacketOption, ...] | None = ()
    options_checked: bool = True
    ecn: str | None = None
    tos: int | None = None
    flowlabel: int | None = None
    ttl: int | None = None
    text: str = ""

    @property
    def inbound(self) -> bool:
        return self.direction == "<"

    @property
    def tcp_flags(self) -> TcpFlags:
        flags = TcpFlags(0)
        for c in self.flags:
            flags |= _FLAG_BITS.get(c, TcpFlags(0))
        return flags

    def tcp_options(self) -> TcpOptions | None:
        """The options as the wire value type, ``layout`` in script order; None for ``<...>``.

        Like the codec's decoder, a repeated kind keeps its first value (later ones go to
        ``unknown``) and the layout ends at the first EOL: what follows it is padding.
        """
        if self.options is None:
            return None
        layout: list[int] = []
        mss = wscale = None
        sack_permitted = False
        sack_blocks: tuple[SackBlock, ...] = ()
        timestamps = None
        unknown: list[tuple[int, bytes]] = []
        seen: set[int] = set()
        for opt in self.options:
            layout.append(opt.kind)
            if isinstance(opt, EolOption):
                break
            first = opt.kind not in seen
            seen.add(opt.kind)
            if isinstance(opt, NopOption):
                continue
            if first and isinstance(opt, MssOption):
                mss = opt.value
            elif first and isinstance(opt, WindowScaleOption):
                wscale = opt.shift
            elif first and isinstance(opt, SackPermittedOption):
                sack_permitted = True
            elif first and isinstance(opt, SackOption):
                sack_blocks = opt.blocks
            elif first and isinstance(opt, TimestampOption):
                timestamps = Timestamps(opt.tsval, opt.tsecr)
            else:
                unknown.append((opt.kind, _option_data(opt)))
        return TcpOptions(
            mss=mss, wscale=wscale, sack_permitted=sack_permitted, sack_blocks=sack_blocks,
            timestamps=timestamps, unknown=unknown, layout=layout,
        )


def _option_data(opt: PacketOption) -> bytes:
    """The data octets of an option (after kind and length), as ``TcpOptions.unknown`` has them."""
    if isinstance(opt, MssOption):
        return opt.value.to_bytes(2, "big")
    if isinstance(opt, WindowScaleOption):
        return bytes([opt.shift])
    if isinstance(opt, SackOption):
        return b"".join(b.left.to_bytes(4, "big") + b.right.to_bytes(4, "big") for b in opt.blocks)
    if isinstance(opt, TimestampOption):
        return opt.tsval.to_bytes(4, "big") + opt.tsecr.to_bytes(4, "big")
    if isinstance(opt, FastOpenOption):
        return (TFO_EXP_MAGIC if opt.experimental else b"") + opt.cookie
    if isinstance(opt, UnknownOption):
        return opt.data
    return b""


@attrs.frozen(slots=True)
class QuotedSegment:
    """The TCP segment an ICMP error quotes: ``[seq_start:seq_end(length)]``."""

    seq_start: int | None
    seq_end: int | None
    length: int


@attrs.frozen(slots=True)
class IcmpEvent:
    """``< icmp unreachable port_unreachable [0:0(0)]``; ``code_name`` None when omitted (0)."""

    direction: str
    type_name: str
    code_name: str | None
    type: int
    code: int
    mtu: int | None = None
    quoted: QuotedSegment | None = None
    text: str = ""


@attrs.frozen(slots=True)
class ShellEvent:
    """A backquoted shell command (``sysctl -w ...``, ``sockstat ... | grep ...``), maybe lines."""

    command: str


@attrs.frozen(slots=True)
class CodeEvent:
    """A ``%{ python }%`` block; ``source`` is the text between the markers, verbatim."""

    source: str


Payload = SyscallEvent | PacketEvent | IcmpEvent | ShellEvent | CodeEvent

_KIND_NAMES: dict[type, str] = {
    SyscallEvent: "syscall", PacketEvent: "packet", IcmpEvent: "icmp", ShellEvent: "shell",
    CodeEvent: "code",
}


@attrs.frozen(slots=True)
class Event:
    """One line of the script: where it is, when it happens, what it does; ``source`` as written."""

    line: int
    time: TimeSpec
    payload: Payload
    source: str = ""

    @property
    def kind(self) -> str:
        """``syscall``, ``packet``, ``icmp``, ``shell`` or ``code``."""
        return _KIND_NAMES[type(self.payload)]


@attrs.frozen(slots=True)
class Script:
    """A parsed script: its path, ``--name=value`` options (a bare ``--name`` gives ``""``) and
    the events of the live ``#ifdef`` branches in file order."""

    path: str
    options: dict[str, str] = attrs.field(factory=dict, hash=False)
    events: tuple[Event, ...] = ()

    def counts(self) -> dict[str, int]:
        """Number of events of each kind, every kind present (zero when absent)."""
        counts = Counter(e.kind for e in self.events)
        return {kind: counts.get(kind, 0) for kind in _KIND_NAMES.values()}
