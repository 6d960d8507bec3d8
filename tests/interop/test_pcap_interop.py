"""The user stack on PcapLink against the Linux kernel's TCP, in network namespaces (root).

The stack runs on the client namespace's own address (the seed's design): raw IPv4 socket out,
a packet capture in (AF_PACKET by default, pypcap on request), the firewall guard keeping the
client kernel off the stack's ports.

- veth offloads off (whole, checksummed MTU-sized packets): the stack downloads 50 MB from
  ``python3 -m http.server`` in the server namespace, and the kernel's ``curl`` downloads 50 MB
  from an HTTP responder written here on the tcpstack API; the SHA-256 of what arrived must equal
  the file's; goodput is recorded (``record_property``);
- veth offloads on (the default, and most users' testbeds): the kernel peer sends super-segments
  with partial checksums; 8 MB each way over both capture backends, SHA-256 equal, the link
  accepting the partial checksums (and saying so in its counters) and dropping nothing;
- the server namespace counts, with an nftables counter, every RST that arrives from the client's
  address: zero while the guard is up; a control run without the guard shows the kernel's RST;
- no table of the stack's is left after it exits, after SIGTERM of a child process running a
  stack, and after ``tcpstack firewall --cleanup`` for a SIGKILLed one.
"""

from __future__ import annotations

import hashlib
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h11
import pytest
import trio

from tcpstack.api import Stack, open_stack
from tcpstack.cli import main as cli_main
from tcpstack.http import Url, http_get
from tcpstack.links.pcap import PcapLink, open_pcap_link
from testbeds.netns import Namespace, offloads, root_skip_reason
from testbeds.netns import Testnet as Net

_skip = root_skip_reason() or (None if shutil.which("curl") else "needs curl")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_skip is not None, reason=_skip or "")]

SIZE = 50_000_000
OFFLOAD_SIZE = 8_000_000
HTTP_PORT = 8000
PORTS = range(40000, 41000)
STACK_PORT = 40080  # the stack listens inside its guarded range, or the kernel would answer
DEADLINE = 150.0  # seconds for one whole transfer: a stall fails instead of hanging CI
RST_TABLE = "rstwatch"


@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """50 MB of seeded random octets in a file, and their SHA-256."""
    data = random.Random(5_2026).randbytes(SIZE)
    path = tmp_path_factory.mktemp("www") / "body.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def net(testnet: Net) -> Net:
    offloads(testnet.client, testnet.client_dev, on=False)
    offloads(testnet.server, testnet.server_dev, on=False)
    # Count every RST the server host receives from the client's address: a kernel RST (or the
    # stack's own) would show here; the stack closes gracefully, so the bar is zero.
    testnet.server.nft(
        f"table inet {RST_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority -200; policy accept;\n"
        f"    ip saddr {testnet.client_addr} tcp flags & rst == rst counter\n"
        "  }\n}\n"
    )
    return testnet


def rsts_from_client(net: Net) -> int:
    out = net.server.run("nft", "list", "table", "inet", RST_TABLE)
    return int(out.split("counter packets")[1].split()[0])


def guard_tables(ns: Namespace) -> list[str]:
    return [line.split()[-1] for line in ns.run("nft", "list", "tables").splitlines()
            if "tcpstack_" in line]


def reserved_ports(ns: Namespace) -> str:
    return ns.run("sysctl", "-n", "net.ipv4.ip_local_reserved_ports").strip()


async def wait_listening(ns: Namespace, port: int) -> None:
    for _ in range(200):
        if ns.run("ss", "-Hltn", f"sport = :{port}").strip():
            return
        await trio.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} in {ns.name} after 10 s")


def check_clean_transfer(link: PcapLink, stack: Stack) -> None:
    assert stack.stats.checksum_errors == 0 and stack.stats.malformed == 0
    assert link.checksum_offload and link.rx_stats.checksum_dropped == 0
    assert link.guard is not None and link.guard.dropped() > 0  # the kernel never saw them


