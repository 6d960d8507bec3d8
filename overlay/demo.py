"""``overlay demo``: a RON-style 8-node overlay through an outage and a loss episode.

The topology is ``testbeds/topologies/ron8.toml`` (8 sites, wide-area delays, 10 Mbit/s links,
three flows; one of them routed for loss). Its default scenario cuts a link on the active
mit->ucsd path for 10 s, then raises loss on the nl-aros link under the loss-routed nl->aros
flow to 10 % for 10 s. Everything runs in one process on the emulated testbed
(:mod:`testbeds.emulated`: a tcpstack stack plus an overlay node per site on one MemoryNetwork)
in virtual time (trio's MockClock), so a 45 s scenario costs only the CPU it needs and replays
exactly from its seed.

What it reports (:mod:`testbeds.scenario` measures it): per episode and flow the source's path
just before the episode, just before it ended and at the next episode (or the end), and for the
flows whose path crossed the affected link two failover times from the episode's start:
``reroute`` (the source switched to a path avoiding the link) and ``resume`` (the destination
received the first message that travelled such a path). RON (Andersen et al., SOSP 2001)
probed every ~12 s and took ~18 s on average to route around an outage.

The figure has one panel per affected (episode, flow): the flow's one-way latency per delivered
message, the overlay's estimate of the affected link's RTT (its TCP srtt or probe RTT, as
advertised) and the link's loss estimate on a second axis, the episode shaded, and every path
switch of the flow's source as a vertical line labelled with the new path.

``duration`` shortens (or stretches) the run: event times are scaled by ``duration`` over the
topology's duration, so both episodes still happen, only shorter.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:  # the testbed, trio and matplotlib load only when the demo runs
    from testbeds.scenario import RunResult
    from testbeds.topology import Topology

__all__ = ["DEFAULT_TOPOLOGY", "DemoResult", "add_arguments", "run_demo", "run_from_args"]

DEFAULT_TOPOLOGY: Final = "ron8.toml"
RON_FAILOVER: Final = 18.0  # s, RON's mean time to route around an outage (SOSP 2001)
SAMPLE_INTERVAL: Final = 0.25  # s between link samples in the record (the figure's resolution)
MIN_DURATION: Final = 10.0  # s; shorter runs leave no time to converge before the first event


@attrs.frozen(slots=True)
class DemoResult:
    """What :func:`run_demo` produced: the table text, the files written, the cost."""

    table: str
    result: RunResult
    records: str  # JSON lines path
    figure: str | None  # PNG path, None with plot=False
    wall: float  # s
    cpu: float  # s of process CPU time


def default_topology_path() -> str:
    return str(resources.files("testbeds") / "topologies" / DEFAULT_TOPOLOGY)


def _scaled(topology: Topology, duration: float | None) -> Topology:
    """``topology`` with its events' times scaled to fit ``duration`` (see module docstring)."""
    if duration is None or topology.duration is None:
        return topology
    factor = duration / topology.duration
    events = [attrs.evolve(e, at=e.at * factor) for e in topology.events]
    return attrs.evolve(topology, events=events, duration=duration)


def run_demo(
    out: str,
    *,
    seed: int = 0,
    duration: float | None = None,
    plot: bool = True,
    topology_path: str | None = None,
    scenario: str = "default",
) -> DemoResult:
    """Run the scenario in virtual time, write ``out/<name>-demo.jsonl`` (and ``.png``)."""
    import trio
    import trio.testing

    from testbeds.emulated import Recorder, seed_trio_scheduler
    from testbeds.scenario import format_result, run_scenario
    from testbeds.topology import Topology

    if duration is not None and not (math.isfinite(duration) and duration >= MIN_DURATION):
        raise ValueError(f"duration must be at least {MIN_DURATION:g} s, got {duration!r}")
    topology = Topology.from_toml(topology_path or default_topology_path())
    topology = _scaled(topology.with_scenario(scenario), duration)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"{topology.name}-demo")
    recorder = Recorder(stem + ".jsonl")
    wall, cpu = time.perf_counter(), time.process_time()

    async def main() -> RunResult:
        return await run_scenario(
            topology, seed=seed, recorder=recorder, sample_interval=SAMPLE_INTERVAL,
            scenario=scenario,
        )

    seed_trio_scheduler(seed)
    try:
        result = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        recorder.close()
    figure = None
    if plot:
        figure = stem + ".png"
        plot_run(recorder.records(), result, figure)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    table = "\n".join([format_result(result), "", *failover_lines(result)])
    return DemoResult(table, result, stem + ".jsonl", figure, wall, cpu)


def failover_lines(result: RunResult) -> list[str]:
    """One line per flow whose path crossed an affected link: its failover times vs RON's."""
    lines = ["failover (flows whose path crossed the affected link; RON: ~18 s):"]
    affected = [r for r in result.rows if r.affected]
    if not affected:
        return [*lines, "  (none: no episode touched a flow's path)"]
    for r in affected:
        flow = f"{r.flow.src}->{r.flow.dst} ({r.flow.policy})"
        if r.resume is None:
            lines.append(f"  {r.episode.label}: {flow} never resumed on another path")
            continue
        reroute = "never" if r.reroute is None else f"{r.reroute:.3f} s"
        lines.append(
            f"  {r.episode.label}: {flow} rerouted after {reroute}, first delivery over the new "
            f"path after {r.resume:.3f} s ({RON_FAILOVER / max(r.resume, 1e-9):.0f}x faster than "
            "RON's ~18 s)"
        )
    return lines


