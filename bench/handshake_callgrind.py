"""Instructions per completed handshake (both sides), counted by valgrind's callgrind.

The timed handshake rate of ``bench/stack_memory.py`` moves with the machine's speed (on the
shared VM of ``RESULTS.md``, by up to a factor of two within minutes); an instruction count does
not. This runs the same workload as its handshake row (64 client tasks connecting to one
listener served by 64 accepting tasks, connections kept open) twice under callgrind, with N and
2N connections, and prints (instructions(2N) - instructions(N)) / N: the cost of one more
handshake with start-up and interpreter set-up cancelled out. The process exits as soon as the
last connection is accepted, so closing them is not counted.

Clocks (``--clock``):

``virtual``
    trio's MockClock with autojump: no time passes while the CPU works, so no timer ever comes
    due during the run.
``work``
    virtual time advances ``--step`` seconds at every clock read, so timers come due as work
    proceeds, as on the real clock (the default step makes one handshake take about a
    millisecond, so the SYNs' 1 s retransmission deadlines fall inside the counted runs).

Needs valgrind (``apt-get install valgrind``). Usage::

    .venv/bin/python bench/handshake_callgrind.py [--clock virtual|work] [-n 1024]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

import trio
import trio.testing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from stack_memory import A, B  # noqa: E402  (bench/ is not a package)

from tcpstack import open_stack  # noqa: E402
from tcpstack.links.memory import MemoryNetwork  # noqa: E402

PARALLEL = 64


class WorkClock(trio.abc.Clock):
    """Virtual time that advances ``step`` seconds at every read, and jumps to the next deadline
    when every task is blocked (as MockClock's autojump)."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        self.now += self.step
        return self.now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        if self.now < deadline < math.inf:
            self.now = deadline
        return 0.0


async def _handshakes(total: int) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            listener = await sb.open_tcp_listener(80, backlog=4096)
            per_client = total // PARALLEL
            kept: list[object] = []
            accepted = 0

            async def server() -> None:
                nonlocal accepted
                while True:
                    kept.append(await listener.accept())
                    accepted += 1
                    if accepted == per_client * PARALLEL:
                        sys.stdout.flush()
                        os._exit(0)  # stop counting here: the close-down is not a handshake

            async def client() -> None:
                for _ in range(per_client):
                    kept.append(await sa.open_tcp_stream(B, 80))

            async with trio.open_nursery() as nursery:
                for _ in range(PARALLEL):
                    nursery.start_soon(server)
                for _ in range(PARALLEL):
                    nursery.start_soon(client)


def _child(n: int, clock: str, step: float) -> None:
    the_clock: trio.abc.Clock
    if clock == "work":
        the_clock = WorkClock(step)
    else:
        the_clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(_handshakes, n, clock=the_clock)
    raise SystemExit("the run ended before every connection was accepted")


def _count(n: int, clock: str, step: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
            sys.executable, os.path.abspath(__file__), "--child", str(n), "--clock", clock,
            "--step", repr(step),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1024,
                        help="connections of the smaller run (the larger has twice as many)")
    parser.add_argument("--clock", choices=("virtual", "work"), default="virtual")
    parser.add_argument("--step", type=float, default=300e-6,
                        help="seconds the work clock advances per read (default 300e-6)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child, args.clock, args.step)
        return 0
    if args.n < PARALLEL or args.n % PARALLEL:
        parser.error(f"-n must be a positive multiple of {PARALLEL}")
    if shutil.which("valgrind") is None:
        print("handshake_callgrind: valgrind is not installed (apt-get install valgrind)",
              file=sys.stderr)
        return 2
    small = _count(args.n, args.clock, args.step)
    large = _count(2 * args.n, args.clock, args.step)
    print(f"command: {' '.join([os.path.relpath(sys.executable)] + sys.argv)}")
    print(f"clock: {args.clock}" + (f" (step {args.step:g} s per read)" if args.clock == "work"
                                     else ""))
    print(f"instructions: {small:,} for {args.n} handshakes, {large:,} for {2 * args.n}")
    print(f"per handshake, both sides: {(large - small) // args.n:,} instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
