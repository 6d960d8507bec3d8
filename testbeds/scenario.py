"""Run a topology's scenario on the emulated testbed with its traffic flows, and judge failover.

:func:`run_scenario` enters an :class:`~testbeds.emulated.EmulatedTestbed` with the overlay,
starts every :class:`~testbeds.topology.Flow` (a message of ``size`` bytes every ``interval``
seconds, stamped with flow index, sequence number and send time), lets the scheduled events
happen, and returns a :class:`RunResult`.

Episodes. An event that makes a link worse (``down``; ``loss`` or ``delay`` above the link's
value at the time) opens an episode on that link; the next event restoring it (``up``; loss or
delay back to at most the value before) closes it. For each episode and flow the result has the
source's path just before it, just before it closed ("during"), and at the next episode or the
end ("after"). If the path before crossed the link, two failover times are measured from the
episode start: ``reroute``, until the source's path changed to one avoiding the link, and
``resume``, until the destination first received a message that travelled such a path.
"""

from __future__ import annotations

import itertools
import math
import struct
import time
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio
import trio.testing

from testbeds.emulated import EmulatedTestbed, Recorder
from testbeds.topology import Event, EventKind, Flow, Topology

__all__ = ["Episode", "EpisodeRow", "FlowSummary", "RunResult", "format_result", "run_scenario"]

_STAMP: Final = struct.Struct("!IId")  # flow index, sequence number, send time (s since start)
_SETTLE: Final = 10.0  # s after the last event when a topology gives no duration


@attrs.frozen(slots=True)
class Episode:
    a: str
    b: str
    kind: str
    start: float
    end: float | None
    label: str


@attrs.frozen(slots=True)
class EpisodeRow:
    episode: Episode
    flow: Flow
    before: tuple[str, ...] | None
    during: tuple[str, ...] | None
    after: tuple[str, ...] | None
    affected: bool
    reroute: float | None
    resume: float | None


@attrs.frozen(slots=True)
class FlowSummary:
    flow: Flow
    sent: int
    delivered: int
    # Reliable messages the source still held unacknowledged when the run ended (in flight, or
    # delivered with the ack still on its way): sent - delivered <= unacked means none was lost.
    unacked: int
    median_latency: float | None
    longest_gap: float
    gap_at: float | None


@attrs.frozen(slots=True)
class RunResult:
    topology: str
    scenario: str
    duration: float
    wall: float
    rows: tuple[EpisodeRow, ...]
    flows: tuple[FlowSummary, ...]
    path_changes: int
    records: int
    virtual: bool = False  # run under trio's MockClock

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self, value_serializer=_json_value)


def _json_value(_inst: object, _field: object, value: Any) -> Any:
    return value.value if isinstance(value, EventKind) else value


@attrs.define
class _FlowLog:
    sent: int = 0
    deliveries: list[tuple[float, float, tuple[str, ...]]] = attrs.Factory(list)  # recv, sent, path


def _crosses(path: Sequence[str] | None, a: str, b: str) -> bool:
    if path is None:
        return False
    return any({x, y} == {a, b} for x, y in itertools.pairwise(path))


def episodes(topology: Topology, applied: Sequence[tuple[float, Event]]) -> list[Episode]:
    """Pair each worsening event with the event that restores its link (see module docstring)."""
    current = {link.key: (link.loss, link.delay) for link in topology.links}
    open_: dict[frozenset[str], tuple[Episode, float]] = {}  # link -> (episode, value before)
    done: list[Episode] = []
    for at, event in applied:
        key = frozenset((event.a, event.b))
        loss, delay = current[key]
        episode = open_.get(key)
        if episode is not None and _restores(event, episode[0].kind, episode[1]):
            done.append(attrs.evolve(episode[0], end=at))
            del open_[key]
        elif episode is None and _worsens(event, loss, delay):
            before = loss if event.kind is EventKind.LOSS else delay
            open_[key] = (Episode(event.a, event.b, event.kind.value, at, None, event.describe()), before)
        if event.kind is EventKind.LOSS:
            current[key] = (event.value or 0.0, delay)
        elif event.kind is EventKind.DELAY:
            current[key] = (loss, event.value or 0.0)
    done.extend(e for e, _ in open_.values())
    return sorted(done, key=lambda e: e.start)


