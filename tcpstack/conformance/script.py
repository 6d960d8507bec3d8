"""Parser for packetdrill scripts (Google's dialect plus nplab's FreeBSD additions).

``parse_script(text)`` / ``parse_file(path)`` return a :class:`~tcpstack.conformance.nodes.Script`
(the AST types are re-exported here): options (``--tolerance_usecs=...``) and a tuple of events,
each with its source line, a time spec and one payload: a system call, a TCP packet, an ICMP
packet, a shell command or a python block. Nothing is executed here.

Time semantics, as packetdrill's ``run.c`` applies them: a relative time (``+0.1``) counts from the
previous event; a blocking call's end (``+0...0.2``) is counted from the same base as its start;
``*`` matches any time; ``a~b`` is a window. A shell command may stand without a time only before
the first event (packetdrill's init command) or after the last one (its cleanup command).

Sequence numbers on packet lines are relative to the initial sequence numbers, as in packetdrill;
nplab's ``...(0)`` in place of ``start:end(len)`` leaves the sequence number unchecked.

``python -m tcpstack.conformance.script FILE...`` prints a one-line summary of each file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence

import attrs

from tcpstack.conformance.exprs import SYSCALL_NAME, parse_syscall
from tcpstack.conformance.lexer import (
    Cursor,
    ScriptError,
    parse_int,
    scan,
)
from tcpstack.conformance.nodes import (
    BinaryExpr,
    CallExpr,
    CodeEvent,
    EllipsisExpr,
    EolOption,
    Event,
    Expr,
    FastOpenOption,
    IcmpEvent,
    IntExpr,
    ListExpr,
    MssOption,
    NopOption,
    PacketEvent,
    PacketOption,
    Payload,
    QuotedSegment,
    SackOption,
    SackPermittedOption,
    Script,
    ShellEvent,
    StringExpr,
    StructExpr,
    StructField,
    SymbolExpr,
    SyscallEvent,
    TimeKind,
    TimeSpec,
    TimestampOption,
    UnknownOption,
    WindowScaleOption,
    option_size,
)
from tcpstack.wire.segment import SackBlock

__all__ = [
    "parse_script",
    "parse_file",
    "main",
    "DEFAULT_DEFINES",
    "ScriptError",
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
]

# nplab's FreeBSD scripts keep RFC behaviour under STANDARD and stack quirks under FreeBSD/Linux.
DEFAULT_DEFINES: frozenset[str] = frozenset({"STANDARD"})
MAX_SCRIPT_BYTES = 4 * 1024 * 1024

U16 = 0xFFFF
U32 = 0xFFFF_FFFF

_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
# packetdrill's lexer makes '+' and '~' tokens of their own: "+ 0.00" and "+.3 ~ +.4" are valid.
_TIME = re.compile(rf"(?:(\*)|(\+\s*)?({_NUM})(?:\s*~\s*(\+\s*)?({_NUM}))?)(?=\s|\.\.\.|\Z)")
_BLOCKING_END = re.compile(rf"\.\.\.({_NUM})(?=\s|\Z)")
_OPTION_LINE = re.compile(r"--([A-Za-z0-9_][A-Za-z0-9_-]*)(?:=(.*))?\Z", re.DOTALL)
_SHELL = re.compile(r"`([^`]*)`")
_CODE = re.compile(r"%\{(.*?)\}%", re.DOTALL)
_DIRECTION = re.compile(r"[<>]")
_ECN_TAG = re.compile(r"\[\s*([A-Za-z0-9]*)\s*\]")
_IP_TAGS = re.compile(r"\(([^()]*)\)")
_ICMP = re.compile(r"icmp\b")
_FLAGS = re.compile(r"(?:[FSRPUEW.]+|-)(?=\s)")
_SEQ = re.compile(r"(?:(\d{1,40})\s*:\s*(\d{1,40})|(\.\.\.))\s*\(\s*(\d{1,40})\s*\)")
_KEYWORD = {kw: re.compile(kw + r"\b") for kw in ("ack", "win", "urg", "mtu")}
_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\b")

_ECN_TAGS = frozenset({"noecn", "ect0", "ect1", "ect01", "ce"})
_IP_TAG_NAMES = frozenset({"tos", "flowlabel", "ttl"})
_IP_TAG_LIMITS = {"tos": 0xFF, "flowlabel": 0xFFFFF, "ttl": 0xFF}
MAX_OPTIONS_LEN = 40  # TCP's data offset leaves 40 octets for options

_ICMP_TYPES = {
    "echo_reply": 0, "unreachable": 3, "source_quench": 4, "redirect": 5, "echo_request": 8,
    "time_exceeded": 11, "parameter_problem": 12, "timestamp_request": 13, "timestamp_reply": 14,
}
_ICMP_CODES = {
    3: {  # RFC 792 and RFC 1812 section 5.2.7.1
        "net_unreachable": 0, "host_unreachable": 1, "protocol_unreachable": 2,
        "port_unreachable": 3, "frag_needed": 4, "source_route_failed": 5, "net_unknown": 6,
        "host_unknown": 7, "source_host_isolated": 8, "net_prohibited": 9, "host_prohibited": 10,
        "net_unreachable_for_tos": 11, "host_unreachable_for_tos": 12, "packet_filtered": 13,
        "precedence_violation": 14, "precedence_cutoff": 15,
    },
    11: {"ttl_exceeded_in_transit": 0, "frag_reass_exceeded": 1},
}
_ICMP_CODE_N = re.compile(r"code_(\d{1,40})\Z")


def parse_script(
    text: str, *, defines: frozenset[str] = DEFAULT_DEFINES, path: str = "<string>"
) -> Script:
    """Parse a packetdrill script; raise :class:`ScriptError` naming the line that failed."""
    options: dict[str, str] = {}
    events: list[Event] = []
    timed_seen = False
    cleanup_line: int | None = None  # an untimed command after timed events: cleanup, must be last
    for logical in scan(text, defines=defines, path=path):
        line = Cursor(logical, path)
        if logical.text.startswith("--"):
            m = _OPTION_LINE.match(logical.text)
            if m is None:
                raise line.error("malformed option line (expected --name=value)")
            if events:
                raise line.error("option lines must come before the first event")
            options[m.group(1)] = (m.group(2) or "").strip()
            continue
        event = _parse_event(line)
        if event.time.kind is TimeKind.NONE:
            if timed_seen and cleanup_line is None:
                cleanup_line = event.line
        elif cleanup_line is not None:
            raise ScriptError(
                path, cleanup_line,
                "a shell command without a time may only come before the first event or after "
                "the last one",
                next(e.source for e in events if e.line == cleanup_line),
            )
        else:
            timed_seen = True
        events.append(event)
    return Script(path=path, options=options, events=tuple(events))


def parse_file(
    path: str | os.PathLike[str], *, defines: frozenset[str] = DEFAULT_DEFINES
) -> Script:
    """Read and parse a script file (UTF-8, at most 4 MiB)."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise ScriptError(name, 1, f"script is larger than {MAX_SCRIPT_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ScriptError(name, line, "script is not UTF-8 text") from None
    return parse_script(text, defines=defines, path=name)


def _parse_event(line: Cursor) -> Event:
    source = line.logical.source
    if line.text.startswith("`"):
        return Event(line.logical.line, TimeSpec(TimeKind.NONE), _parse_shell(line), source)
    time = _parse_time(line)
    m = line.accept(_BLOCKING_END)
    if m is not None:
        if time.kind is TimeKind.ANY or time.is_range:
            raise line.error("a blocking call needs a single start time before '...'", m.start())
        assert time.start is not None
        end = float(m.group(1))
        if end < time.start:
            raise line.error(
                f"blocking call ends ({end}) before it starts ({time.start})", m.start()
            )
        time = attrs.evolve(time, blocking_end=end)
    line.skip_ws()
    rest = line.text[line.pos :]
    payload: Payload
    if m is not None or SYSCALL_NAME.match(rest):
        if not SYSCALL_NAME.match(rest):
            raise line.error("a blocking end time ('...') must be followed by a system call")
        payload = parse_syscall(line)
    elif rest.startswith(("<", ">")):
        payload = _parse_packet(line)
    elif rest.startswith("`"):
        payload = _parse_shell(line)
    elif rest.startswith("%{"):
        m = _CODE.match(rest)
        assert m is not None  # the scanner only lets closed blocks through
        line.pos += m.end()
        line.expect_end("the python block")
        payload = CodeEvent(m.group(1))
    else:
        raise line.error(
            "expected a packet ('<' or '>'), a system call, a `shell command` "
            "or a %{ python }% block"
        )
    return Event(line.logical.line, time, payload, source)


def _parse_time(line: Cursor) -> TimeSpec:
    m = line.accept(_TIME)
    if m is None:
        raise line.error("expected a time (0.1, +0.1, *, a~b or +a~+b) or an option --name=value")
    star, plus, start_text, plus_end, end_text = m.groups()
    if star:
        return TimeSpec(TimeKind.ANY)
    kind = TimeKind.RELATIVE if plus else TimeKind.ABSOLUTE
    start = float(start_text)
    if end_text is None:
        return TimeSpec(kind, start, start)
    if bool(plus) != bool(plus_end):
        raise line.error(
            "both ends of a time range must be relative (+a~+b) or absolute (a~b)", m.start()
        )
    end = float(end_text)
    if end < start:
        raise line.error(f"time range ends ({end}) before it starts ({start})", m.start())
    return TimeSpec(kind, start, end, is_range=True)


def _parse_shell(line: Cursor) -> ShellEvent:
    m = line.expect(_SHELL, "a `shell command`")
    command = m.group(1).strip()
    if not command:
        raise line.error("empty shell command", m.start())
    line.expect_end("the shell command")
    return ShellEvent(command)


# -- packet lines -------------------------------------------------------------------------------


def _parse_packet(line: Cursor) -> PacketEvent | IcmpEvent:
    start = line.here()
    direction = line.expect(_DIRECTION, "'<' or '>'").group()
    ecn: str | None = None
    ip: dict[str, int] = {}
    while True:
        tag_pos = line.here()
        if m := line.accept(_ECN_TAG):
            tag = m.group(1).lower()
            if tag not in _ECN_TAGS or ecn is not None:
                raise line.error(
                    f"unknown or repeated ECN tag (one of {', '.join(sorted(_ECN_TAGS))})", tag_pos
                )
            ecn = tag
        elif m := line.accept(_IP_TAGS):
            _parse_ip_tags(line, m, ip)
        else:
            break
    if line.accept(_ICMP):
        if ecn is not None or ip:
            raise line.error("IP tags are not supported on icmp lines", tag_pos)
        return _parse_icmp(line, direction, start)
    flags = line.expect(_FLAGS, "TCP flags (S F R P . U E W, such as S. or F., - for none)").group()
    if flags != "-" and len(set(flags)) != len(flags):
        raise line.error(f"repeated TCP flag in {flags!r}", line.pos - len(flags))
    seq_start, seq_end, length = _parse_seq(line)
    ack = line.number("ack", U32) if line.accept(_KEYWORD["ack"]) else None
    window = line.number("win", U16) if line.accept(_KEYWORD["win"]) else None
    urgent = line.number("urg", U16) if line.accept(_KEYWORD["urg"]) else None
    options: tuple[PacketOption, ...] | None = ()
    line.skip_ws()
    if line.text.startswith("<", line.pos):
        options = _parse_options(line)
    line.expect_end("the packet")
    return PacketEvent(
        direction, flags, seq_start, seq_end, length, ack=ack, window=window, urgent=urgent,
        options=options, options_checked=options is not None, ecn=ecn, tos=ip.get("tos"),
        flowlabel=ip.get("flowlabel"), ttl=ip.get("ttl"), text=line.text[start:].strip(),
    )


def _parse_ip_tags(line: Cursor, m: re.Match[str], ip: dict[str, int]) -> None:
    """``(tos 0x2)``, ``(flowlabel 0x1234)``, ``(tos 0x2, ttl 64)``."""
    for item in m.group(1).split(","):
        parts = item.split()
        if len(parts) != 2 or parts[0] not in _IP_TAG_NAMES or parts[0] in ip:
            raise line.error(
                f"bad IP tag {item.strip()!r} (expected tos N, flowlabel N or ttl N)", m.start()
            )
        try:
            value = parse_int(parts[1])
        except ValueError:
            raise line.error(f"bad number in IP tag {item.strip()!r}", m.start()) from None
        if not 0 <= value <= _IP_TAG_LIMITS[parts[0]]:
            raise line.error(f"{parts[0]} {value} is out of range", m.start())
        ip[parts[0]] = value


def _parse_seq(line: Cursor) -> tuple[int | None, int | None, int]:
    m = line.expect(_SEQ, "a sequence range start:end(length) or ...(length)")
    length = int(m.group(4))
    if length > U16:
        raise line.error(f"payload length {length} is out of range (at most {U16})", m.start())
    if m.group(3):
        return None, None, length
    seq_start, seq_end = int(m.group(1)), int(m.group(2))
    if seq_start > U32 or seq_end > U32:
        raise line.error("sequence number out of range (at most 2^32-1)", m.start())
    if (seq_start + length) & U32 != seq_end:
        raise line.error(
            f"inconsistent sequence range: {seq_start}:{seq_end} spans "
            f"{(seq_end - seq_start) & U32} octets but the length says {length}",
            m.start(),
        )
    return seq_start, seq_end, length


def _parse_options(line: Cursor) -> tuple[PacketOption, ...] | None:
    open_pos = line.pos
    close = line.text.find(">", open_pos)
    if close < 0:
        raise line.error("unterminated option list: '<' without '>'", open_pos)
    body = line.text[open_pos + 1 : close]
    line.pos = close + 1
    if body.strip() == "...":
        return None
    options: list[PacketOption] = []
    offset = open_pos + 1
    for item in body.split(","):
        item_pos = offset + len(item) - len(item.lstrip())
        offset += len(item) + 1
        options.append(_parse_option(line, item.strip(), item_pos))
    eol = next((i for i, o in enumerate(options) if isinstance(o, EolOption)), len(options))
    if any(not isinstance(o, EolOption) for o in options[eol:]):
        # Octets after EOL are padding (RFC 9293 section 3.2): only more EOLs may follow.
        raise line.error("an option after eol (only eol padding may follow it)", open_pos)
    size = sum(map(option_size, options))
    if size > MAX_OPTIONS_LEN:
        raise line.error(
            f"options take {size} octets, TCP allows at most {MAX_OPTIONS_LEN}", open_pos
        )
    return tuple(options)


_OPTION_FORMS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], PacketOption]]] = [
    (re.compile(r"nop\Z"), lambda m: NopOption()),
    (re.compile(r"eol\Z"), lambda m: EolOption()),
    (re.compile(r"sackOK\Z"), lambda m: SackPermittedOption()),
    (re.compile(r"mss\s+(\d{1,40})\Z"), lambda m: MssOption(_bounded(m, 1, U16, "mss"))),
    (re.compile(r"wscale\s+(\d{1,40})\Z"),
     lambda m: WindowScaleOption(_bounded(m, 1, 0xFF, "wscale"))),
    (re.compile(r"TS\s+val\s+(\d{1,40})\s+ecr\s+(\d{1,40})\Z"),
     lambda m: TimestampOption(_bounded(m, 1, U32, "TS val"), _bounded(m, 2, U32, "TS ecr"))),
    (re.compile(r"sack((?:\s+\d{1,40}:\d{1,40})+)\Z"),
     lambda m: SackOption(_sack_blocks(m.group(1)))),
    (re.compile(r"(FO|FOEXP)(?:\s+([0-9a-fA-F]*))?\Z"),
     lambda m: FastOpenOption(_hex_bytes(m.group(2) or ""), experimental=m.group(1) == "FOEXP")),
    (re.compile(r"kind\s+(\d{1,40})(?:\s+0x([0-9a-fA-F]*))?\Z"),
     lambda m: UnknownOption(_bounded(m, 1, 0xFF, "kind"), _hex_bytes(m.group(2) or ""))),
]


