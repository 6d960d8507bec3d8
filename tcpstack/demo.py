"""``tcpstack demo``: two stacks, an impaired in-memory network, one bulk transfer, watched live.

What a new user runs first. The sender's cwnd, srtt and retransmissions are printed while the
transfer runs (one line rewritten in place on a terminal, periodic lines otherwise); at the end
come the TCPInfo of both ends, the sender stack's activity accounting, and a PNG with three panels
(cwnd, srtt, and the time-sequence graph) drawn with matplotlib.

The real clock is the default, so the transfer is watched as it happens; ``--virtual`` runs it
under trio's MockClock, as fast as the CPU allows, with identical results for a given seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio
import trio.testing

from tcpstack.activity import ActivityReport
from tcpstack.api import TCPStream, open_stack
from tcpstack.links import ImpairmentConfig, MemoryNetwork
from tcpstack.tcp.events import SegmentRetransmitted
from tcpstack.tcp.info import TCPInfo

__all__ = ["DemoConfig", "DemoResult", "Sample", "run_demo", "add_arguments", "main_from_args"]

SENDER = "198.18.0.1"
RECEIVER = "198.18.0.2"
PORT = 5001
SAMPLE_INTERVAL = 0.02  # s between samples of the sender's state
LIVE_INTERVAL = 0.25  # s between live lines


@attrs.frozen
class DemoConfig:
    size: int = 4_000_000  # bytes sent
    rate: float = 20e6  # bits/s of the bottleneck, each direction
    rtt: float = 0.040  # s, base round-trip time
    loss: float = 0.01  # per-packet loss, each direction
    buffer: int = 1 << 20  # send and receive buffers, bytes (well above the BDP)
    congestion: str = "cubic"
    seed: int = 1
    virtual: bool = False
    plot: Path | None = Path("out/demo.png")

    @property
    def bdp(self) -> int:
        return int(self.rate * self.rtt / 8)


@attrs.frozen
class Sample:
    time: float  # s since the transfer started
    cwnd: int  # bytes
    srtt: float  # s
    retrans: int  # segments retransmitted so far
    sent: int  # bytes: snd_nxt since the first data byte
    acked: int  # bytes: snd_una since the first data byte


@attrs.define
class DemoResult:
    config: DemoConfig
    duration: float  # s (virtual or real, as the clock ran)
    wall: float  # s of real time
    intact: bool
    sender: TCPInfo
    receiver: TCPInfo
    activity: ActivityReport
    samples: list[Sample]
    retransmissions: list[tuple[float, int]]  # (time, offset) of each retransmitted range
    plot_path: Path | None = None
    plot_axes: int = 0

    @property
    def goodput(self) -> float:
        """Bits per second of application data."""
        return self.config.size * 8 / self.duration if self.duration > 0 else 0.0


def _payload(size: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


class _Live:
    """One status line: rewritten in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.width = 0

    def show(self, line: str) -> None:
        if self.tty:
            self.out.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