def _worsens(event: Event, loss: float, delay: float) -> bool:
    if event.kind is EventKind.DOWN:
        return True
    if event.kind is EventKind.LOSS:
        return (event.value or 0.0) > loss
    if event.kind is EventKind.DELAY:
        return (event.value or 0.0) > delay
    return False


def _restores(event: Event, kind: str, before: float) -> bool:
    if kind == "down":
        return event.kind is EventKind.UP
    if event.kind.value != kind:
        return False
    return (event.value or 0.0) <= before


async def run_scenario(
    topology: Topology,
    *,
    duration: float | None = None,
    seed: int = 0,
    recorder: Recorder | None = None,
    sample_interval: float = 1.0,
    overlay_settings: dict[str, Any] | None = None,
    scenario: str = "default",
) -> RunResult:
    """Run ``topology``'s events and flows for ``duration`` s (default: the topology's, else
    10 s after the last event) and measure paths and failover."""
    if duration is None:
        last = max((e.at for e in topology.events), default=0.0)
        duration = topology.duration or last + _SETTLE
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
    recorder = recorder or Recorder()
    flows = topology.flows
    logs = [_FlowLog() for _ in flows]
    snapshots: list[tuple[float, dict[int, tuple[str, ...] | None]]] = []
    wall = time.perf_counter()
    virtual = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    async with EmulatedTestbed(
        topology, seed=seed, recorder=recorder, sample_interval=sample_interval,
        overlay_settings=overlay_settings,
    ) as tb:

        def snapshot(_event: Event | None = None) -> None:
            paths = {i: tb.node(f.src).best_path(f.dst, f.policy) for i, f in enumerate(flows)}
            snapshots.append((tb.now(), paths))

        tb.before_event.append(snapshot)
        for i, flow in enumerate(flows):
            tb.start_soon(_send_flow, tb, i, flow, logs[i])
        for node in sorted({f.dst for f in flows}):
            tb.start_soon(_receive, tb, node, logs, recorder)
        await trio.sleep_until(tb.started_at + duration)
        snapshot()
        applied = list(tb.applied)
        unacked = [tb.node(f.src).unacknowledged(f.dst, flow=i) for i, f in enumerate(flows)]
    wall = time.perf_counter() - wall
    path_records = recorder.records("path")
    rows = _rows(topology, flows, applied, snapshots, path_records, logs)
    summaries = tuple(
        _summary(flow, log, count)
        for flow, log, count in zip(flows, logs, unacked, strict=True)
    )
    return RunResult(
        topology=topology.name, scenario=scenario, duration=duration, wall=wall, rows=tuple(rows),
        flows=summaries, path_changes=len(path_records), records=recorder.written,
        virtual=virtual,
    )


async def _send_flow(tb: EmulatedTestbed, index: int, flow: Flow, log: _FlowLog) -> None:
    node = tb.node(flow.src)
    padding = bytes(max(0, flow.size - _STAMP.size))
    seq = 0
    next_at = trio.current_time()
    while True:
        payload = _STAMP.pack(index, seq, tb.now()) + padding
        await node.send(flow.dst, payload, policy=flow.policy, reliable=flow.reliable, flow=index)
        log.sent += 1
        seq += 1
        next_at += flow.interval
        await trio.sleep_until(next_at)


async def _receive(tb: EmulatedTestbed, node_id: str, logs: list[_FlowLog], recorder: Recorder) -> None:
    node = tb.node(node_id)
    while True:
        delivery = await node.receive()
        if len(delivery.payload) < _STAMP.size:
            continue  # not one of ours
        index, seq, sent = _STAMP.unpack_from(delivery.payload)
        if index >= len(logs):
            continue
        now = tb.now()
        logs[index].deliveries.append((now, sent, delivery.path))
        recorder.write("delivery", flow=index, seq=seq, src=delivery.src, dst=node_id,
                       latency=round(now - sent, 6), path=list(delivery.path))