class _OptionValueError(ValueError):
    pass


def _bounded(m: re.Match[str], group: int, limit: int, what: str) -> int:
    value = int(m.group(group))
    if value > limit:
        raise _OptionValueError(f"{what} {value} is out of range (at most {limit})")
    return value


def _sack_blocks(text: str) -> tuple[SackBlock, ...]:
    blocks = []
    for pair in text.split():
        left, right = (int(x) for x in pair.split(":"))
        if left > U32 or right > U32:
            raise _OptionValueError(f"SACK block {pair} is out of range (at most 2^32-1)")
        blocks.append(SackBlock(left, right))
    return tuple(blocks)


def _hex_bytes(text: str) -> bytes:
    if len(text) % 2:
        raise _OptionValueError(f"odd number of hex digits in {text!r}")
    return bytes.fromhex(text)


def _parse_option(line: Cursor, item: str, pos: int) -> PacketOption:
    for pattern, build in _OPTION_FORMS:
        m = pattern.match(item)
        if m:
            try:
                return build(m)
            except _OptionValueError as e:
                raise line.error(str(e), pos) from None
    if item == "...":
        raise line.error("'...' must be the whole option list: <...>", pos)
    raise line.error(
        "unknown TCP option (nop, eol, mss N, wscale N, sackOK, TS val N ecr N, sack a:b ..., "
        "FO cookie, FOEXP cookie, kind N [0xDATA])",
        pos,
    )


