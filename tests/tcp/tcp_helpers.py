"""Test harnesses for the sans-IO engine.

``Script``: a tiny packetdrill-like "inject / expect" table runner in virtual time. Lines read
like the conformance scripts::

    +0.1 < S 0:0(0) win 32792 <mss 1460,sackOK,nop,nop,nop,wscale 7>
    +0   > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
    +0   write 1000
    +0   > P. 1:1001(1000) ack 1

Inbound sequence numbers are relative to the peer's ISS, outbound ones to ours; ``ack`` the other
way round. Outbound TS val is relative to the first outbound TS (as packetdrill); TS ecr and
inbound TS values are literal. ``<...>`` skips the option check; a window is checked only when
the line gives one. Time advances to each line, firing the engine's timers on the way, and every
emitted segment is timestamped: an expect line must match the next emitted segment *and* its
emission time (within ``tolerance``). Calls: ``write N``, ``read N [= M]``, ``close``,
``shutdown_wr``, ``shutdown_rd``, ``abort``, ``socket``, ``connect``, ``setopt k=v ...``,
``none`` (nothing pending may remain).

``VirtualNetwork``: two engines joined by a seeded lossy/reordering/duplicating/delaying
channel (property tests). ``Bottleneck``: a rate-limited drop-tail link with propagation delay
(model tests).
"""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from tcpstack.tcp.config import ConnectionOptions
from tcpstack.tcp.connection import Connection
from tcpstack.tcp.state import TcpState
from tcpstack.wire.options import encode_options
from tcpstack.wire.segment import (
    OptionKind,
    SackBlock,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
)

MASK = 0xFFFFFFFF
LOCAL = ("192.168.0.1", 8080)
REMOTE = ("192.0.2.1", 48879)
# Both sides start near the 32-bit wrap so every scenario crosses it.
ISS = 0xFFFFFF00
IRS = 0xFFFFFFF0

_FLAG_CHARS = {
    "S": TcpFlags.SYN, "F": TcpFlags.FIN, "R": TcpFlags.RST, "P": TcpFlags.PSH,
    ".": TcpFlags.ACK, "E": TcpFlags.ECE, "W": TcpFlags.CWR, "U": TcpFlags.URG,
}
_PKT = re.compile(
    r"^(?P<dir>[<>])\s+(?P<flags>[SFRPEWU.\-]+)\s+(?P<seq>\d+):(?P<end>\d+)\((?P<len>\d+)\)"
    r"(?:\s+ack\s+(?P<ack>\d+))?(?:\s+win\s+(?P<win>\d+))?(?:\s+<(?P<opts>[^>]*)>)?"
    r"(?:\s+\[(?P<ecn>ect0|ect1|ce|noecn)\])?\s*$"
)


class ScriptError(AssertionError):
    pass