async def _transfer(config: DemoConfig, out: TextIO) -> DemoResult:
    data = _payload(config.size, config.seed)
    one_way = ImpairmentConfig(
        delay=config.rtt / 2, loss=config.loss, rate=config.rate, queue_bytes=max(config.bdp, 3000)
    )
    options: dict[str, Any] = {
        "send_buffer": config.buffer, "receive_buffer": config.buffer,
        "congestion": config.congestion,
    }
    samples: list[Sample] = []
    retransmissions: list[tuple[float, int]] = []
    received = bytearray()
    live = _Live(out)
    wall_start = time.perf_counter()
    async with MemoryNetwork(seed=config.seed) as net:
        link_s = net.attach(SENDER, impairment=one_way)
        link_r = net.attach(RECEIVER, impairment=one_way)
        async with (
            open_stack(link_s, seed=config.seed, accounting=True, **options) as sender_stack,
            open_stack(link_r, seed=config.seed + 1, **options) as receiver_stack,
        ):
            listener = await receiver_stack.open_tcp_listener(PORT)
            stream = await sender_stack.open_tcp_stream(RECEIVER, PORT)
            peer = await listener.accept()
            base = stream.conn.snd_nxt
            start = trio.current_time()
            finished = trio.Event()

            async def receive() -> None:
                while chunk := await peer.receive_some():
                    received.extend(chunk)
                await peer.aclose()

            async def send() -> None:
                await stream.send_all(data)
                await stream.send_eof()
                while stream.conn.snd_una < stream.conn.snd_nxt:
                    await trio.sleep(SAMPLE_INTERVAL)
                finished.set()

            async def watch_events(s: TCPStream) -> None:
                async for ev in s.events():
                    if isinstance(ev, SegmentRetransmitted):
                        offset = (ev.start - base) & 0xFFFFFFFF
                        retransmissions.append((ev.time - start, offset))

            def sample() -> Sample:
                info = stream.info()
                conn = stream.conn
                return Sample(
                    time=trio.current_time() - start,
                    cwnd=info.snd_cwnd * info.snd_mss,
                    srtt=info.rtt / 1e6,
                    retrans=info.total_retrans,
                    sent=min(conn.snd_nxt - base, config.size),
                    acked=min(conn.snd_una - base, config.size),
                )

            async def sampler() -> None:
                next_live = 0.0
                while not finished.is_set():
                    s = sample()
                    samples.append(s)
                    if s.time >= next_live:
                        next_live += LIVE_INTERVAL
                        rate = s.acked * 8 / s.time / 1e6 if s.time > 0 else 0.0
                        live.show(
                            f"t={s.time:6.2f}s  acked {s.acked / 1e6:5.2f}/{config.size / 1e6:.2f} MB"
                            f"  cwnd {s.cwnd // 1024:5d} KiB  srtt {s.srtt * 1e3:6.1f} ms"
                            f"  retrans {s.retrans:4d}  goodput {rate:5.1f} Mbit/s"
                        )
                    with trio.move_on_after(SAMPLE_INTERVAL):
                        await finished.wait()
                samples.append(sample())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                nursery.start_soon(sampler)
                nursery.start_soon(watch_events, stream)
                await send()
                duration = trio.current_time() - start
                sender_info = stream.info()
                receiver_info = peer.info()
                activity = sender_stack.activity()
                await stream.aclose()
                nursery.cancel_scope.cancel()
            live.done()
            await listener.aclose()
    return DemoResult(
        config=config, duration=duration, wall=time.perf_counter() - wall_start,
        intact=bytes(received) == data, sender=sender_info, receiver=receiver_info,
        activity=activity, samples=samples, retransmissions=retransmissions,
    )