async def download(net: Net, path: Path, *, backend: str = "afpacket"
                   ) -> tuple[int, str, float, PcapLink]:
    """GET ``path`` from ``python3 -m http.server`` over the user stack: (length, sha256,
    seconds, link)."""
    server = net.server.popen(
        sys.executable, "-m", "http.server", "--bind", net.server_addr, "--directory",
        str(path.parent), str(HTTP_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await wait_listening(net.server, HTTP_PORT)
        with trio.fail_after(DEADLINE):
            async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                                      name="interop", backend=backend) as link:
                assert link.guard is not None and guard_tables(net.client) == [link.guard.table]
                async with open_stack(link, ephemeral_ports=link.ports) as stack:
                    stream = await stack.open_tcp_stream(net.server_addr, HTTP_PORT)
                    assert stream.local[1] in PORTS
                    started = time.perf_counter()
                    sha = hashlib.sha256()
                    response = await http_get(stream, Url(net.server_addr, HTTP_PORT, f"/{path.name}"),
                                              sha.update)
                    status, length = response.status, response.body_bytes
                    elapsed = time.perf_counter() - started
                    await stream.aclose()
                    info = stream.info()
                check_clean_transfer(link, stack)
        assert status == 200
        assert info.bytes_received >= length
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
    assert guard_tables(net.client) == []
    assert reserved_ports(net.client) == ""
    return length, sha.hexdigest(), elapsed, link


async def test_stack_downloads_50mb_from_kernel_http_server(
    net: Net, body: tuple[Path, str], record_property: Callable[[str, object], None]
) -> None:
    path, digest = body
    length, sha, elapsed, link = await download(net, path)
    assert length == SIZE and sha == digest
    assert rsts_from_client(net) == 0
    # Offloads off: every packet arrives complete and unmarked, so the link checked each one.
    assert link.rx_stats.partial == 0 and link.rx_stats.software_verified > SIZE // 1500
    record_property("goodput_MBps_kernel_to_stack", round(SIZE / elapsed / 1e6, 1))
    print(f"pcap link, kernel -> stack: {SIZE / elapsed / 1e6:.1f} MB/s")


async def serve_one(stack: Stack, data: bytes) -> None:
    """Answer one GET with ``data`` over the user stack (HTTP/1.1 framing by h11)."""
    listener = await stack.open_tcp_listener(STACK_PORT)
    stream = await listener.accept()
    http = h11.Connection(h11.SERVER)
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise AssertionError("the client closed before sending a request")
            http.receive_data(chunk)
        elif isinstance(event, h11.Request):
            assert event.method == b"GET"
        elif isinstance(event, h11.EndOfMessage):
            break
    await stream.send_all(http.send(h11.Response(status_code=200, headers=[
        ("Content-Length", str(len(data))), ("Content-Type", "application/octet-stream")])))
    view = memoryview(data)
    for start in range(0, len(data), 1 << 20):
        await stream.send_all(view[start:start + (1 << 20)])
    await stream.send_eof()
    # Wait for curl's FIN: everything is acknowledged before the stack shuts down.
    while await stream.receive_some(65536):
        pass
    await stream.aclose()
    await listener.aclose()


async def upload(net: Net, data: bytes, out: Path, *, backend: str = "afpacket"
                 ) -> tuple[float, PcapLink]:
    """``curl`` in the server namespace GETs ``data`` from the user stack into ``out``:
    (seconds, link)."""
    with trio.fail_after(DEADLINE):
        async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                                  name="interop", backend=backend) as link:
            async with open_stack(link, ephemeral_ports=link.ports) as stack:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serve_one, stack, data)
                    await trio.testing.wait_all_tasks_blocked()
                    started = time.perf_counter()
                    result = await trio.run_process(
                        ["ip", "netns", "exec", net.server.name, "curl", "-sS", "--fail",
                         "--max-time", str(int(DEADLINE)), "-o", str(out),
                         f"http://{net.client_addr}:{STACK_PORT}/body.bin"],
                        capture_stdout=True, capture_stderr=True, check=False,
                    )
                    elapsed = time.perf_counter() - started
                    assert result.returncode == 0, result.stderr.decode(errors="replace")
            check_clean_transfer(link, stack)
    assert guard_tables(net.client) == []
    return elapsed, link


