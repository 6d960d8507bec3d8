"""A path that dies under a steady trickle of new data is detected by the RTO on time.

Every new segment re-arms the tail-loss-probe timer (RFC 8985 7.2). Once a probe is outstanding
and the PTO fires again, the RTO takes over counted from the oldest outstanding segment's
transmission (Linux tcp_rearm_rto), not from that moment; otherwise the new data keeps pushing
the RTO out and a dead path goes unnoticed for as long as the application keeps writing.
"""

from __future__ import annotations

import trio

from tcpstack import open_stack
from tcpstack.links import ImpairmentConfig, MemoryNetwork
from tcpstack.tcp.events import RtoFired

A, B = "198.18.12.1", "198.18.12.2"


async def test_rto_fires_within_one_rto_of_the_cut_while_new_data_flows(
    autojump_clock: trio.abc.Clock,
) -> None:
    path = ImpairmentConfig(delay=0.010)
    async with MemoryNetwork(seed=1) as net:
        a, b = net.attach(A, impairment=path), net.attach(B, impairment=path)
        async with open_stack(a, seed=1, nodelay=True) as sa, \
                open_stack(b, seed=2, quickack=True) as sb:
            listener = await sb.open_tcp_listener(7000)
            client = await sa.open_tcp_stream(B, 7000)
            server = await listener.accept()
            rto_at: list[float] = []

            async def watch() -> None:
                async for event in client.events():
                    if isinstance(event, RtoFired):
                        rto_at.append(trio.current_time())
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                for _ in range(20):  # 1 s of messages every 50 ms, each one answered
                    await client.send_all(b"m" * 200)
                    await server.receive_some()
                    await trio.sleep(0.05)
                cut = trio.current_time()
                b.set_down(True)
                with trio.move_on_after(3):
                    while not rto_at:
                        await client.send_all(b"m" * 200)
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            assert rto_at, "no RTO within 3 s of the cut"
            # RTO (200 ms minimum, srtt 20 ms) plus at most one probe timeout (2*srtt + 10 ms).
            assert rto_at[0] - cut < 0.35, rto_at[0] - cut
            client.conn.abort()
