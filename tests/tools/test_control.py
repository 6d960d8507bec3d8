"""Control sockets: `tcpstack ss` and `tcpstack capture` reaching a running stack (real clock)."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import dpkt
import trio

from tcpstack import open_stack
from tcpstack.commands.ss import render
from tcpstack.control import CaptureSwitch, list_sockets, query, serve_control
from tcpstack.links.memory import MemoryNetwork

A, B = "198.18.9.1", "198.18.9.2"


async def _pair_with_connection(tmp_path: Path, body):  # type: ignore[no-untyped-def]
    async with MemoryNetwork(seed=4) as net:
        switch = CaptureSwitch(net.attach(A))
        async with open_stack(switch, seed=1) as sa, open_stack(net.attach(B), seed=2) as sb, \
                trio.open_nursery() as nursery:
            path = await nursery.start(partial(serve_control, sa, name="test", link_kind="memory",
                                               switch=switch, directory=tmp_path))
            listener = await sb.open_tcp_listener(9000)
            client = await sa.open_tcp_stream(B, 9000)
            server = await listener.accept()
            await body(path, client, server)
            nursery.cancel_scope.cancel()
    assert not path.exists(), "the socket file outlives its server"


async def test_connections_reply_has_every_connection_with_tcpinfo(tmp_path: Path) -> None:
    async def body(path, client, server):  # type: ignore[no-untyped-def]
        await client.send_all(b"x" * 5000)
        got = 0
        while got < 5000:
            got += len(await server.receive_some())
        reply = await query(path, {"cmd": "connections"})
        assert reply["name"] == "test" and reply["pid"] == os.getpid()
        assert reply["address"] == A
        [conn] = reply["connections"]
        assert conn["state"] == "ESTABLISHED"
        assert conn["remote"] == [B, 9000]
        assert conn["local"] == [A, client.local[1]]
        assert conn["info"]["bytes_acked"] == 5000
        text = render([reply], info=True, listening=False)
        assert f"{A}:{client.local[1]}" in text and f"{B}:9000" in text
        assert "ESTAB" in text and "wscale:" in text and "sack" in text

    await _pair_with_connection(tmp_path, body)


async def test_capture_writes_the_stacks_packets(tmp_path: Path) -> None:
    out = tmp_path / "cap.pcap"

    async def body(path, client, server):  # type: ignore[no-untyped-def]
        async def traffic() -> None:
            for _ in range(50):
                await client.send_all(b"y" * 1000)
                await server.receive_some()
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic)
            reply = await query(path, {"cmd": "capture", "path": str(out), "duration": 5,
                                       "count": 20})
        assert reply["packets"] >= 20

    await _pair_with_connection(tmp_path, body)
    with open(out, "rb") as f:
        records = list(dpkt.pcap.Reader(f))
    assert len(records) >= 20
    ip = dpkt.ip.IP(records[0][1])
    assert {ip.src, ip.dst} == {bytes([198, 18, 9, 1]), bytes([198, 18, 9, 2])}


async def test_bad_requests_get_errors_not_crashes(tmp_path: Path) -> None:
    async def body(path, client, server):  # type: ignore[no-untyped-def]
        for request, message in (({"cmd": "nope"}, "unknown command"),
                                 ({"cmd": "capture"}, "needs a 'path'")):
            try:
                await query(path, request)
            except Exception as exc:  # noqa: BLE001 - checking the message
                assert message in str(exc)
            else:
                raise AssertionError("error expected")
        # The server is still answering after bad requests.
        assert (await query(path, {"cmd": "connections"}))["ok"]

    await _pair_with_connection(tmp_path, body)


def test_sockets_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f"old.{int(dead.stdout)}.sock"
    stale.touch()
    live = tmp_path / f"me.{os.getpid()}.sock"
    live.touch()
    found = list_sockets(tmp_path)
    assert [s.name for s in found] == ["me"]
    assert not stale.exists()