def _parse_icmp(line: Cursor, direction: str, start: int) -> IcmpEvent:
    type_pos = line.here()
    type_name = line.expect(_WORD, "an ICMP type such as unreachable").group(1)
    if type_name not in _ICMP_TYPES:
        raise line.error(f"unknown ICMP type (one of {', '.join(_ICMP_TYPES)})", type_pos)
    icmp_type = _ICMP_TYPES[type_name]
    code_name: str | None = None
    code = 0
    code_pos = line.here()
    if (m := _WORD.match(line.text, line.pos)) and m.group(1) != "mtu":
        line.pos = m.end()
        code_name = m.group(1)
        named = _ICMP_CODES.get(icmp_type, {})
        if code_name in named:
            code = named[code_name]
        elif cm := _ICMP_CODE_N.match(code_name):
            code = int(cm.group(1))
            if code > 0xFF:
                raise line.error(f"ICMP code {code} is out of range", code_pos)
        else:
            known = ", ".join([*named, "code_N"])
            raise line.error(f"unknown ICMP code for {type_name} ({known})", code_pos)
    mtu: int | None = None
    mtu_pos = line.here()
    if line.accept(_KEYWORD["mtu"]):
        if (icmp_type, code) != (3, 4):
            raise line.error("mtu is only valid for 'unreachable frag_needed'", mtu_pos)
        mtu = line.number("mtu", U16)
    quoted: QuotedSegment | None = None
    if line.accept(re.compile(r"\[")):
        quoted = QuotedSegment(*_parse_seq(line))
        line.expect(re.compile(r"\]"), "']' closing the quoted segment")
    line.expect_end("the icmp packet")
    return IcmpEvent(direction, type_name, code_name, icmp_type, code, mtu, quoted,
                     text=line.text[start:].strip())


# -- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tcpstack.conformance.script",
        description="Parse packetdrill scripts and print one summary line per file "
        "(events by kind, options); exit status 1 if any file fails to parse.",
    )
    ap.add_argument("files", nargs="+", metavar="FILE", help="packetdrill script (.pkt)")
    ap.add_argument(
        "-D", "--define", action="append", metavar="NAME",
        help="preprocessor name defined for #ifdef (repeatable; default: STANDARD)",
    )
    args = ap.parse_args(argv)
    defines = frozenset(args.define) if args.define else DEFAULT_DEFINES
    failed = 0
    for name in args.files:
        try:
            script = parse_file(name, defines=defines)
        except ScriptError as e:
            failed += 1
            print(f"{name}: ERROR line {e.line}: {e.message}")
            continue
        except OSError as e:
            failed += 1
            print(f"{name}: ERROR {e.strerror or e}")
            continue
        counts = ", ".join(f"{n} {kind}" for kind, n in script.counts().items())
        opts = " ".join(f"--{k}={v}" for k, v in script.options.items())
        print(f"{name}: {len(script.events)} events ({counts})" + (f" {opts}" if opts else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
