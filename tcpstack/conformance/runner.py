"""The packetdrill-dialect conformance runner: one script against one stack, in virtual time.

The stack under test sits at 192.168.0.1 on a :class:`~tcpstack.links.MemoryNetwork`; the runner
plays the other end (192.0.2.1) on a second link of the same network, under trio's
``MockClock``, so every script time is exact and a two-minute script runs in milliseconds.

Events run in script order, at their script times (``+0.1`` counts from the previous event, or
from the time an outbound packet with a ``~``/``*`` time was seen, as packetdrill's run.c does):

* ``<`` lines are built with the wire codec and injected (:mod:`.matching` maps the numbers);
* ``>`` lines take the next packet the stack sent and match it; consecutive data segments add up
  to one line's length unless ``--strict_segments``. A packet that arrives before the line's time
  less the tolerance is "too early" if it matches and "unexpected" if not; none by the line's
  time plus the tolerance is "missing";
* system calls go to :mod:`tcpstack.socket` (:mod:`.syscalls`). A call written ``+0...0.2`` runs
  as a task and must return inside the window; any other call must return within the tolerance.
  As in packetdrill, the next call waits for a blocking one to finish;
* shell lines set sysctls (:mod:`.environment`) or assert connection states (``sockstat``);
* ``%{ }%`` blocks run against the connection's :class:`~tcpstack.tcp.info.TCPInfo` as
  ``tcpi_*`` variables; an assertion on a field the engine does not have is skipped with a note.

:func:`run_script` returns a :class:`Result`; :mod:`.command` is ``tcpstack conformance run``.
"""

from __future__ import annotations

import ast
import collections
import errno as _errno
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from tcpstack import socket as tsocket
from tcpstack.api import Stack, open_stack
from tcpstack.conformance.environment import GOOGLE_DEFAULTS, HostConfig, Unsupported, split_sysctls
from tcpstack.conformance.lexer import ScriptError
from tcpstack.conformance.matching import (
    LOCAL_ADDRESS,
    MASK,
    REMOTE_ADDRESS,
    Flow,
    Mismatch,
    describe,
    inbound_icmp,
    inbound_segment,
    learn_from_outbound,
    match_outbound,
)
from tcpstack.conformance.nodes import (
    CodeEvent,
    Event,
    IcmpEvent,
    IntExpr,
    PacketEvent,
    Script,
    ShellEvent,
    SyscallEvent,
    TimeKind,
)
from tcpstack.conformance.script import DEFAULT_DEFINES, parse_file
from tcpstack.conformance.syscalls import SyscallRunner, ValueMismatch
from tcpstack.links import MemoryNetwork
from tcpstack.tcp.info import TCPInfo
from tcpstack.tcp.state import CaState, TcpiOption, TcpState
from tcpstack.wire import build_icmp, build_packet, parse_packet
from tcpstack.wire.segment import TcpFlags, TcpSegment

