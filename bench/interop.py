"""Goodput of the user-level stack against the Linux kernel's TCP, in network namespaces (root).

One run measures, each way (download = kernel sends to the measured endpoint, upload = the
measured endpoint sends to the kernel), for:

1. the user stack over ``TunLink`` with checksum/TSO offload, with the veths' offloads off and
   on (on, the kernel coalesces what it forwards into the TUN device: GRO);
2. the same without offload;
3. the user stack over ``PcapLink`` (AF_PACKET in, raw socket and packet-socket GSO out, firewall
   guard), MTU 1500, veth offloads off and on;
4. kernel <-> kernel over the same veth (the ceiling), with veth offloads on and off;
5. PyTCP (``pip install pytcp``, a pure-Python stack) over a TAP device, when it installs.

The kernel peer is a small Python socket program in the server namespace; the measured endpoint
is in the client namespace, joined to it by a veth pair (TUN and TAP endpoints reach it through
the client namespace's forwarding). Goodput is application bytes over the time from the first
byte to the last, MB = 10**6 bytes. PyTCP is slow, so its transfers are bounded in time, not size.

    sudo .venv/bin/python bench/interop.py [--mbytes 200] [--only tun,pcap,kernel,pytcp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from testbeds.netns import Testnet, entered, offloads, root_skip_reason

ROOT = Path(__file__).resolve().parent.parent
PYTCP_VENV = Path(os.environ.get("PYTCP_VENV", "/tmp/tcpstack-bench-pytcp"))
PORT = 5201

# A kernel-TCP peer: "send N" writes N bytes to its first client; "recv" reads to EOF. It prints
# one JSON line with the byte count and the seconds from first to last byte.
KERNEL_PEER = textwrap.dedent("""
    import json, socket, sys, time
    mode, addr, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    limit = float(sys.argv[5]) if len(sys.argv) > 5 else 1e9
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept(); done = 0; buf = bytes(1 << 20); t0 = time.monotonic()
    if mode == "send":
        view = memoryview(buf)
        while done < n:
            done += c.send(view[: min(len(buf), n - done)])
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536): pass
    else:
        sink = bytearray(1 << 20); c.settimeout(1.0)
        while time.monotonic() - t0 < limit:
            try:
                k = c.recv_into(sink)
            except TimeoutError:
                continue
            if not k:
                break
            done += k
    print(json.dumps({"bytes": done, "seconds": time.monotonic() - t0}), flush=True)
""")

# The kernel as the measured endpoint (config 4): connect, then the opposite of the peer.
KERNEL_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    mode, addr, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = socket.create_connection((addr, port)); done = 0; t0 = time.monotonic()
    if mode == "recv":
        sink = bytearray(1 << 20)
        while k := c.recv_into(sink):
            done += k
    else:
        view = memoryview(bytes(1 << 20))
        while done < n:
            done += c.send(view[: min(len(view), n - done)])
        c.shutdown(socket.SHUT_WR); c.recv(1)
    print(json.dumps({"bytes": done, "seconds": time.monotonic() - t0}), flush=True)
""")


def _port(direction: str) -> int:
    # A port per direction: the second connection never meets the first one's TIME-WAIT.
    return PORT if direction == "download" else PORT + 1


def _peer(net: Testnet, mode: str, nbytes: int, limit: float = 1e9) -> subprocess.Popen[str]:
    port = _port("download" if mode == "send" else "upload")
    proc = net.server.popen(sys.executable, "-c", KERNEL_PEER, mode, net.server_addr, str(port),
                            str(nbytes), str(limit), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("kernel peer did not start")
    return proc


def _peer_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def kernel_pair(net: Testnet, nbytes: int) -> dict[str, float]:
    rates = {}
    for direction, peer_mode, client_mode in (("download", "send", "recv"),
                                              ("upload", "recv", "send")):
        peer = _peer(net, peer_mode, nbytes)
        client = net.client.run(sys.executable, "-c", KERNEL_CLIENT, client_mode,
                                net.server_addr, str(_port(direction)), str(nbytes), timeout=300)
        result = json.loads(client.strip().splitlines()[-1])
        received = _peer_result(peer, 60)
        if direction == "upload":  # what arrived, not what was handed to the socket
            result = received
        rates[direction] = result["bytes"] / result["seconds"] / 1e6
    return rates


async def _user_transfer(link: object, net: Testnet, direction: str, nbytes: int,
                         ephemeral: range | None) -> float:
    from tcpstack import open_stack

    options = {} if ephemeral is None else {"ephemeral_ports": ephemeral}
    async with open_stack(link, **options) as stack:  # type: ignore[arg-type]
        stream = await stack.open_tcp_stream(net.server_addr, _port(direction))
        done = 0
        start = time.monotonic()
        if direction == "download":
            while chunk := await stream.receive_some(1 << 20):
                done += len(chunk)
        else:
            block = bytes(1 << 20)
            while done < nbytes:
                n = min(len(block), nbytes - done)
                await stream.send_all(block[:n])
                done += n
            await stream.send_eof()
            await stream.receive_some(1)
        elapsed = time.monotonic() - start
        await stream.aclose()
    return done / elapsed / 1e6


def _route_to(net: Testnet, prefix: str) -> None:
    """Let the server namespace reach ``prefix`` (a TUN/TAP subnet) through the client's."""
    net.client.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    net.server.run("ip", "route", "replace", prefix, "via", net.client_addr)


async def _in_namespace(net: Testnet, open_link: Callable[[], Any], direction: str, nbytes: int,
                        ports: range | None) -> float:
    """Open the link inside the client namespace (its fds stay there), then transfer."""
    with entered(net.client):
        cm = open_link()
        link = await cm.__aenter__()
    try:
        return await _user_transfer(link, net, direction, nbytes, ports)
    finally:
        await cm.__aexit__(None, None, None)


def _user(net: Testnet, open_link: Callable[[], Any], nbytes: int,
          ports: range | None) -> dict[str, float]:
    rates = {}
    for direction, peer_mode in (("download", "send"), ("upload", "recv")):
        peer = _peer(net, peer_mode, nbytes)
        sent_rate = trio.run(_in_namespace, net, open_link, direction, nbytes, ports)
        received = _peer_result(peer, 60)
        rates[direction] = (received["bytes"] / received["seconds"] / 1e6
                            if direction == "upload" else sent_rate)
    return rates


def user_tun(net: Testnet, nbytes: int, *, offload: bool) -> dict[str, float]:
    from tcpstack.links.tun import open_tun_link

    _route_to(net, "198.18.254.0/30")
    return _user(net, lambda: open_tun_link(offload=offload), nbytes, None)


def user_pcap(net: Testnet, nbytes: int) -> dict[str, float]:
    from tcpstack.links.pcap import open_pcap_link

    ports = range(40000, 41000)
    return _user(net, lambda: open_pcap_link(net.client_dev, address=net.client_addr,
                                             ports=ports, netns=net.client.name),
                 nbytes, ports)


def _pytcp_python() -> Path | None:
    python = PYTCP_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PYTCP_VENV)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "pytcp"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(f"pytcp does not install: {done.stderr.strip().splitlines()[-1:]}")
            shutil.rmtree(PYTCP_VENV, ignore_errors=True)
            return None
    return python


