"""Tests of the packetdrill-dialect parser: the whole third-party corpus, then each construct."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpstack.conformance import script as script_module
from tcpstack.conformance.nodes import (
    EolOption,
    FastOpenOption,
    MssOption,
    NopOption,
    SackOption,
    SackPermittedOption,
    TimestampOption,
    UnknownOption,
    WindowScaleOption,
    option_size,
)
from tcpstack.conformance.script import (
    BinaryExpr,
    CallExpr,
    CodeEvent,
    EllipsisExpr,
    IcmpEvent,
    IntExpr,
    ListExpr,
    PacketEvent,
    Script,
    ScriptError,
    ShellEvent,
    StringExpr,
    StructExpr,
    StructField,
    SymbolExpr,
    SyscallEvent,
    TimeKind,
    TimeSpec,
    main,
    parse_file,
    parse_script,
)
from tcpstack.wire.options import decode_options, encode_options
from tcpstack.wire.segment import SackBlock, TcpFlags

CORPUS = Path(__file__).parents[2].parent / "shared" / "conformance"
SCRIPTS = sorted(CORPUS.rglob("*.pkt")) if CORPUS.is_dir() else []
_NO_CORPUS = pytest.param(
    None, marks=pytest.mark.skip(reason=f"corpus {CORPUS} not found: corpus tests skipped")
)
CORPUS_PARAMS = (
    [pytest.param(p, id=str(p.relative_to(CORPUS))) for p in SCRIPTS] if SCRIPTS else [_NO_CORPUS]
)


def parse(text: str, **kw: object) -> Script:
    return parse_script(textwrap.dedent(text), **kw)  # type: ignore[arg-type]


def one(text: str) -> object:
    """The payload of a one-event script."""
    (event,) = parse(text).events
    return event.payload


def error(text: str, **kw: object) -> ScriptError:
    with pytest.raises(ScriptError) as info:
        parse(text, **kw)
    return info.value


# -- the corpus ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CORPUS_PARAMS)
def test_corpus_script_parses(path: Path) -> None:
    lines = path.read_text().split("\n")
    for defines in (frozenset({"STANDARD"}), frozenset({"FreeBSD"}), frozenset({"Linux"})):
        parsed = parse_file(path, defines=defines)
        assert parsed.path == str(path)
        assert parsed.events, "a script without events"
        numbers = [e.line for e in parsed.events]
        assert numbers == sorted(set(numbers)), "events out of order or sharing a line"
        for event in parsed.events:
            # The reported line is where the event's text starts in the file.
            assert lines[event.line - 1].strip() == event.source.split("\n")[0]
            p = event.payload
            if isinstance(p, PacketEvent) and p.options:
                # What the runner will inject or expect survives the wire codec unchanged.
                opts = p.tcp_options()
                assert opts is not None
                decoded = decode_options(encode_options(opts))
                assert decoded == opts and decoded.layout == opts.layout


def test_corpus_is_complete() -> None:
    if not SCRIPTS:
        pytest.skip(f"corpus {CORPUS} not found")
    assert len(SCRIPTS) == 360


def test_corpus_nplab_ifdef_keeps_the_standard_branch() -> None:
    path = CORPUS / "freebsd/state-event-engine/rcv-syn-fin-time-wait" / (
        "rcv-syn-fin-time-wait-using-shutdown-right-edge-insecure-nodrop-ipv4.pkt"
    )
    if not path.exists():
        pytest.skip(f"{path} not found")
    standard = [e for e in parse_file(path).events if e.line in range(66, 73)]
    freebsd = [e for e in parse_file(path, defines=frozenset({"FreeBSD"})).events
               if e.line in range(66, 73)]
    assert [e.line for e in standard] == [67, 69]
    assert isinstance(standard[0].payload, PacketEvent) and standard[0].payload.flags == "R."
    assert [e.line for e in freebsd] == [72]
    p = freebsd[0].payload
    assert isinstance(p, PacketEvent) and p.flags == "S." and p.seq_start is None and p.ack == 65537


# -- options, comments, preprocessor ------------------------------------------------------------


def test_option_lines() -> None:
    s = parse("""\
        --tolerance_usecs=10000
        --ip_version=ipv4
        --mtu=1500
        --strict_segments
        0 close(3) = 0
        """)
    assert s.options == {"tolerance_usecs": "10000", "ip_version": "ipv4", "mtu": "1500",
                         "strict_segments": ""}
    assert len(s.events) == 1


def test_option_after_an_event_is_an_error() -> None:
    e = error("0 close(3) = 0\n--mtu=1500\n")
    assert e.line == 2 and "before the first event" in e.message


def test_comments_are_blanks_but_not_inside_strings_commands_or_python() -> None:
    s = parse("""\
        // leading comment
        /* a block
           comment over lines */ 0 write(3, "http://x /* y */", 5) = 5 // trailing
        +0 `curl http://example/ // not a comment`
        +0 %{ x = 7 // 2 }%
        +0 close(3) = 0//
        """)
    write, shell, code, close = s.events
    assert write.line == 3
    assert isinstance(write.payload, SyscallEvent)
    assert write.payload.args[1] == StringExpr("http://x /* y */")
    assert shell.payload == ShellEvent("curl http://example/ // not a comment")
    assert code.payload == CodeEvent(" x = 7 // 2 ")
    assert close.line == 6


def test_unterminated_block_comment() -> None:
    e = error("0 close(3) = 0\n/* open\n\n")
    assert e.line == 2 and "unterminated comment" in e.message


IFDEF = """\
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
    #ifdef STANDARD
    +0 close(3) = 0
    #endif
    #ifdef FreeBSD
    +0 close(4) = 0
    #else
    +0 close(5) = 0
    #endif
    #ifndef Linux
    #ifdef STANDARD
    +0 close(6) = 0
    #endif
    #else
    +0 close(7) = 0
    #endif
    """


def closed_fds(s: Script) -> list[int]:
    out = []
    for e in s.events:
        assert isinstance(e.payload, SyscallEvent)
        if e.payload.name == "close":
            arg = e.payload.args[0]
            assert isinstance(arg, IntExpr)
            out.append(arg.value)
    return out


def test_ifdef_standard_branch_kept_freebsd_and_linux_dropped() -> None:
    assert closed_fds(parse(IFDEF)) == [3, 5, 6]
    assert closed_fds(parse(IFDEF, defines=frozenset({"FreeBSD"}))) == [4]
    assert closed_fds(parse(IFDEF, defines=frozenset({"Linux", "STANDARD"}))) == [3, 5, 7]
    assert [e.line for e in parse(IFDEF).events] == [1, 3, 8, 12]


def test_define_and_undef_apply_only_in_live_branches() -> None:
    s = parse("""\
        #ifdef NOPE
        #define FreeBSD
        #endif
        #undef STANDARD
        #ifdef FreeBSD
        0 close(1) = 0
        #endif
        #ifndef STANDARD
        0 close(2) = 0
        #endif
        """)
    assert closed_fds(s) == [2]


def test_hash_line_inside_python_block_is_python() -> None:
    (event,) = parse("0 %{\n# tcpi_state is checked\nassert tcpi_state == 1\n}%\n").events
    assert event.payload == CodeEvent("\n# tcpi_state is checked\nassert tcpi_state == 1\n")


def test_skipped_branch_is_not_parsed() -> None:
    s = parse("#ifdef Linux\nthis is ( not a valid line\n#endif\n0 close(3) = 0\n")
    assert closed_fds(s) == [3]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("#endif\n", 1, "#endif without"),
        ("0 close(3) = 0\n#ifdef STANDARD\n0 close(3) = 0\n", 2, "without a matching #endif"),
        ("#ifdef A\n#else\n#else\n#endif\n", 3, "second #else"),
        ("#if defined(STANDARD)\n#endif\n", 1, "unsupported preprocessor directive"),
        ("#ifdef\n#endif\n", 1, "needs one macro name"),
        ("0 close(3) = 0 # shell-style comment\n", 1, "unexpected"),
    ],
)
def test_preprocessor_errors(text: str, line: int, fragment: str) -> None:
    e = error(text)
    assert e.line == line and fragment in e.message


# -- time specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1 close(3) = 0", TimeSpec(TimeKind.ABSOLUTE, 0.1, 0.1)),
        ("+.25 close(3) = 0", TimeSpec(TimeKind.RELATIVE, 0.25, 0.25)),
        ("+ 0.00 close(3) = 0", TimeSpec(TimeKind.RELATIVE, 0.0, 0.0)),
        ("3 close(3) = 0", TimeSpec(TimeKind.ABSOLUTE, 3.0, 3.0)),
        ("* > . 1:1(0) ack 1", TimeSpec(TimeKind.ANY)),
        ("0.1~0.2 > . 1:1(0) ack 1", TimeSpec(TimeKind.ABSOLUTE, 0.1, 0.2, is_range=True)),
        ("+.3~+.310 > . 1:1(0) ack 1", TimeSpec(TimeKind.RELATIVE, 0.3, 0.31, is_range=True)),
        ("+0...0.2 read(4, ..., 10) = 10", TimeSpec(TimeKind.RELATIVE, 0.0, 0.0, blocking_end=0.2)),
        ("1...1.5 accept(3, ..., ...) = 4", TimeSpec(TimeKind.ABSOLUTE, 1.0, 1.0, blocking_end=1.5)),
    ],
)
def test_time_specs(text: str, expected: TimeSpec) -> None:
    (event,) = parse(text).events
    assert event.time == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("+.1~.2 > . 1:1(0) ack 1", "both ends of a time range"),
        ("0.2~0.1 > . 1:1(0) ack 1", "ends (0.1) before it starts"),
        ("*...0.2 read(4, ..., 10) = 10", "single start time"),
        ("+0.5...0.2 read(4, ..., 10) = 10", "ends (0.2) before it starts (0.5)"),
        ("+0...0.2 > . 1:1(0) ack 1", "followed by a system call"),
        ("close(3) = 0", "expected a time"),
        ("+x close(3) = 0", "expected a time"),
    ],
)
def test_time_errors(text: str, fragment: str) -> None:
    e = error("0 close(9) = 0\n" + text + "\n")
    assert e.line == 2 and fragment in e.message


# -- system calls -------------------------------------------------------------------------------


def test_syscall_ints_symbols_lists_and_result() -> None:
    p = one("+0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0")
    assert p == SyscallEvent(
        "setsockopt",
        (IntExpr(3), SymbolExpr("SOL_SOCKET"), SymbolExpr("SO_REUSEADDR"),
         ListExpr((IntExpr(1),)), IntExpr(4)),
        IntExpr(0),
    )


def test_syscall_errno_and_its_text() -> None:
    p = one("+0 connect(3, ..., ...) = -1 EINPROGRESS (Operation now in progress)")
    assert isinstance(p, SyscallEvent)
    assert p.args == (IntExpr(3), EllipsisExpr(), EllipsisExpr())
    assert p.result == IntExpr(-1) and p.errno == "EINPROGRESS"
    assert p.errno_text == "Operation now in progress"


def test_syscall_bitwise_or_hex_result_and_note_without_errno() -> None:
    setfl = one("+0 fcntl(3, F_SETFL, O_RDWR | O_NONBLOCK) = 0")
    assert isinstance(setfl, SyscallEvent)
    assert setfl.args[2] == BinaryExpr("|", SymbolExpr("O_RDWR"), SymbolExpr("O_NONBLOCK"))
    getfl = one("+0 fcntl(3, F_GETFL) = 0x02 (flags O_RDWR)")
    assert isinstance(getfl, SyscallEvent)
    assert getfl.result == IntExpr(2, hex=True)
    assert getfl.errno is None and getfl.note == "flags O_RDWR" and getfl.errno_text is None


def test_syscall_structs_calls_and_strings() -> None:
    p = one("""\
        +0 setsockopt(3, SOL_SOCKET, SO_LINGER, {l_onoff=1, l_linger=0}, 8) = 0
        """)
    assert isinstance(p, SyscallEvent)
    assert p.args[3] == StructExpr((StructField("l_onoff", IntExpr(1)),
                                    StructField("l_linger", IntExpr(0))))
    p = one('+0 connect(3, {sa_family=AF_INET, sin_port=htons(8080), '
            'sin_addr=inet_addr("192.0.2.1")}, 16) = 0')
    assert isinstance(p, SyscallEvent) and isinstance(p.args[1], StructExpr)
    assert p.args[1].field("sin_port") == CallExpr("htons", (IntExpr(8080),))
    assert p.args[1].field("sin_addr") == CallExpr("inet_addr", (StringExpr("192.0.2.1"),))
    p = one(r'+0 write(3, "a\tb\"c\x41\n", 7) = 7')
    assert isinstance(p, SyscallEvent) and p.args[1] == StringExpr('a\tb"cA\n')


def test_syscall_pollfd_array_and_positional_struct() -> None:
    p = one("+0 poll([{fd=3, events=POLLIN|POLLOUT, revents=POLLOUT}, {4, 0, 0}], 2, 0) = 1")
    assert isinstance(p, SyscallEvent)
    (fds,) = p.args[:1]
    assert isinstance(fds, ListExpr) and len(fds.items) == 2
    first, second = fds.items
    assert isinstance(first, StructExpr)
    assert first.field("events") == BinaryExpr("|", SymbolExpr("POLLIN"), SymbolExpr("POLLOUT"))
    assert second == StructExpr(tuple(StructField(None, IntExpr(v)) for v in (4, 0, 0)))


def test_syscall_multiline_msghdr_with_indexed_fields() -> None:
    s = parse("""\
        0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
        +0 sendmsg(3, {msg_name(...)=...,
                       msg_iov(1)=[{iov_base=..., iov_len=1000}],
                       msg_flags=0}, 0) = 1000
        +0 close(3) = 0
        """)
    sendmsg = s.events[1]
    assert sendmsg.line == 2 and s.events[2].line == 5
    assert isinstance(sendmsg.payload, SyscallEvent)
    msg = sendmsg.payload.args[1]
    assert isinstance(msg, StructExpr)
    assert msg.fields[0] == StructField("msg_name", EllipsisExpr(), index=EllipsisExpr())
    assert msg.fields[1] == StructField(
        "msg_iov",
        ListExpr((StructExpr((StructField("iov_base", EllipsisExpr()),
                              StructField("iov_len", IntExpr(1000)))),)),
        index=IntExpr(1),
    )
    assert sendmsg.payload.result == IntExpr(1000)


def test_syscall_alternatives_with_oror() -> None:
    p = one("+0 recv(4, ..., 1000, 0) = 1000 || 500")
    assert isinstance(p, SyscallEvent)
    assert p.result == BinaryExpr("||", IntExpr(1000), IntExpr(500))


def test_expression_str_is_script_syntax_and_reparses() -> None:
    text = ('+0 f([{fd=3, events=POLLIN|POLLOUT}], {msg_iov(1)=[{iov_base=..., iov_len=10}]}, '
            '"a\\"b", htons(80), -1, 0x10, {1, 2}) = 0 || -1')
    p = one(text)
    assert isinstance(p, SyscallEvent)
    rendered = f"+0 f({', '.join(map(str, p.args))}) = {p.result}"
    assert one(rendered) == p


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("close(3) 0", "'='"),
        ("close(3 = 0", "',' or ')'"),
        ("close(3) = 0 einval", "errno name"),
        ("close(3) = 0 EINVAL (unterminated", "unterminated '(' note"),
        ("close(3) = 0 EINVAL (text) more", "unterminated '(' note"),
        ("close($) = 0", "unexpected character"),
        ("close(-FOO) = 0", "number after '-'"),
        ("close(3,) = 0", "expected an expression"),
        ("close(" + "[" * 70 + "]" * 70 + ") = 0", "nested deeper"),
    ],
)
def test_syscall_errors(text: str, fragment: str) -> None:
    e = error("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n+0 " + text + "\n")
    assert e.line == 2 and fragment in e.message


def test_error_in_a_multiline_call_names_the_physical_line() -> None:
    e = error("0 sendmsg(3, {msg_name(...)=...,\n   msg_flags=0 0}, 0) = 1000\n")
    assert e.line == 2 and "at '0}," in str(e)


# -- packets ------------------------------------------------------------------------------------


def test_packet_fields() -> None:
    p = one("+.1 < S 0:0(0) win 32792 <mss 1460,sackOK,nop,nop,nop,wscale 7>")
    assert p == PacketEvent(
        "<", "S", 0, 0, 0, ack=None, window=32792,
        options=(MssOption(1460), SackPermittedOption(), NopOption(), NopOption(), NopOption(),
                 WindowScaleOption(7)),
        text="< S 0:0(0) win 32792 <mss 1460,sackOK,nop,nop,nop,wscale 7>",
    )
    assert p.inbound and p.tcp_flags == TcpFlags.SYN


@pytest.mark.parametrize(
    ("flags", "bits"),
    [
        ("S.", TcpFlags.SYN | TcpFlags.ACK),
        ("F.", TcpFlags.FIN | TcpFlags.ACK),
        ("P.", TcpFlags.PSH | TcpFlags.ACK),
        ("R.", TcpFlags.RST | TcpFlags.ACK),
        ("FP.", TcpFlags.FIN | TcpFlags.PSH | TcpFlags.ACK),
        ("SEW", TcpFlags.SYN | TcpFlags.ECE | TcpFlags.CWR),
        ("U.", TcpFlags.URG | TcpFlags.ACK),
        ("-", TcpFlags(0)),
    ],
)
def test_packet_flags(flags: str, bits: TcpFlags) -> None:
    p = one(f"0 > {flags} 1:1(0) ack 1")
    assert isinstance(p, PacketEvent) and p.flags == flags and p.tcp_flags == bits


def test_packet_ack_window_urgent_and_payload_length() -> None:
    p = one("0 < P. 1:1001(1000) ack 5 win 257 urg 10")
    assert isinstance(p, PacketEvent)
    assert (p.seq_start, p.seq_end, p.length, p.ack, p.window, p.urgent) == (1, 1001, 1000, 5, 257, 10)


def test_leading_zeros_are_decimal() -> None:
    p = one("0 < (tos 010) . 1:1(0) ack 010 win 0x10")
    assert isinstance(p, PacketEvent) and (p.tos, p.ack, p.window) == (10, 10, 16)
    call = one("0 close(-010) = -0x10")
    assert isinstance(call, SyscallEvent)
    assert call.args == (IntExpr(-10),) and call.result == IntExpr(-16, hex=True)


@pytest.mark.parametrize(
    "text",
    ["< . 1:1(0) ack 1" + "0" * 5000, "< . 1" + "0" * 5000 + ":1(0) ack 1", "close(1" + "0" * 5000 + ") = 0",
     "< S 0:0(0) win 1 <mss 1" + "0" * 5000 + ">", "< icmp parameter_problem code_1" + "0" * 5000],
)
def test_huge_numbers_are_errors_not_crashes(text: str) -> None:
    assert error("0 " + text + "\n").line == 1


def test_packet_sequence_wraps_modulo_2_32() -> None:
    p = one("0 < . 4294967000:704(1000) ack 1 win 100")
    assert isinstance(p, PacketEvent) and (p.seq_start, p.seq_end) == (4294967000, 704)


def test_packet_unchecked_sequence_number() -> None:
    p = one("0 > S. ...(0) ack 65537 win 65535 <mss 1460,sackOK,eol,eol>")
    assert isinstance(p, PacketEvent)
    assert p.seq_start is None and p.seq_end is None and p.length == 0 and p.ack == 65537


def test_packet_options_absent_unchecked_and_all_kinds() -> None:
    absent = one("0 > . 1:1(0) ack 1")
    assert isinstance(absent, PacketEvent)
    assert absent.options == () and absent.options_checked and absent.window is None
    unchecked = one("0 > S 0:0(0) <...>")
    assert isinstance(unchecked, PacketEvent)
    assert unchecked.options is None and not unchecked.options_checked
    assert unchecked.tcp_options() is None
    full = one("0 < . 1:1(0) ack 1 win 5 <nop,nop,TS val 100 ecr 4294967295,"
               "sack 1:2 3:4,eol>")
    assert isinstance(full, PacketEvent)
    assert full.options == (NopOption(), NopOption(), TimestampOption(100, 4294967295),
                            SackOption((SackBlock(1, 2), SackBlock(3, 4))), EolOption())
    tfo = one("0 < S 0:0(0) win 5 <mss 1000,FO 0011223344556677,FOEXP,kind 30 0xbeef>")
    assert isinstance(tfo, PacketEvent) and tfo.options is not None
    assert tfo.options[1:] == (FastOpenOption(bytes.fromhex("0011223344556677")),
                               FastOpenOption(b"", experimental=True),
                               UnknownOption(30, b"\xbe\xef"))


def test_packet_options_convert_to_the_wire_type() -> None:
    p = one("0 < S 0:0(0) win 5 <mss 1460,sackOK,TS val 7 ecr 0,nop,wscale 8,kind 30 0x01,mss 9,nop>")
    assert isinstance(p, PacketEvent)
    opts = p.tcp_options()
    assert opts is not None
    assert (opts.mss, opts.sack_permitted, opts.wscale) == (1460, True, 8)
    assert opts.timestamps == (7, 0)
    assert opts.unknown == ((30, b"\x01"), (2, b"\x00\x09"))  # the repeated mss is kept verbatim
    assert opts.layout == (2, 4, 8, 1, 3, 30, 2, 1)  # 28 octets: no padding EOL
    wire = encode_options(opts)
    assert wire[:4] == b"\x02\x04\x05\xb4" and decode_options(wire).layout == opts.layout
    padded = one("0 > S. 0:0(0) ack 1 win 5 <mss 1460,sackOK,eol,eol>")
    assert isinstance(padded, PacketEvent)
    padded_opts = padded.tcp_options()
    assert padded_opts is not None and padded_opts.layout == (2, 4, 0)
    assert encode_options(padded_opts) == b"\x02\x04\x05\xb4\x04\x02\x00\x00"


def test_packet_ecn_and_ip_tags() -> None:
    p = one("0 > [ect0] (tos 0x2, ttl 64) P. 1:1001(1000) ack 1")
    assert isinstance(p, PacketEvent) and (p.ecn, p.tos, p.ttl, p.flowlabel) == ("ect0", 2, 64, None)
    for tag in ("ect1", "ce", "noecn", "ect01"):
        q = one(f"0 < [{tag}] . 1:1(0) ack 1 win 1")
        assert isinstance(q, PacketEvent) and q.ecn == tag
    q = one("0 > (flowlabel 0x12345) S 0:0(0) <...>")
    assert isinstance(q, PacketEvent) and q.flowlabel == 0x12345


@pytest.mark.parametrize(
    ("text", "fragment", "token"),
    [
        ("< SS 0:0(0) win 1", "repeated TCP flag", "SS"),
        ("< X 0:0(0) win 1", "TCP flags", "X"),
        ("< S 0:0 win 1", "sequence range", "0:0"),
        ("< . 1:1001(999) ack 1 win 1", "inconsistent sequence range", "1:1001(999)"),
        ("< . 1:1(0) ack 4294967296 win 1", "out of range", "4294967296"),
        ("< . 1:1(0) ack 1 win 65536", "out of range", "65536"),
        ("< . 1:1(0) ack win 5", "number after 'ack'", "win"),
        ("< . 1:1(0) win 5 ack 1", "unexpected text after the packet", "ack"),
        ("< S 0:0(0) win 1 <mss 1460,bogus 3>", "unknown TCP option", "bogus"),
        ("< S 0:0(0) win 1 <mss 70000>", "mss 70000 is out of range", "mss"),
        ("< S 0:0(0) win 1 <mss 1460", "unterminated option list", "<mss"),
        ("< S 0:0(0) win 1 <eol,mss 1460>", "after eol", "<eol,mss"),
        ("< S 0:0(0) win 1 <mss 1,...>", "whole option list", "...>"),
        ("< . 1:1(0) ack 1 <sack 1:2 3:4 5:6 7:8 9:10>", "at most 40", "<sack"),
        ("< [ect2] . 1:1(0) ack 1", "ECN tag", "[ect2]"),
        ("< (prio 3) . 1:1(0) ack 1", "bad IP tag", "(prio"),
        ("< (tos 0x100) . 1:1(0) ack 1", "out of range", "(tos"),
    ],
)
def test_packet_errors_name_line_and_token(text: str, fragment: str, token: str) -> None:
    e = error(f"0 close(9) = 0\n\n+0 {text}\n")
    assert e.line == 3 and fragment in e.message
    assert f"at {token!r}" in e.message or f"at '{token}" in e.message
    assert e.text == f"+0 {text}"


# -- ICMP ---------------------------------------------------------------------------------------


def test_icmp_lines() -> None:
    p = one("+0.10 < icmp unreachable port_unreachable [0:0(0)]")
    assert p == IcmpEvent("<", "unreachable", "port_unreachable", 3, 3, None,
                          script_module.QuotedSegment(0, 0, 0),
                          text="< icmp unreachable port_unreachable [0:0(0)]")
    p = one("0 <icmp unreachable frag_needed mtu 1234 [1:1461(1460)]")
    assert isinstance(p, IcmpEvent) and (p.type, p.code, p.mtu) == (3, 4, 1234)
    assert p.quoted == script_module.QuotedSegment(1, 1461, 1460)
    p = one("0 < icmp redirect [4294967295:4294967295(0)]")
    assert isinstance(p, IcmpEvent) and (p.type, p.code, p.code_name) == (5, 0, None)
    p = one("0 < icmp parameter_problem code_2 [0:0(0)]")
    assert isinstance(p, IcmpEvent) and (p.type, p.code) == (12, 2)
    p = one("0 < icmp time_exceeded ttl_exceeded_in_transit")
    assert isinstance(p, IcmpEvent) and (p.type, p.code, p.quoted) == (11, 0, None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("< icmp bogus [0:0(0)]", "unknown ICMP type"),
        ("< icmp unreachable port_closed [0:0(0)]", "unknown ICMP code for unreachable"),
        ("< icmp unreachable port_unreachable mtu 1000 [0:0(0)]", "only valid for"),
        ("< icmp unreachable frag_needed mtu [0:0(0)]", "number after 'mtu'"),
        ("< icmp unreachable port_unreachable [0:0(0)", "']'"),
        ("< [ce] icmp unreachable port_unreachable", "not supported on icmp"),
    ],
)
def test_icmp_errors(text: str, fragment: str) -> None:
    e = error("0 " + text + "\n")
    assert e.line == 1 and fragment in e.message


# -- shell commands and python blocks -----------------------------------------------------------


def test_shell_commands_timed_init_and_cleanup() -> None:
    s = parse("""\
        `../common/defaults.sh
        sysctl -q net.ipv4.tcp_tso_win_divisor=100`

        0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
        +0 `sockstat -4 -P tcp -s | grep packetdril | grep -c TIME_WAIT | grep 1`
        `/tmp/sysctl_restore_${PPID}.sh`
        """)
    init, _, timed, cleanup = s.events
    assert init.time.kind is TimeKind.NONE and init.line == 1
    assert init.payload == ShellEvent("../common/defaults.sh\nsysctl -q net.ipv4.tcp_tso_win_divisor=100")
    assert timed.time == TimeSpec(TimeKind.RELATIVE, 0.0, 0.0) and timed.line == 5
    assert timed.payload == ShellEvent("sockstat -4 -P tcp -s | grep packetdril | grep -c TIME_WAIT | grep 1")
    assert cleanup.time.kind is TimeKind.NONE and cleanup.line == 6
    assert s.counts() == {"syscall": 1, "packet": 0, "icmp": 0, "shell": 3, "code": 0}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("0 close(3) = 0\n`echo middle`\n+0 close(4) = 0\n", 2, "without a time"),
        ("0 ``\n", 1, "empty shell command"),
        ("0 `echo\n\nunterminated\n", 1, "unterminated shell command"),
        ("0 `echo` trailing\n", 1, "after the shell command"),
        ("0 %{ assert 1\n", 1, "unterminated python block"),
        ("0 %{ assert 1 }% x\n", 1, "after the python block"),
        ('0 write(3, "abc, 3) = 3\n', 1, "unterminated string"),
    ],
)
def test_shell_and_code_errors(text: str, line: int, fragment: str) -> None:
    e = error(text)
    assert e.line == line and fragment in e.message


def test_python_blocks_single_and_multi_line() -> None:
    s = parse("""\
        +0 %{ assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd }%
        +.01 %{
        assert tcpi_ca_state == TCP_CA_Recovery, tcpi_ca_state
        assert tcpi_snd_cwnd == 7
        }%   // trailing comment
           +0 %{ assert tcpi_probes == 0, tcpi_probes; \\
                 assert tcpi_backoff == 0, tcpi_backoff }%
        +0 close(3) = 0
        """)
    single, multi, continued, close = s.events
    assert single.payload == CodeEvent(" assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd ")
    assert multi.line == 2 and multi.time == TimeSpec(TimeKind.RELATIVE, 0.01, 0.01)
    assert multi.payload == CodeEvent(
        "\nassert tcpi_ca_state == TCP_CA_Recovery, tcpi_ca_state\nassert tcpi_snd_cwnd == 7\n"
    )
    assert continued.line == 6 and isinstance(continued.payload, CodeEvent)
    assert "\\\n" in continued.payload.source
    assert close.line == 8


# -- files, command line, robustness ------------------------------------------------------------


def test_parse_file_reports_path_and_rejects_non_utf8(tmp_path: Path) -> None:
    good = tmp_path / "a.pkt"
    good.write_text("0 close(3) = 0\n")
    assert parse_file(good).path == str(good)
    bad = tmp_path / "b.pkt"
    bad.write_bytes(b"0 close(3) = 0\n0 write(3, \"\xff\", 1) = 1\n")
    with pytest.raises(ScriptError) as info:
        parse_file(bad)
    assert info.value.line == 2 and str(info.value).startswith(f"{bad}:2: ")


def test_parse_file_bounds_the_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(script_module, "MAX_SCRIPT_BYTES", 64)
    big = tmp_path / "big.pkt"
    big.write_text("0 close(3) = 0\n" * 10)
    with pytest.raises(ScriptError, match="larger than 64 bytes"):
        parse_file(big)


def test_cli_summary_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.pkt"
    good.write_text("--mtu=1500\n0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
                    "+0 > S 0:0(0) <...>\n+0 `true`\n")
    bad = tmp_path / "bad.pkt"
    bad.write_text("0 close(3) = 0\n+0 < Z 0:0(0)\n")
    assert main([str(good)]) == 0
    out = capsys.readouterr().out
    assert out == (f"{good}: 3 events (1 syscall, 1 packet, 0 icmp, 1 shell, 0 code) --mtu=1500\n")
    assert main([str(good), str(bad), str(tmp_path / "missing.pkt")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"{bad}: ERROR line 2: expected TCP flags")
    assert lines[2].startswith(f"{tmp_path / 'missing.pkt'}: ERROR")


def test_cli_module_help_runs_cleanly() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tcpstack.conformance.script", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0 and "FILE" in proc.stdout and "--define" in proc.stdout
    assert proc.stderr == ""  # no runpy double-import warning


_FUZZ_ALPHABET = st.sampled_from(
    list("+-.0123456789<>SFRPEW:()[]{}`%/*#~\n ,=\"\\|") + ["win ", "ack ", "close(", "mss ",
                                                            "#ifdef A\n", "#endif\n", "icmp ",
                                                            "%{", "}%", "...", "<...>", "sackOK"]
)


@settings(max_examples=400)
@given(st.lists(_FUZZ_ALPHABET, max_size=40).map("".join))
def test_arbitrary_input_raises_only_script_error(text: str) -> None:
    try:
        parse_script(text)
    except ScriptError as e:
        assert e.line >= 1 and e.message


_flags = st.sampled_from(["S", "S.", ".", "P.", "F.", "R", "R.", "FP.", "SEW", "-"])
_option = st.one_of(
    st.just(NopOption()),
    st.integers(0, 0xFFFF).map(MssOption),
    st.integers(0, 14).map(WindowScaleOption),
    st.just(SackPermittedOption()),
    st.builds(TimestampOption, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.lists(st.builds(SackBlock, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
             min_size=1, max_size=3).map(lambda b: SackOption(tuple(b))),
)


@settings(max_examples=150)
@given(
    direction=st.sampled_from("<>"),
    flags=_flags,
    seq=st.integers(0, 2**32 - 1),
    length=st.integers(0, 65535),
    ack=st.none() | st.integers(0, 2**32 - 1),
    window=st.none() | st.integers(0, 65535),
    options=st.lists(_option, max_size=3).map(tuple).filter(
        lambda opts: sum(map(option_size, opts)) <= 40
    ),
)
def test_packet_line_round_trip(
    direction: str, flags: str, seq: int, length: int, ack: int | None, window: int | None,
    options: tuple[object, ...],
) -> None:
    end = (seq + length) % 2**32
    text = f"{direction} {flags} {seq}:{end}({length})"
    text += f" ack {ack}" if ack is not None else ""
    text += f" win {window}" if window is not None else ""
    text += f" <{','.join(map(str, options))}>" if options else ""
    p = one(f"+0 {text}")
    assert p == PacketEvent(direction, flags, seq, end, length, ack=ack, window=window,
                            options=options, text=text)  # type: ignore[arg-type]