__all__ = ["Result", "run_script", "profile_for", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 0.004  # packetdrill's --tolerance_usecs default
ANY_TIME_LIMIT = 600.0  # how long a '*' outbound line waits, in virtual seconds
ISN_SECRET = b"tcpstack conformance runner"


@attrs.frozen
class Result:
    """What one script did: ``status`` is PASS, FAIL or SKIP; ``line`` the failing line."""

    path: str
    status: str
    message: str = ""
    line: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def __str__(self) -> str:
        if self.status == "PASS":
            return f"PASS {self.path}"
        if self.status == "SKIP":
            return f"SKIP {self.path}: {self.message}"
        where = f"line {self.line}: " if self.line is not None else ""
        return f"FAIL {self.path}: {where}{self.message}"


class _Fail(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Skip(Exception):
    pass


def profile_for(path: str | os.PathLike[str]) -> str:
    """``google/`` scripts describe Linux, ``freebsd/`` scripts FreeBSD; anything else Linux."""
    parts = Path(path).resolve().parts
    if "freebsd" in parts:
        return "freebsd"
    return "linux"


def _time_text(t: float) -> str:
    return f"{t:.6f}".rstrip("0").rstrip(".") if t else "0"


_SOCKSTAT = re.compile(
    r"^sockstat\b(?P<args>[^|]*)\|(?:\s*grep\s+packetdril\s*\|)?\s*grep\s+-c\s+(?P<state>[A-Z_0-9]+)"
    r"\s*\|\s*grep\s+(?P<count>\d+)\s*$"
)
_STATE_NAMES = {
    "SYN_RCVD": TcpState.SYN_RECEIVED, "SYN_RECEIVED": TcpState.SYN_RECEIVED,
    "SYN_SENT": TcpState.SYN_SENT, "ESTABLISHED": TcpState.ESTABLISHED,
    "FIN_WAIT_1": TcpState.FIN_WAIT_1, "FIN_WAIT_2": TcpState.FIN_WAIT_2,
    "CLOSE_WAIT": TcpState.CLOSE_WAIT, "CLOSING": TcpState.CLOSING,
    "LAST_ACK": TcpState.LAST_ACK, "TIME_WAIT": TcpState.TIME_WAIT,
    "CLOSED": TcpState.CLOSED, "LISTEN": TcpState.LISTEN,
}
_SET_SYSCTLS = re.compile(r"set_sysctls\.py\s+(.*)$")
_HARMLESS = (
    re.compile(r"^ip tcp_metrics flush\b"),  # no metrics cache
    re.compile(r"^ethtool -K \S+ (?:tso|gso|gro)"),  # the stack never uses offloads here
    re.compile(r"^tc qdisc add dev \S+ root pfifo\s*$"),  # a plain FIFO: what the link is
    re.compile(r"^/tmp/sysctl_restore_\$\{PPID\}\.sh$"),  # undoing settings at the end
)


class _Run:
    def __init__(
        self, script: Script, *, profile: str, strict: bool, strict_segments: bool,
        tolerance: float | None,
    ) -> None:
        self.script = script
        self.strict = strict
        self.strict_segments = strict_segments or "strict_segments" in script.options
        if tolerance is None:
            raw = script.options.get("tolerance_usecs")
            tolerance = int(raw) / 1e6 if raw else DEFAULT_TOLERANCE
        self.tolerance = tolerance
        tick = script.options.get("tcp_ts_tick_usecs")
        self.ts_tick = int(tick) if tick else None
        self.host = HostConfig(profile=profile)
        self.flow = Flow()
        self.notes: list[str] = []
        self.failures: list[Exception] = []  # _Fail or _Skip from call tasks
        self.packets: collections.deque[tuple[float, TcpSegment]] = collections.deque()
        self.packet_arrived = trio.Event()
        self.syscalls = SyscallRunner(self.flow, self._on_connection)
        self.current: tsocket.SocketType | None = None
        self.pending_call: trio.Event | None = None
        self.epoch = 0.0
        self.stack: Stack | None = None
        self.remote: Any = None
        self.nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ set-up
    def _prepare(self) -> None:
        ip_version = self.script.options.get("ip_version", "ipv4")
        if ip_version not in ("ipv4", ""):
            raise _Skip(f"--ip_version={ip_version}: the stack is IPv4 only")
        uses_defaults = any(
            isinstance(e.payload, ShellEvent) and "defaults.sh" in e.payload.command
            for e in self.script.events
        )
        if uses_defaults:
            for name, value in GOOGLE_DEFAULTS:
                self.host.sysctl(name, value)
            self.notes.extend(self.host.notes)
            self.host.notes.clear()

    async def run(self) -> None:
        self._prepare()
        mtu = int(self.script.options.get("mtu", "1500") or 1500)
        async with MemoryNetwork(seed=0) as net:
            # The links carry any IPv4 datagram, as packetdrill's tun device takes the GRO-sized
            # segments scripts inject; the stack's own MTU is the interface MTU of the script.
            local = net.attach(LOCAL_ADDRESS, mtu=65535)
            self.remote = net.attach(REMOTE_ADDRESS, mtu=65535)
            options = {"mtu": mtu, **self.host.options}
            async with open_stack(
                local, address=LOCAL_ADDRESS, profile=self.host.profile,
                isn_secret=ISN_SECRET, seed=0, close_timeout=0.0, **options,
            ) as stack:
                self.stack = stack
                with tsocket.using_stack(stack):
                    async with trio.open_nursery() as nursery:
                        self.nursery = nursery
                        nursery.start_soon(self._sniff)
                        try:
                            await self._events()
                        finally:
                            nursery.cancel_scope.cancel()
                for sock in list(self.syscalls.fds.values()):
                    sock.close()

    async def _sniff(self) -> None:
        while True:
            try:
                batch = await self.remote.receive_batch()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            now = trio.current_time() - self.epoch
            for raw in batch:
                seg = parse_packet(raw, verify_checksum=False)
                if isinstance(seg, TcpSegment):
                    self.packets.append((now, seg))
            self.packet_arrived.set()

    # ------------------------------------------------------------------ the timeline
    async def _events(self) -> None:
        self.epoch = trio.current_time()
        base = 0.0
        for ev in self.script.events:
            self._raise_failures()
            ts = ev.time
            start: float | None
            end: float | None
            if ts.kind is TimeKind.NONE:
                self._shell(ev)
                continue
            if ts.kind is TimeKind.ANY:
                start = end = None
            elif ts.kind is TimeKind.RELATIVE:
                assert ts.start is not None and ts.end is not None
                start, end = base + ts.start, base + ts.end
            else:
                assert ts.start is not None and ts.end is not None
                start, end = ts.start, ts.end
            blocking_end = None
            if ts.blocking_end is not None:
                blocking_end = ts.blocking_end + (base if ts.kind is TimeKind.RELATIVE else 0.0)
            payload = ev.payload
            if isinstance(payload, PacketEvent) and not payload.inbound:
                seen = await self._expect(ev, payload, start, end)
                # packetdrill: after a range or '*' the next relative time counts from the packet.
                base = seen if (ts.is_range or start is None) else (start if start is not None else seen)
                continue
            if start is not None:
                await self._sleep_until(start)
                base = start
            else:
                base = self._now()
            if isinstance(payload, PacketEvent):
                self._inject(payload)
                await self._settle()
            elif isinstance(payload, IcmpEvent):
                self._inject_icmp(payload)
                await self._settle()
            elif isinstance(payload, SyscallEvent):
                await self._syscall(ev, payload, base, blocking_end)
            elif isinstance(payload, ShellEvent):
                self._shell(ev)
            elif isinstance(payload, CodeEvent):
                self._code(ev, payload)
        if self.pending_call is not None:
            await self.pending_call.wait()
        self._raise_failures()

    def _now(self) -> float:
        return trio.current_time() - self.epoch

    async def _sleep_until(self, t: float) -> None:
        await trio.sleep_until(self.epoch + t)
        await self._settle()

    @staticmethod
    async def _settle() -> None:
        # Let every task finish what this instant brings (the stack's input and timers, the
        # sniffer) before the script acts or looks: trio runs ready tasks in a random order.
        # This does not move the MockClock.
        await trio.testing.wait_all_tasks_blocked()

    def _raise_failures(self) -> None:
        if self.failures:
            raise self.failures[0]

    # ------------------------------------------------------------------ packets
    def _inject(self, ev: PacketEvent) -> None:
        seg = inbound_segment(ev, self.flow)
        self.remote.send_batch([build_packet(seg)])

    def _inject_icmp(self, ev: IcmpEvent) -> None:
        self.remote.send_batch([build_icmp(inbound_icmp(ev, self.flow))])

    async def _next_packet(self, deadline: float) -> tuple[float, TcpSegment] | None:
        await self._settle()
        while not self.packets:
            self.packet_arrived = trio.Event()
            with trio.move_on_at(self.epoch + deadline):
                await self.packet_arrived.wait()
            if not self.packets:
                return None
        return self.packets.popleft()

    async def _expect(self, ev: Event, want: PacketEvent, start: float | None, end: float | None) -> float:
        tol = self.tolerance
        lo = -math.inf if start is None else start - tol
        hi = self._now() + ANY_TIME_LIMIT if end is None else end + tol
        spec = want.text
        when = "any time" if start is None else (
            f"{_time_text(start)}~{_time_text(end or start)}" if end != start else _time_text(start)
        )
        first = await self._next_packet(hi)
        if first is None:
            raise _Fail(ev.line, f"missing packet: expected `{spec}` at {when} s, got nothing by "
                                 f"{_time_text(hi)} s")
        arrival, seg = first
        segs = [seg]
        learn_from_outbound(seg, want, self.flow)
        total = len(seg.payload)
        while (
            not self.strict_segments and total < want.length and seg.payload
            and not seg.flags & (TcpFlags.SYN | TcpFlags.FIN | TcpFlags.RST)
        ):
            nxt = await self._next_packet(max(hi, arrival))
            if nxt is None:
                break
            _t, cand = nxt
            if cand.seq != (seg.seq + len(seg.payload)) & MASK or not cand.payload:
                self.packets.appendleft(nxt)
                break
            seg = cand
            segs.append(seg)
            total += len(seg.payload)
        try:
            match_outbound(segs, want, self.flow, strict=self.strict, ts_tick_usecs=self.ts_tick,
                           tolerance=tol)
        except Mismatch as m:
            got = describe(segs, self.flow)
            if arrival < lo:
                raise _Fail(ev.line, f"unexpected packet `> {got}` at {_time_text(arrival)} s "
                                     f"(expected `{spec}` at {when} s)") from None
            raise _Fail(ev.line, f"{m.what} mismatch: expected `{spec}` got `> {got}` "
                                 f"({m})") from None
        if arrival < lo:
            raise _Fail(ev.line, f"packet too early: expected `{spec}` at {when} s, got it at "
                                 f"{_time_text(arrival)} s (tolerance {tol * 1e3:g} ms)")
        return arrival

    # ------------------------------------------------------------------ system calls
    def _on_connection(self, sock: tsocket.SocketType) -> None:
        self.current = sock

    async def _syscall(self, ev: Event, call: SyscallEvent, start: float, blocking_end: float | None) -> None:
        if self.pending_call is not None:
            await self.pending_call.wait()  # one blocking call at a time, as packetdrill
            self.pending_call = None
            self._raise_failures()
            await self._sleep_until(start)
        done = trio.Event()
        assert self.nursery is not None
        self.nursery.start_soon(self._call_task, ev, call, start, blocking_end, done)
        if blocking_end is None:
            await done.wait()
            await self._settle()
            self._raise_failures()
        else:
            await self._settle()
            self.pending_call = done

    async def _call_task(
        self, ev: Event, call: SyscallEvent, start: float, blocking_end: float | None,
        done: trio.Event,
    ) -> None:
        tol = self.tolerance
        due = blocking_end if blocking_end is not None else start
        try:
            with trio.move_on_at(self.epoch + due + tol) as scope:
                try:
                    result, err = await self.syscalls.call(call)
                except ValueMismatch as exc:
                    self.failures.append(_Fail(ev.line, f"{call.name}(): {exc}"))
                    return
                except Unsupported as exc:
                    self.failures.append(_Skip(str(exc)))
                    return
            if scope.cancelled_caught:
                self.failures.append(_Fail(
                    ev.line, f"{call.name}() did not return: expected it to return at "
                             f"{_time_text(due)} s (tolerance {tol * 1e3:g} ms)"))
                return
            now = self._now()
            if blocking_end is not None and now < blocking_end - tol:
                self.failures.append(_Fail(
                    ev.line, f"{call.name}() returned too early: at {_time_text(now)} s, expected "
                             f"{_time_text(blocking_end)} s"))
                return
            want = call.result.value if isinstance(call.result, IntExpr) else None
            if want is not None and (result != want or _errno_code(err) != _errno_code(call.errno)):
                got = f"{result}" + (f" {err}" if err else "")
                exp = f"{want}" + (f" {call.errno}" if call.errno else "")
                self.failures.append(_Fail(ev.line, f"{call.name}() = {got}, expected {exp}"))
        finally:
            done.set()

    # ------------------------------------------------------------------ shell
    def _shell(self, ev: Event) -> None:
        assert isinstance(ev.payload, ShellEvent)
        for command in re.split(r"[\n;]", ev.payload.command.replace("\\\n", " ")):
            command = command.strip()
            if command:
                self._command(ev, command)

    def _command(self, ev: Event, command: str) -> None:
        if "defaults.sh" in command:
            return  # applied before the stack started (see _prepare)
        pairs = split_sysctls(command)
        if pairs is not None:
            for name, value in pairs:
                self._sysctl(name, value)
            return
        m = _SET_SYSCTLS.search(command)
        if m:
            for assignment in m.group(1).split():
                path, _, value = assignment.partition("=")
                name = path.removeprefix("/proc/sys/").replace("/", ".")
                self._sysctl(name, value)
            return
        m = _SOCKSTAT.match(command)
        if m:
            self._sockstat(ev, m)
            return
        if any(p.match(command) for p in _HARMLESS):
            return
        raise _Skip(f"shell command not supported: {command}")

    def _sysctl(self, name: str, value: str) -> None:
        try:
            self.host.sysctl(name, value)
        except Unsupported as exc:
            raise _Skip(str(exc)) from None
        self.notes.extend(self.host.notes)
        self.host.notes.clear()
        if self.stack is not None:
            self.stack.options = attrs.evolve(self.host.connection_options(), mtu=self.stack.options.mtu)

    def _sockstat(self, ev: Event, m: re.Match[str]) -> None:
        state = _STATE_NAMES.get(m.group("state"))
        if state is None:
            raise _Skip(f"sockstat state {m.group('state')} unknown")
        port_arg = re.search(r"-p\s+(\d+)", m.group("args"))
        port = int(port_arg.group(1)) if port_arg else None
        count = self._count_state(state, port)
        if m.group("count") not in str(count):  # `grep N` on the count, as the shell does
            raise _Fail(ev.line, f"sockstat: expected {m.group('count')} connection(s) in "
                                 f"{m.group('state')}, got {count}")

    def _count_state(self, state: TcpState, port: int | None) -> int:
        """Sockets in ``state`` as sockstat lists them: every connection the stack holds, plus
        the script's sockets that have none (listening ones, new ones, CLOSED ones)."""
        assert self.stack is not None
        count = sum(
            1 for entry in self.stack.connections()
            if entry.state is state and (port is None or port in (entry.local[1], entry.remote[1]))
        )
        for sock in self.syscalls.fds.values():
            conn = sock.connection
            if conn is not None and conn.state is not TcpState.CLOSED:
                continue  # counted above
            if port is not None and port != sock.getsockname()[1]:
                continue
            own = TcpState.LISTEN if sock.listening else TcpState.CLOSED
            count += own is state
        return count

    # ------------------------------------------------------------------ %{ }%
    def _code(self, ev: Event, code: CodeEvent) -> None:
        sock = self.current
        conn = sock.connection if sock is not None else None
        if conn is None:
            raise _Fail(ev.line, "%{ }% block with no connection to inspect")
        info = conn.info(trio.current_time())
        namespace = _info_namespace(info)
        try:
            tree = ast.parse(code.source.replace("\\\n", " ").strip())
        except SyntaxError as exc:
            raise _Fail(ev.line, f"python block does not parse: {exc}") from None
        for stmt in tree.body:
            try:
                exec(compile(ast.Module([stmt], []), "<script>", "exec"), namespace)  # noqa: S102
            except NameError as exc:
                name = getattr(exc, "name", None) or str(exc)
                if str(name).startswith("tcpi_"):
                    self.notes.append(f"line {ev.line}: skipped `{ast.unparse(stmt)}`: the engine "
                                      f"has no {name}")
                    continue
                raise _Fail(ev.line, f"python block: {exc}") from None
            except AssertionError as exc:
                detail = f" (value {exc})" if str(exc) else ""
                raise _Fail(ev.line, f"assertion failed: `{ast.unparse(stmt)}`{detail}") from None
            except Exception as exc:  # a script's own code: report whatever it raises
                raise _Fail(ev.line, f"python block raised {type(exc).__name__}: {exc}") from None


def _errno_code(name: str | None) -> int | str | None:
    """Compare errnos by number: EWOULDBLOCK and EAGAIN are one code on Linux and FreeBSD."""
    if name is None:
        return None
    code = getattr(_errno, name, None)
    return code if isinstance(code, int) else name


_SAFE_BUILTINS: dict[str, Any] = {
    name: getattr(__builtins__, name, None) if not isinstance(__builtins__, dict) else __builtins__.get(name)
    for name in ("abs", "min", "max", "len", "int", "float", "bool", "round", "sum", "print", "range")
}


def _info_namespace(info: TCPInfo) -> dict[str, Any]:
    ns: dict[str, Any] = {"__builtins__": _SAFE_BUILTINS}
    for field in attrs.fields(TCPInfo):
        if not field.name.startswith("_"):
            value = getattr(info, field.name)
            ns[f"tcpi_{field.name}"] = int(value) if isinstance(value, int) else value
    for ca in CaState:
        ns[f"TCP_CA_{ca.name.capitalize()}"] = int(ca)
    ns["TCP_CA_CWR"] = int(CaState.CWR)
    for opt in TcpiOption:
        if opt.name:
            ns[f"TCPI_OPT_{opt.name}"] = int(opt)
    # State names as the nplab scripts spell them (TCPI_ESTABLISHED ...), valued in the same
    # (Linux) numbering as tcpi_state so comparisons hold.
    for state in TcpState:
        ns[f"TCPI_{state.name}"] = state.linux_code
    return ns


def run_script(
    path: str | os.PathLike[str], *, strict: bool = False, profile: str | None = None,
    strict_segments: bool = False, tolerance: float | None = None,
    defines: frozenset[str] = DEFAULT_DEFINES,
) -> Result:
    """Run one script in its own virtual-time trio run; never raises for a script's faults."""
    name = str(path)
    try:
        script = parse_file(path, defines=defines)
    except (ScriptError, OSError, UnicodeDecodeError) as exc:
        return Result(name, "FAIL", f"cannot parse: {exc}")
    run = _Run(script, profile=profile or profile_for(path), strict=strict,
               strict_segments=strict_segments, tolerance=tolerance)
    try:
        with run.host.installed_profile():
            trio.run(run.run, clock=trio.testing.MockClock(autojump_threshold=0))
    except _Fail as exc:
        return Result(name, "FAIL", exc.message, exc.line, tuple(run.notes))
    except _Skip as exc:
        return Result(name, "SKIP", str(exc), notes=tuple(run.notes))
    except BaseExceptionGroup as group:
        return _from_group(name, group, run)
    except Exception as exc:  # noqa: BLE001 - reported as the script's failure
        return _from_group(name, BaseExceptionGroup("run", [exc]), run)
    return Result(name, "PASS", notes=tuple(run.notes))


def _from_group(name: str, group: BaseExceptionGroup[Any], run: _Run) -> Result:
    for exc in _leaves(group):
        if isinstance(exc, _Fail):
            return Result(name, "FAIL", exc.message, exc.line, tuple(run.notes))
        if isinstance(exc, _Skip):
            return Result(name, "SKIP", str(exc), notes=tuple(run.notes))
    # Anything else is the stack (or the runner) crashing on this script: a failure to report,
    # not a reason to stop the run.
    first = next(iter(_leaves(group)))
    where = ""
    tb = first.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
    return Result(name, "FAIL", f"crashed: {type(first).__name__}: {first}{where}",
                  notes=tuple(run.notes))


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