def _crosses(path: Sequence[str] | None, a: str, b: str) -> bool:
    return path is not None and any({x, y} == {a, b} for x, y in zip(path, path[1:], strict=False))


def plot_run(records: Sequence[dict[str, Any]], result: RunResult, path: str) -> None:
    """Write the figure described in the module docstring to ``path`` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [r for r in result.rows if r.affected] or [
        attrs.evolve(r, affected=False) for r in result.rows[: len(result.flows)]
    ]
    if not panels:
        fig, ax = plt.subplots(figsize=(10, 3))
        ax.text(0.5, 0.5, "no episodes or flows to plot", ha="center", va="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    flows = [s.flow for s in result.flows]
    for ax, row in zip(axes[:, 0], panels, strict=True):
        ep, flow = row.episode, row.flow
        index = flows.index(flow)
        deliveries = [r for r in records if r["type"] == "delivery" and r["flow"] == index]
        ax.plot([r["t"] for r in deliveries], [r["latency"] * 1e3 for r in deliveries], ".",
                ms=2.5, color="tab:blue", label=f"{flow.src}->{flow.dst} one-way latency")
        link = [r for r in records if r["type"] == "link" and r["node"] == ep.a and r["peer"] == ep.b]
        # NaN while the link is down or unmeasured: a gap in the line, not a bridge across it.
        rtt = [r["latency"] * 1e3 if r["up"] and math.isfinite(r["latency"]) else math.nan
               for r in link]
        ax.plot([r["t"] for r in link], rtt, "-", color="tab:green", lw=1.2,
                label=f"link {ep.a}-{ep.b} RTT estimate (gaps: down)")
        ax.set_yscale("log")  # a few ms of noise and a failover's second on one axis
        ax.set_ylabel("ms (log)")
        ax.set_xlabel("virtual time (s)")
        end = ep.end if ep.end is not None else result.duration
        ax.axvspan(ep.start, end, color="tab:red", alpha=0.08, label=ep.label)
        loss_ax = ax.twinx()
        loss_ax.plot([r["t"] for r in link], [r["loss"] * 100 for r in link], "-",
                     color="tab:orange", lw=1.2, label=f"link {ep.a}-{ep.b} loss estimate")
        loss_ax.set_ylabel("loss %")
        loss_ax.set_ylim(bottom=0)
        top = ax.get_ylim()[1]
        for change in records:
            if (
                change["type"] == "path" and change["node"] == flow.src
                and change["dst"] == flow.dst and change["policy"] == flow.policy
                and change["old"] is not None
            ):
                new = change["new"]
                crossing = _crosses(new, ep.a, ep.b)
                ax.axvline(change["t"], color="black" if crossing else "tab:purple", ls="--", lw=1)
                ax.text(change["t"], top * 0.9, " " + ("-".join(new) if new else "(none)"),
                        rotation=90, va="top", ha="left", fontsize=7)
        handles = ax.get_legend_handles_labels()
        extra = loss_ax.get_legend_handles_labels()
        ax.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper left", fontsize=7)
        ax.set_title(f"{ep.label}: flow {flow.src}->{flow.dst} ({flow.policy} policy); "
                     "dashed lines: path switches", fontsize=9)
        ax.set_xlim(0, result.duration)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=os.path.join("out", "demo"), metavar="DIR",
                        help="directory for the JSON lines record and the PNG (default: out/demo)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of impairments, ISNs, jitter and task scheduling (default 0)")
    parser.add_argument("--no-plot", dest="plot", action="store_false",
                        help="skip the PNG figure (and importing matplotlib)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="virtual seconds to run, with the event times scaled to fit "
                        f"(default: the topology's, 45 s for ron8; at least {MIN_DURATION:g})")
    parser.add_argument("--topology", default=None, metavar="FILE",
                        help="another topology file in the testbed TOML format (default: ron8)")
    parser.add_argument("--scenario", default="default", metavar="NAME",
                        help="the topology's event list to run (default: outage, then loss)")


def run_from_args(args: argparse.Namespace) -> int:
    import sys

    from testbeds.topology import TopologyError

    try:
        demo = run_demo(
            args.out, seed=args.seed, duration=args.duration, plot=args.plot,
            topology_path=args.topology, scenario=args.scenario,
        )
    except (TopologyError, ValueError) as exc:
        print(f"overlay demo: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"overlay demo: {exc}", file=sys.stderr)
        return 1
    print(demo.table)
    print()
    written = [demo.records] + ([demo.figure] if demo.figure else [])
    print(f"wrote {' and '.join(written)}")
    print(f"wall {demo.wall:.1f} s, CPU {demo.cpu:.1f} s")
    return 0