async def test_kernel_curl_downloads_50mb_from_stack(
    net: Net, body: tuple[Path, str], tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    path, digest = body
    out = tmp_path / "curl.out"
    elapsed, _ = await upload(net, path.read_bytes(), out)
    assert out.stat().st_size == SIZE
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert rsts_from_client(net) == 0
    record_property("goodput_MBps_stack_to_kernel", round(SIZE / elapsed / 1e6, 1))
    print(f"pcap link, stack -> kernel: {SIZE / elapsed / 1e6:.1f} MB/s")


@pytest.fixture
def net_offloading(testnet: Net) -> Net:
    """Veth offloads on (as the kernel sets them), with the RST counter of :func:`net`."""
    offloads(testnet.client, testnet.client_dev, on=True)
    offloads(testnet.server, testnet.server_dev, on=True)
    testnet.server.nft(
        f"table inet {RST_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority -200; policy accept;\n"
        f"    ip saddr {testnet.client_addr} tcp flags & rst == rst counter\n"
        "  }\n}\n"
    )
    return testnet


@pytest.mark.parametrize("backend", ["afpacket", "pcap"])
async def test_transfers_both_ways_with_veth_offloads_on(
    net_offloading: Net, tmp_path: Path, backend: str
) -> None:
    """The case that hung before the link judged checksums itself: a kernel peer on a veth with
    offloads on sends TSO super-segments whose checksum is only partial."""
    net = net_offloading
    data = random.Random(7_2026).randbytes(OFFLOAD_SIZE)
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "body.bin").write_bytes(data)
    length, sha, _, link = await download(net, tmp_path / "body.bin", backend=backend)
    assert (length, sha) == (OFFLOAD_SIZE, digest)
    # The kernel sent partial checksums (and segments beyond the MTU); the link took them.
    assert link.rx_stats.partial > 0
    assert link.stats.packets_received < OFFLOAD_SIZE // 1448  # coalesced by the sender's TSO
    out = tmp_path / "curl.out"
    _, link = await upload(net, data, out, backend=backend)
    assert out.stat().st_size == OFFLOAD_SIZE
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    # The kernel's ACKs came with partial checksums too; what the stack sent had complete ones
    # (filled in by the link), or the kernel would have dropped it and curl timed out.
    assert link.rx_stats.partial > 0 and link.rx_stats.checksum_dropped == 0
    assert rsts_from_client(net) == 0


async def test_without_the_guard_the_kernel_resets_the_connection(net: Net) -> None:
    """The control for the RST counter: the same connection with firewall=False meets the
    client kernel's RST (it answers the server's SYN-ACK, having no socket for the port)."""
    server = net.server.popen(
        sys.executable, "-m", "http.server", "--bind", net.server_addr, str(HTTP_PORT),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await wait_listening(net.server, HTTP_PORT)
        with trio.fail_after(20):
            async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                                      firewall=False) as link:
                async with open_stack(link, ephemeral_ports=link.ports) as stack:
                    with pytest.raises((OSError, trio.BrokenResourceError)):
                        stream = await stack.open_tcp_stream(net.server_addr, HTTP_PORT)
                        await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                        while await stream.receive_some(65536):
                            pass
        assert rsts_from_client(net) >= 1
    finally:
        server.kill()
        server.wait(timeout=5)


CHILD = """
import sys, trio
from tcpstack.api import open_stack
from tcpstack.links.pcap import open_pcap_link
async def main():
    async with open_pcap_link({dev!r}, netns={ns!r}, ports=range(40000, 41000),
                              name="child") as link:
        async with open_stack(link, ephemeral_ports=link.ports) as stack:
            await stack.open_tcp_listener(40080)
            print("ready", link.guard.table, flush=True)
            await trio.sleep(60)
trio.run(main)
"""


def start_stack_child(net: Net) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(dev=net.client_dev, ns=net.client.name)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 30)
    line = child.stdout.readline().split() if ready else []
    if not line or line[0] != "ready":
        child.kill()
        raise AssertionError(f"child stack did not start: {child.communicate(timeout=10)}")
    return child, line[1]


def test_sigterm_of_a_stack_process_leaves_no_table(net: Net) -> None:
    child, table = start_stack_child(net)
    try:
        assert guard_tables(net.client) == [table] and reserved_ports(net.client) == "40000-40999"
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=15)
    finally:
        child.kill()
        child.wait(timeout=5)
    assert child.returncode == -signal.SIGTERM
    assert guard_tables(net.client) == []
    assert reserved_ports(net.client) == ""


def test_firewall_cleanup_removes_what_a_sigkilled_stack_left(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    child, table = start_stack_child(net)
    child.kill()
    child.wait(timeout=5)
    assert guard_tables(net.client) == [table]  # SIGKILL: no chance to clean up
    assert cli_main(["firewall", "--cleanup", "--netns", net.client.name]) == 0
    assert f"removed {table}  pid {child.pid} stale" in capsys.readouterr().out
    assert guard_tables(net.client) == []
    assert reserved_ports(net.client) == ""