def _rows(
    topology: Topology,
    flows: Sequence[Flow],
    applied: Sequence[tuple[float, Event]],
    snapshots: Sequence[tuple[float, dict[int, tuple[str, ...] | None]]],
    path_records: Sequence[dict[str, Any]],
    logs: Sequence[_FlowLog],
) -> list[EpisodeRow]:
    def path_at(t: float, index: int) -> tuple[str, ...] | None:
        # The snapshot taken at ``t`` (just before the event there) or the next one after it.
        for at, paths in snapshots:
            if at >= t - 1e-9:
                return paths[index]
        return snapshots[-1][1][index]

    eps = episodes(topology, applied)
    rows = []
    for n, ep in enumerate(eps):
        following = eps[n + 1].start if n + 1 < len(eps) else math.inf
        for i, flow in enumerate(flows):
            before = path_at(ep.start, i)
            during = path_at(ep.end if ep.end is not None else math.inf, i)
            after = path_at(following, i)
            affected = _crosses(before, ep.a, ep.b)
            reroute = resume = None
            if affected:
                for record in path_records:
                    if (
                        record["t"] >= ep.start and record["node"] == flow.src
                        and record["dst"] == flow.dst and record["policy"] == flow.policy
                        and record["new"] is not None and not _crosses(record["new"], ep.a, ep.b)
                    ):
                        reroute = record["t"] - ep.start
                        break
                for received, _sent, path in logs[i].deliveries:
                    if received >= ep.start and not _crosses(path, ep.a, ep.b):
                        resume = received - ep.start
                        break
            rows.append(EpisodeRow(ep, flow, before, during, after, affected, reroute, resume))
    return rows


def _summary(flow: Flow, log: _FlowLog, unacked: int) -> FlowSummary:
    latencies = sorted(received - sent for received, sent, _ in log.deliveries)
    times = sorted(received for received, _, _ in log.deliveries)
    gap, gap_at = 0.0, None
    for earlier, later in itertools.pairwise(times):
        if later - earlier > gap:
            gap, gap_at = later - earlier, earlier
    return FlowSummary(
        flow=flow, sent=log.sent, delivered=len(log.deliveries), unacked=unacked,
        median_latency=latencies[len(latencies) // 2] if latencies else None,
        longest_gap=gap, gap_at=gap_at,
    )


def _path(path: Sequence[str] | None) -> str:
    return "(none)" if path is None else "-".join(path)


def _seconds(value: float | None, affected: bool) -> str:
    if not affected:
        return "-"
    return "never" if value is None else f"{value:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines.extend(fmt.format(*row) for row in rows)
    return lines


def format_result(result: RunResult) -> str:
    """The result as text tables: paths and failover per episode and flow, then per flow."""
    speed = result.duration / result.wall if result.wall > 0 else math.inf
    lines = [
        f"{result.topology} scenario {result.scenario}: {result.duration:g} s "
        + (f"of virtual time in {result.wall:.1f} s wall ({speed:.1f}x)" if result.virtual
           else f"in real time ({result.wall:.1f} s wall)")
        + f", {result.path_changes} path changes, {result.records} records",
        "",
    ]
    if result.rows:
        lines += _table(
            ("episode", "flow", "policy", "before", "during", "after", "reroute s", "resume s"),
            [
                (
                    r.episode.label, f"{r.flow.src}->{r.flow.dst}", r.flow.policy, _path(r.before),
                    _path(r.during), _path(r.after), _seconds(r.reroute, r.affected),
                    _seconds(r.resume, r.affected),
                )
                for r in result.rows
            ],
        )
        lines.append("")
    elif not result.flows:
        lines += ["(no flows: nothing to judge; add [[flows]] to the topology)", ""]
    else:
        lines += ["(no events in this scenario)", ""]
    if result.flows:
        lines += _table(
            ("flow", "sent", "delivered", "unacked at end", "median latency ms", "longest gap s",
             "gap at s"),
            [
                (
                    f"{s.flow.src}->{s.flow.dst}", str(s.sent), str(s.delivered),
                    str(s.unacked) if s.flow.reliable else "-",
                    "-" if s.median_latency is None else f"{s.median_latency * 1000:.1f}",
                    f"{s.longest_gap:.3f}", "-" if s.gap_at is None else f"{s.gap_at:.2f}",
                )
                for s in result.flows
            ],
        )
    return "\n".join(lines)