def _literal(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def parse_flags(text: str) -> TcpFlags:
    flags = TcpFlags(0)
    for c in text:
        if c != "-":
            flags |= _FLAG_CHARS[c]
    return flags


def parse_options(text: str, *, ts_map: Callable[[int], int] = lambda v: v,
                  seq_map: Callable[[int], int] = lambda v: v) -> TcpOptions:
    mss = wscale = None
    sack_ok = False
    ts = None
    blocks: list[SackBlock] = []
    layout: list[int] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        words = item.split()
        kind = words[0]
        if kind == "nop":
            layout.append(OptionKind.NOP)
        elif kind == "eol":
            layout.append(OptionKind.EOL)
        elif kind == "mss":
            mss = int(words[1])
            layout.append(OptionKind.MSS)
        elif kind == "wscale":
            wscale = int(words[1])
            layout.append(OptionKind.WSCALE)
        elif kind == "sackOK":
            sack_ok = True
            layout.append(OptionKind.SACK_PERMITTED)
        elif kind == "TS":
            ts = Timestamps(ts_map(int(words[2])) & MASK, int(words[4]) & MASK)
            layout.append(OptionKind.TIMESTAMP)
        elif kind == "sack":
            for b in words[1:]:
                lo, hi = b.split(":")
                blocks.append(SackBlock(seq_map(int(lo)) & MASK, seq_map(int(hi)) & MASK))
            layout.append(OptionKind.SACK)
        else:
            raise ScriptError(f"unknown option {item!r}")
    return TcpOptions(mss=mss, wscale=wscale, sack_permitted=sack_ok, timestamps=ts,
                      sack_blocks=tuple(blocks), layout=tuple(layout))


@attrs.define
class Emitted:
    time: float
    seg: TcpSegment


class Script:
    """Drive one engine against a scripted peer (see module docstring)."""

    def __init__(
        self,
        *,
        options: ConnectionOptions | None = None,
        iss: int = ISS,
        irs: int = IRS,
        tolerance: float = 0.002,
        strict_options: bool = True,
    ) -> None:
        self.options = options or ConnectionOptions()
        self.iss = iss
        self.irs = irs
        self.tolerance = tolerance
        self.strict_options = strict_options
        self.now = 0.0
        self.conn: Connection | None = None
        self.out: list[Emitted] = []
        self.ts_offset: int | None = None
        self.log: list[str] = []
        self.deadlines: list[float] = []

    # -- time ---------------------------------------------------------------------------

    def advance(self, target: float) -> None:
        conn = self.conn
        while conn is not None:
            d = conn.next_deadline()
            if d is not None:
                if d < self.now - 1e-9:
                    raise ScriptError(f"deadline {d} in the past (now {self.now})")
                self.deadlines.append(d)
            if d is None or d > target + 1e-9:  # float sums: 1.1 + 1.2 > 2.3
                break
            self.now = max(self.now, d)
            conn.on_timer(self.now)
            self._poll()
        self.now = max(self.now, target)

    def _poll(self) -> None:
        if self.conn is not None:
            for seg in self.conn.poll_transmit(self.now):
                self.out.append(Emitted(self.now, seg))
                self.log.append(f"{self.now:.4f} > {seg!r}")

    # -- lines --------------------------------------------------------------------------

    def run(self, table: str) -> Script:
        for raw in table.strip().splitlines():
            line = raw.split("//")[0].strip()
            if not line:
                continue
            self.line(line)
        return self

    def line(self, line: str) -> None:
        when, _, rest = line.partition(" ")
        rest = rest.strip()
        target = self.now + float(when[1:]) if when.startswith("+") else float(when)
        if rest.startswith(">"):
            self.advance(target)
            self._expect(rest, target)
            return
        self.advance(target)
        if rest.startswith("<"):
            self._inject(rest)
        else:
            self._call(rest)
        self._poll()

    def _seg_in(self, text: str) -> TcpSegment:
        m = _PKT.match(text)
        if m is None:
            raise ScriptError(f"cannot parse {text!r}")
        flags = parse_flags(m["flags"])
        seq = (self.irs + int(m["seq"])) & MASK
        n = int(m["len"])
        ack = (self.iss + int(m["ack"])) & MASK if m["ack"] is not None else 0
        if m["ack"] is not None:
            flags |= TcpFlags.ACK
        opts = parse_options(m["opts"] or "", seq_map=lambda v: self.iss + v)
        tos = {"ect0": 2, "ect1": 1, "ce": 3, "noecn": 0, None: 0}[m["ecn"]]
        return TcpSegment(REMOTE[0], LOCAL[0], REMOTE[1], LOCAL[1], seq, ack, flags,
                          int(m["win"] or 0), 0, opts, bytes(i % 251 for i in range(n)),
                          tos=tos)

    def _inject(self, text: str) -> None:
        seg = self._seg_in(text)
        self.log.append(f"{self.now:.4f} < {seg!r}")
        if self.conn is None:
            self.conn = Connection.from_syn(seg, iss=self.iss, options=self.options, now=self.now)
        else:
            self.conn.on_segment(seg, self.now)

    def _expect(self, text: str, target: float) -> None:
        m = _PKT.match(text)
        if m is None:
            raise ScriptError(f"cannot parse {text!r}")
        if not self.out:
            raise ScriptError(f"expected {text!r} at {target:.4f}, nothing sent\n" + self.trace())
        got = self.out.pop(0)
        seg = got.seg
        want_len = int(m["len"])
        # As packetdrill: consecutive contiguous segments sent at once add up to one line.
        while (
            len(seg.payload) < want_len
            and self.out
            and self.out[0].time == got.time
            and self.out[0].seg.seq == (seg.seq + len(seg.payload)) & MASK
            and self.out[0].seg.payload
        ):
            nxt = self.out.pop(0).seg
            seg = attrs.evolve(seg, payload=seg.payload + nxt.payload, flags=seg.flags | nxt.flags)
        problems = []
        if abs(got.time - target) > self.tolerance:
            problems.append(f"time {got.time:.4f} != {target:.4f}")
        flags = parse_flags(m["flags"])
        if m["ack"] is not None:
            flags |= TcpFlags.ACK
        merged = len(got.seg.payload) < len(seg.payload)
        if merged:
            # Where Linux puts PSH inside a burst depends on its TSO size goal (skb
            # boundaries), which the engine does not model: a summed line checks the rest.
            flags |= seg.flags & TcpFlags.PSH
            seg = attrs.evolve(seg, flags=seg.flags | (flags & TcpFlags.PSH))
        if seg.flags != flags:
            problems.append(f"flags {seg.flags!r} != {flags!r}")
        seq = (self.iss + int(m["seq"])) & MASK
        if seg.seq != seq:
            problems.append(f"seq {(seg.seq - self.iss) & MASK} != {m['seq']}")
        if len(seg.payload) != int(m["len"]):
            problems.append(f"len {len(seg.payload)} != {m['len']}")
        if m["ack"] is not None and seg.ack != (self.irs + int(m["ack"])) & MASK:
            problems.append(f"ack {(seg.ack - self.irs) & MASK} != {m['ack']}")
        if m["win"] is not None and seg.window != int(m["win"]):
            problems.append(f"win {seg.window} != {m['win']}")
        if m["opts"] is not None and m["opts"].strip() != "...":
            if seg.options.timestamps is not None and self.ts_offset is None:
                ts_text = re.search(r"TS val (\d+)", m["opts"])
                if ts_text:
                    self.ts_offset = seg.options.timestamps.tsval - int(ts_text[1])
            want = parse_options(m["opts"], ts_map=lambda v: v + (self.ts_offset or 0),
                                 seq_map=lambda v: self.irs + v)
            have = seg.options
            if want.timestamps is not None and have.timestamps is not None:
                # 1 ms clock: allow the tolerance on TS val.
                if abs(((have.timestamps.tsval - want.timestamps.tsval + 2**31) & MASK) - 2**31) \
                        <= max(1, int(self.tolerance * 1000)):
                    have = attrs.evolve(have, timestamps=want.timestamps)
            if have != want:
                problems.append(f"options {have!r} != {want!r}")
            elif self.strict_options and tuple(have.layout or ()) != tuple(want.layout or ()):
                problems.append(f"option layout {have.layout} != {want.layout}")
        if m["ecn"] is not None:
            want_ecn = {"ect0": 2, "ect1": 1, "ce": 3, "noecn": 0}[m["ecn"]]
            if seg.ecn != want_ecn:
                problems.append(f"ecn {seg.ecn} != {want_ecn}")
        if problems:
            raise ScriptError(f"{text!r}: {'; '.join(problems)}\ngot {seg!r}\n" + self.trace())

    def _call(self, text: str) -> None:
        words = text.split()
        name = words[0]
        conn = self.conn
        if name == "socket":  # a connection to configure (setopt) before ``connect``
            self.conn = Connection(LOCAL, REMOTE, iss=self.iss, options=self.options)
            return
        if name == "connect":
            if conn is None:
                self.conn = Connection(LOCAL, REMOTE, iss=self.iss, options=self.options)
            self.c.open_active(self.now)
            return
        if name == "none":
            if self.out:
                raise ScriptError("unexpected output: " + ", ".join(repr(e.seg) for e in self.out))
            return
        if conn is None:
            raise ScriptError(f"{name}: no connection")
        if name == "write":
            n = int(words[1])
            accepted = conn.send(bytes(i % 256 for i in range(n)))
            want = int(words[3]) if len(words) > 3 else n
            if accepted != want:
                raise ScriptError(f"write {n} accepted {accepted}, expected {want}")
        elif name == "read":
            data = conn.receive(int(words[1]))
            if len(words) > 3 and len(data) != int(words[3]):
                raise ScriptError(f"read returned {len(data)} bytes, expected {words[3]}")
        elif name == "close":
            conn.close()
        elif name == "shutdown_wr":
            conn.shutdown_write()
        elif name == "shutdown_rd":
            conn.shutdown_read()
        elif name == "abort":
            conn.abort()
        elif name == "setopt":
            # setopt nodelay=1 congestion=newreno user_timeout=0.5 (ints, floats or words)
            changes: dict[str, Any] = {}
            for item in words[1:]:
                key, _, value = item.partition("=")
                changes[key] = _literal(value)
            conn.set_options(**changes)
        else:
            raise ScriptError(f"unknown call {text!r}")

    def trace(self) -> str:
        return "trace:\n  " + "\n  ".join(self.log[-25:])

    @property
    def c(self) -> Connection:
        assert self.conn is not None
        return self.conn


# ------------------------------------------------------------------------------------------
# Two engines over a virtual channel.


@attrs.define
class Impairments:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # probability of extra delay that reorders
    delay: float = 0.01  # one-way base delay, seconds
    jitter: float = 0.0
    ce: float = 0.0  # probability that an ECT packet is marked CE (RFC 3168 router)
    outages: tuple[tuple[float, float], ...] = ()  # [start, end) intervals dropping everything


def gso_cut(seg: TcpSegment, mtu: int) -> list[TcpSegment]:
    """Cut a TSO super-segment as a device does (Linux tcp_gso_segment): pieces of ``mtu``
    less the headers, sequence numbers advanced, CWR on the first piece only, PSH and FIN on
    the last only, the same options (timestamps) on each."""
    piece = mtu - 40 - len(encode_options(seg.options))
    n = len(seg.payload)
    if n <= piece:
        return [seg]
    flags = int(seg.flags)
    last_only = int(TcpFlags.PSH | TcpFlags.FIN)
    out = []
    for off in range(0, n, piece):
        f = flags & ~last_only if off + piece < n else flags
        if off:
            f &= ~int(TcpFlags.CWR)
        out.append(attrs.evolve(seg, seq=(seg.seq + off) & MASK, flags=TcpFlags(f),
                                payload=seg.payload[off:off + piece]))
    return out


class VirtualNetwork:
    """Client and server engines joined by a seeded impaired channel, in virtual time.

    ``gso_max_size`` > 0: both engines may send TSO super-segments, which the channel cuts into
    MTU-sized packets (:func:`gso_cut`) before impairing each one, as a NIC or TUN device does.
    """

    def __init__(
        self,
        *,
        seed: int,
        impairments: Impairments,
        client_options: ConnectionOptions | None = None,
        server_options: ConnectionOptions | None = None,
        client_iss: int = 0xFFFFFF00,
        server_iss: int = 0xFFFFF000,
        gso_max_size: int = 0,
    ) -> None:
        self.rng = random.Random(seed)
        self.gso_max_size = gso_max_size
        self.super_segments = 0  # segments longer than one packet that the channel cut
        self.imp = impairments
        self.now = 0.0
        self.server_options = server_options or ConnectionOptions()
        self.server_iss = server_iss
        self.client = Connection(("198.18.0.1", 40000), ("198.18.0.2", 80), iss=client_iss,
                                 options=client_options or ConnectionOptions(), conn_id=1)
        self.client.gso_max_size = gso_max_size
        self.server: Connection | None = None
        self.queue: list[tuple[float, int, str, TcpSegment]] = []
        self._n = 0
        self.sent = 0
        self.deadline_violations: list[tuple[float, float]] = []
        self.max_ooo = 0
        self.max_rcvbuf = 0
        self.max_sndbuf = 0
        self.client.open_active(0.0)
        self._flush(self.client, "server")

    def _send(self, seg: TcpSegment, to: str) -> None:
        imp = self.imp
        self.sent += 1
        if self.rng.random() < imp.loss:
            return
        if any(lo <= self.now < hi for lo, hi in imp.outages):
            return
        if seg.ecn in (1, 2) and self.rng.random() < imp.ce:
            seg = attrs.evolve(seg, tos=(seg.tos & ~3) | 3)
        copies = 2 if self.rng.random() < imp.duplicate else 1
        for _ in range(copies):
            delay = imp.delay + self.rng.random() * imp.jitter
            if self.rng.random() < imp.reorder:
                delay += self.rng.random() * 3 * imp.delay
            self._n += 1
            heapq.heappush(self.queue, (self.now + delay, self._n, to, seg))

    def _flush(self, conn: Connection, to: str) -> None:
        for seg in conn.poll_transmit(self.now):
            if self.gso_max_size:
                assert 40 + len(encode_options(seg.options)) + len(seg.payload) <= (
                    self.gso_max_size
                )
                pieces = gso_cut(seg, conn.pmtu)
                self.super_segments += len(pieces) > 1
                for piece in pieces:
                    self._send(piece, to)
            else:
                self._send(seg, to)

    def conns(self) -> list[Connection]:
        return [c for c in (self.client, self.server) if c is not None]

    def step(self) -> bool:
        """Advance to the next event (delivery or deadline); False when nothing is left."""
        times = []
        if self.queue:
            times.append(self.queue[0][0])
        for c in self.conns():
            d = c.next_deadline()
            if d is not None:
                if d < c.last_now - 1e-9:
                    self.deadline_violations.append((d, c.last_now))
                times.append(d)
        if not times:
            # Application calls since the last step (send, shutdown_write) may have output
            # waiting that no timer covers: poll once, as the stack does after each call.
            self._flush(self.client, "server")
            if self.server is not None:
                self._flush(self.server, "client")
            if not self.queue:
                return False
            times.append(self.queue[0][0])
        self.now = max(self.now, min(times))
        while self.queue and self.queue[0][0] <= self.now:
            _, _, to, seg = heapq.heappop(self.queue)
            if to == "server":
                if self.server is None:
                    if seg.flags & TcpFlags.SYN and not seg.flags & TcpFlags.ACK:
                        self.server = Connection.from_syn(
                            seg, iss=self.server_iss, options=self.server_options,
                            now=self.now, conn_id=2)
                        self.server.gso_max_size = self.gso_max_size
                    continue
                self.server.on_segment(seg, self.now)
            else:
                self.client.on_segment(seg, self.now)
        for c in self.conns():
            d = c.next_deadline()
            if d is not None and d <= self.now:
                c.on_timer(self.now)
        self._flush(self.client, "server")
        if self.server is not None:
            self._flush(self.server, "client")
        for c in self.conns():
            self.max_ooo = max(self.max_ooo, c.rcv.ooo.bytes_held)
            self.max_rcvbuf = max(self.max_rcvbuf, c.rcv.readable + c.rcv.ooo.bytes_held)
            self.max_sndbuf = max(self.max_sndbuf, len(c.sndbuf))
        return True

    def pump(self, conn: Connection, data: bytes, offset: int) -> int:
        if offset < len(data) and conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            offset += conn.send(data[offset:offset + 65536])
        return offset


# ------------------------------------------------------------------------------------------
# A bottleneck link model for congestion-control tests.


class Bottleneck:
    """One direction of a path: a drop-tail queue served at ``rate`` bytes/s, then a fixed
    propagation delay, plus optional random loss. Packets enter at ``send(t, pkt)``."""

    def __init__(self, *, rate: float, delay: float, queue_bytes: int, loss: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self.rate = rate
        self.delay = delay
        self.queue_bytes = queue_bytes
        self.loss = loss
        self.rng = rng or random.Random(1)
        self.busy_until = 0.0
        self.backlog: list[tuple[float, int]] = []  # (departure time, size) of queued packets
        self.drops = 0
        self.random_drops = 0
        self.delivered_bytes = 0

    def send(self, t: float, size: int) -> float | None:
        """Arrival time at the far end, or None if dropped."""
        while self.backlog and self.backlog[0][0] <= t:
            self.backlog.pop(0)
        queued = sum(s for _, s in self.backlog)
        if queued + size > self.queue_bytes:
            self.drops += 1
            return None
        start = max(t, self.busy_until)
        done = start + size / self.rate
        self.busy_until = done
        self.backlog.append((done, size))
        if self.loss and self.rng.random() < self.loss:
            self.random_drops += 1
            return None
        self.delivered_bytes += size
        return done + self.delay


def wire_size(seg: TcpSegment) -> int:
    return 40 + len(seg.payload) + (12 if seg.options.timestamps else 0)


def run_bulk_flows(
    *,
    flows: int,
    rate: float,
    rtt: float,
    queue_bytes: int,
    duration: float,
    loss: float = 0.0,
    congestion: str = "cubic",
    seed: int = 1,
    measure_from: float = 0.0,
    options: dict[str, Any] | None = None,
    stats: list[Connection] | None = None,
) -> list[int]:
    """Bulk senders sharing one bottleneck (data direction) with an unconstrained ACK path.

    Returns the bytes each flow's receiver got in ``[measure_from, duration]``.
    """
    rng = random.Random(seed)
    fwd = Bottleneck(rate=rate, delay=rtt / 2, queue_bytes=queue_bytes, loss=loss, rng=rng)
    opts = ConnectionOptions(congestion=congestion, send_buffer=4 * 1024 * 1024,
                             receive_buffer=8 * 1024 * 1024, **(options or {}))
    senders: list[Connection] = []
    receivers: list[Connection | None] = [None] * flows
    for i in range(flows):
        c = Connection(("198.18.0.1", 40000 + i), ("198.18.0.2", 80), iss=(i * 7919) & MASK,
                       options=opts, conn_id=i)
        c.open_active(0.0)
        senders.append(c)
    events: list[tuple[float, int, int, str, TcpSegment]] = []
    counter = 0
    now = 0.0
    got = [0] * flows
    blob = bytes(65536)

    def emit(i: int, who: str, conn: Connection) -> None:
        nonlocal counter
        for seg in conn.poll_transmit(now):
            if who == "s":
                arrive = fwd.send(now, wire_size(seg))
                if arrive is None:
                    continue
                to = "r"
            else:
                arrive = now + rtt / 2
                to = "s"
            counter += 1
            heapq.heappush(events, (arrive, counter, i, to, seg))

    for i, c in enumerate(senders):
        emit(i, "s", c)
    while now < duration:
        cand = [events[0][0]] if events else []
        for c in senders:
            d = c.next_deadline()
            if d is not None:
                cand.append(d)
        for r in receivers:
            if r is not None and (d := r.next_deadline()) is not None:
                cand.append(d)
        if not cand:
            break
        now = min(cand)
        touched: set[tuple[int, str]] = set()
        while events and events[0][0] <= now:
            _, _, i, to, seg = heapq.heappop(events)
            if to == "r":
                r = receivers[i]
                if r is None:
                    r = Connection.from_syn(seg, iss=(i * 104729 + 17) & MASK, options=opts,
                                            now=now, conn_id=100 + i)
                    receivers[i] = r
                else:
                    r.on_segment(seg, now)
                touched.add((i, "r"))
            else:
                senders[i].on_segment(seg, now)
                touched.add((i, "s"))
        for i in range(flows):
            s = senders[i]
            if (d := s.next_deadline()) is not None and d <= now:
                s.on_timer(now)
            while s.send_space and s.state is TcpState.ESTABLISHED:
                if not s.send(blob[: s.send_space]):
                    break
            emit(i, "s", s)
            r = receivers[i]
            if r is not None:
                if (d := r.next_deadline()) is not None and d <= now:
                    r.on_timer(now)
                data = r.receive(1 << 30)
                if now >= measure_from:
                    got[i] += len(data)
                emit(i, "r", r)
    if stats is not None:
        stats.extend(senders)
    return got


def jain(xs: Sequence[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))