def plot(result: DemoResult, path: Path) -> int:
    """Draw cwnd, srtt and the time-sequence graph to ``path``; returns the number of axes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    t = [s.time for s in result.samples]
    fig, (ax_cwnd, ax_rtt, ax_seq) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    try:
        cfg = result.config
        fig.suptitle(
            f"tcpstack demo: {cfg.size / 1e6:.1f} MB over {cfg.rate / 1e6:g} Mbit/s, "
            f"{cfg.rtt * 1e3:g} ms RTT, {cfg.loss:.1%} loss ({cfg.congestion})"
        )
        ax_cwnd.plot(t, [s.cwnd / 1024 for s in result.samples], color="tab:blue")
        ax_cwnd.axhline(cfg.bdp / 1024, color="grey", linestyle=":", label="BDP")
        ax_cwnd.set_ylabel("cwnd (KiB)")
        ax_cwnd.legend(loc="upper right")
        ax_rtt.plot(t, [s.srtt * 1e3 for s in result.samples], color="tab:orange")
        ax_rtt.axhline(cfg.rtt * 1e3, color="grey", linestyle=":", label="base RTT")
        ax_rtt.set_ylabel("srtt (ms)")
        ax_rtt.legend(loc="upper right")
        ax_seq.plot(t, [s.sent / 1e6 for s in result.samples], label="sent (snd_nxt)")
        ax_seq.plot(t, [s.acked / 1e6 for s in result.samples], label="acked (snd_una)")
        if result.retransmissions:
            rt, ro = zip(*result.retransmissions, strict=True)
            ax_seq.scatter(rt, [o / 1e6 for o in ro], s=8, color="red", marker="x",
                           label="retransmitted", zorder=3)
        ax_seq.set_ylabel("sequence offset (MB)")
        ax_seq.set_xlabel("time (s)")
        ax_seq.legend(loc="upper left")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return len(fig.axes)
    finally:
        plt.close(fig)


INFO_FIELDS = (
    ("state", ""), ("snd_mss", "B"), ("snd_cwnd", "seg"), ("snd_ssthresh", "seg"),
    ("rtt", "us"), ("rttvar", "us"), ("min_rtt", "us"), ("rto", "us"), ("total_retrans", "seg"),
    ("lost", "seg"), ("reordering", "seg"), ("bytes_acked", "B"), ("bytes_received", "B"),
    ("bytes_retrans", "B"), ("segs_out", ""), ("segs_in", ""), ("delivery_rate", "B/s"),
    ("busy_time", "us"), ("rwnd_limited", "us"), ("sndbuf_limited", "us"),
)


def report(result: DemoResult) -> str:
    """The closing tables: TCPInfo of both ends and the sender's activity accounting."""
    lines = [
        f"transferred {result.config.size} bytes in {result.duration:.2f} s "
        f"({'virtual' if result.config.virtual else 'real'} time, {result.wall:.2f} s wall): "
        f"goodput {result.goodput / 1e6:.2f} Mbit/s, data {'intact' if result.intact else 'CORRUPTED'}",
        "",
        f"{'TCPInfo':<16} {'sender':>14} {'receiver':>14}",
    ]
    for name, unit in INFO_FIELDS:
        a, b = getattr(result.sender, name), getattr(result.receiver, name)
        lines.append(f"{name:<16} {a:>14} {b:>14} {unit}")
    lines += ["", "activity accounting (sender stack)", result.activity.format_table()]
    if result.plot_path is not None:
        lines += ["", f"plot: {result.plot_path} ({result.plot_axes} panels)"]
    return "\n".join(lines)


def run_demo(config: DemoConfig, out: TextIO = sys.stdout) -> DemoResult:
    """Run the demo (blocking: it starts its own trio run) and return what it measured."""
    clock = trio.testing.MockClock(autojump_threshold=0) if config.virtual else None
    result: DemoResult = trio.run(_transfer, config, out, clock=clock)
    if config.plot is not None:
        result.plot_axes = plot(result, config.plot)
        result.plot_path = config.plot
    out.write(report(result) + "\n")
    out.flush()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--size", type=float, default=d.size / 1e6, help="megabytes to send (default %(default)s)")
    parser.add_argument("--rate", type=float, default=d.rate / 1e6, help="bottleneck Mbit/s (default %(default)s)")
    parser.add_argument("--rtt", type=float, default=d.rtt * 1e3, help="base RTT in ms (default %(default)s)")
    parser.add_argument("--loss", type=float, default=d.loss * 100, help="loss %% each direction (default %(default)s)")
    parser.add_argument("--congestion", default=d.congestion, help="congestion control (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the impairments (default %(default)s)")
    parser.add_argument("--virtual", action="store_true", help="virtual time (MockClock): as fast as the CPU allows")
    parser.add_argument("--plot", default=str(d.plot), help="PNG to write (default %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")


def main_from_args(args: argparse.Namespace) -> int:
    for name, low in (("size", 0.001), ("rate", 0.01), ("rtt", 0.0)):
        if getattr(args, name) < low:
            raise SystemExit(f"tcpstack demo: --{name} must be >= {low}")
    if not 0 <= args.loss < 100:
        raise SystemExit("tcpstack demo: --loss must be in [0, 100)")
    config = DemoConfig(
        size=int(args.size * 1e6), rate=args.rate * 1e6, rtt=args.rtt / 1e3, loss=args.loss / 100,
        congestion=args.congestion, seed=args.seed, virtual=args.virtual,
        plot=None if args.no_plot else Path(args.plot),
    )
    result = run_demo(config)
    return 0 if result.intact else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tcpstack demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))
