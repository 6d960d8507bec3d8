"""Activity-based accounting: off by default, counts what the stack did when on."""

from __future__ import annotations

import trio
from stack_helpers import A, B, exchange, payload, sha

from tcpstack import open_stack
from tcpstack.activity import Activity, ActivityMeter
from tcpstack.links import ImpairmentConfig, MemoryNetwork


async def test_off_by_default_counts_nothing(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            await exchange(sa, sb, payload(50_000, 1), payload(50_000, 2))
            report = sa.activity()
            assert report.enabled is False
            assert all(row.count == 0 and row.seconds == 0 for row in report.totals)


async def test_counts_match_what_the_stack_did(autojump_clock: trio.abc.Clock) -> None:
    cfg = ImpairmentConfig(delay=0.005)  # delayed ACK timers fire
    up, down = payload(400_000, 1), payload(300_000, 2)
    async with MemoryNetwork(seed=1) as net:
        async with (
            open_stack(net.attach(A, impairment=cfg), accounting=True) as sa,
            open_stack(net.attach(B, impairment=cfg)) as sb,
        ):
            assert sa.activity_enabled
            client, server = await exchange(sa, sb, up, down)
            assert sha(server.received) == sha(up) and sha(client.received) == sha(down)
            report = sa.activity()
            assert report.enabled and report.elapsed > 0
            assert report[Activity.RX_PARSE].count == sa.stats.packets_in
            assert report[Activity.BUILD].count == sa.stats.packets_out
            assert report[Activity.LINK_SEND].count == sa.stats.packets_out
            assert report[Activity.TCP_OUTPUT].count == sa.stats.packets_out
            assert report[Activity.TCP_INPUT].count == sa.stats.packets_in
            assert report[Activity.COPY_FROM_APP].count == len(up)
            assert report[Activity.COPY_TO_APP].count == len(down)
            assert report[Activity.TIMERS].count > 0
            for row in report.totals:
                assert row.seconds > 0 and row.calls > 0, row
            assert 0 < report.accounted < report.elapsed
            table = report.format_table()
            assert "rx parse" in table and "copy to app" in table and "timers" in table
            # B never had accounting on.
            assert sb.activity()[Activity.RX_PARSE].count == 0


async def test_enable_at_run_time_and_reset(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            await exchange(sa, sb, payload(10_000, 1), b"", port=1)
            sa.activity_enabled = True
            await exchange(sa, sb, payload(20_000, 1), b"", port=2)
            assert sa.activity()[Activity.COPY_FROM_APP].count == 20_000
            sa.activity_enabled = False
            await exchange(sa, sb, payload(30_000, 1), b"", port=3)
            assert sa.activity()[Activity.COPY_FROM_APP].count == 20_000
            sa.activity_enabled = True  # re-enabling starts from zero
            assert sa.activity()[Activity.COPY_FROM_APP].count == 0


def test_meter_table_shares() -> None:
    meter = ActivityMeter(True)
    meter.add(Activity.TIMERS, 2_000_000, 4)
    report = meter.report()
    assert report[Activity.TIMERS].seconds == 0.002
    assert report[Activity.TIMERS].us_per_item == 500.0
    assert report[Activity.TIMERS].calls == 1
    assert report.accounted == 0.002
