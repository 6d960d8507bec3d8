"""RFC 6528 ISNs, and the listener's wake-ups (one acceptor per connection, no second schedule
point after a wait)."""

from __future__ import annotations

import hashlib
import socket
import struct

import trio
from stack_helpers import A, B

from tcpstack import open_stack
from tcpstack.isn import IsnGenerator
from tcpstack.links import MemoryNetwork

SECRET = bytes(range(32))


def _reference_isn(la: str, lp: int, ra: str, rp: int, now: float, secret: bytes) -> int:
    # RFC 6528 section 3: ISN = M + F(4-tuple, secret); M ticks every 4 us, F is keyed BLAKE2s.
    key = struct.pack("!4sH4sH", socket.inet_aton(la), lp, socket.inet_aton(ra), rp)
    f = int.from_bytes(hashlib.blake2s(key, key=secret, digest_size=4).digest(), "big")
    return (int(now * 250_000) + f) & 0xFFFFFFFF


def test_isn_is_the_rfc_6528_keyed_hash_plus_a_4_us_clock() -> None:
    isn = IsnGenerator(SECRET)
    for now in (0.0, 1.5, 12345.678):
        for tuple4 in ((A, 40000, B, 80), (B, 80, A, 40000), (A, 40001, B, 80)):
            assert isn(*tuple4, now) == _reference_isn(*tuple4, now, SECRET)
    # Same 4-tuple later: M moved by 250,000 per second (mod 2**32), F did not.
    assert (isn(A, 40000, B, 80, 2.0) - isn(A, 40000, B, 80, 1.0)) % 2**32 == 250_000
    # Another secret, another F: an off-path attacker who knows M learns nothing.
    assert IsnGenerator(SECRET[::-1])(A, 40000, B, 80, 1.0) != isn(A, 40000, B, 80, 1.0)
    # The keyed state is copied, never updated in place: repeated calls agree.
    assert isn(A, 40000, B, 80, 1.0) == isn(A, 40000, B, 80, 1.0)


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


async def test_one_acceptor_woken_per_connection(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            listener = await sb.open_tcp_listener(80)
            accepted: list[str] = []
            instrument = _Steps()

            async def acceptor(name: str) -> None:
                await listener.accept()
                accepted.append(name)

            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(acceptor, f"acceptor{i}", name=f"acceptor{i}")
                await trio.testing.wait_all_tasks_blocked()
                trio.lowlevel.add_instrument(instrument)
                await sa.open_tcp_stream(B, 80)
                await trio.testing.wait_all_tasks_blocked()
                trio.lowlevel.remove_instrument(instrument)
                assert len(accepted) == 1
                acceptor_steps = {k: v for k, v in instrument.steps.items() if k.startswith("acceptor")}
                # Only the acceptor that got the connection ran, and once: woken from park, it
                # returns without a second schedule point (parking was the checkpoint).
                assert acceptor_steps == {accepted[0]: 1}
                for _ in range(3):
                    await sa.open_tcp_stream(B, 80)
                await trio.testing.wait_all_tasks_blocked()
                assert sorted(accepted) == [f"acceptor{i}" for i in range(4)]