def pytcp(net: Testnet, seconds: float) -> dict[str, float] | None:
    python = _pytcp_python()
    if python is None:
        return None
    net.client.run("ip", "tuntap", "add", "dev", "tap7", "mode", "tap")
    net.client.run("ip", "addr", "add", "198.18.253.1/24", "dev", "tap7")
    net.client.run("ip", "link", "set", "tap7", "up")
    _route_to(net, "198.18.253.0/24")
    rates = {}
    for direction, peer_mode in (("download", "send"), ("upload", "recv")):
        # PyTCP's send() returns once data is buffered: upload is measured where it arrives.
        peer = _peer(net, peer_mode, 10**9 if direction == "download" else 0, limit=seconds)
        out = net.client.run(str(python), str(ROOT / "bench" / "pytcp_peer.py"), direction,
                             "--tap", "tap7", "--address", "198.18.253.2/24",
                             "--gateway", "198.18.253.1", "--server", net.server_addr,
                             "--port", str(_port(direction)), "--seconds", str(seconds),
                             timeout=seconds + 60)
        result = json.loads(out.strip().splitlines()[-1])
        if direction == "upload":
            result = _peer_result(peer, 30)
        else:
            peer.kill()
            peer.wait()
        rates[direction] = result["bytes"] / result["seconds"] / 1e6
    return rates


def _fmt(rate: float) -> str:
    return f"{rate:.1f}" if rate >= 10 else f"{rate:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbytes", type=int, default=200, help="MB per direction (default 200)")
    parser.add_argument("--pytcp-seconds", type=float, default=20.0)
    parser.add_argument("--only", default="tun,tun-nooffload,pcap,kernel,pytcp")
    args = parser.parse_args()
    reason = root_skip_reason()
    if reason:
        print(f"interop bench skipped: {reason}")
        return 1
    nbytes = args.mbytes * 10**6
    only = set(args.only.split(","))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}")
    rows: list[tuple[str, dict[str, float] | None]] = []

    def run(label: str, key: str, fn, *, veth_offload: bool = False) -> None:  # type: ignore[no-untyped-def]
        if key not in only:
            return
        with Testnet.create() as net:
            for ns, dev in ((net.client, net.client_dev), (net.server, net.server_dev)):
                offloads(ns, dev, on=veth_offload)
            try:
                rows.append((label, fn(net)))
            except Exception as exc:  # noqa: BLE001 - a bench row reports its failure and goes on
                print(f"{label}: failed: {type(exc).__name__}: {exc}")
                rows.append((label, None))

    run("(1) user stack, TunLink, offload", "tun", lambda n: user_tun(n, nbytes, offload=True))
    run("(1) ... and veth offloads on (GRO)", "tun", lambda n: user_tun(n, nbytes, offload=True),
        veth_offload=True)
    run("(2) user stack, TunLink, no offload", "tun-nooffload",
        lambda n: user_tun(n, nbytes, offload=False))
    run("(3) user stack, PcapLink, MTU 1500", "pcap", lambda n: user_pcap(n, nbytes))
    run("(3) ... and veth offloads on", "pcap", lambda n: user_pcap(n, nbytes), veth_offload=True)
    run("(4) kernel <-> kernel, veth offloads off", "kernel", lambda n: kernel_pair(n, nbytes))
    run("(4) kernel <-> kernel, veth offloads on", "kernel", lambda n: kernel_pair(n, nbytes),
        veth_offload=True)
    run("(5) PyTCP, TAP", "pytcp", lambda n: pytcp(n, args.pytcp_seconds))

    kernel = next((r for label, r in rows if label.startswith("(4)") and r), None)
    print(f"{'configuration':<42}{'download MB/s':>15}{'upload MB/s':>13}"
          f"{'vs kernel (down/up)':>22}")
    for label, r in rows:
        if r is None:
            print(f"{label:<42}{'n/a':>15}{'n/a':>13}")
            continue
        ratio = (f"{r['download'] / kernel['download']:.4f}/{r['upload'] / kernel['upload']:.4f}"
                 if kernel else "")
        print(f"{label:<42}{_fmt(r['download']):>15}{_fmt(r['upload']):>13}{ratio:>22}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
