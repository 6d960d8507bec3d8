"""The user stack over TunLink against the Linux kernel's TCP, in network namespaces (root).

Topology (testbeds.netns.Testnet): the client namespace holds the TUN device with the user
stack behind it (198.18.254.2, the kernel's end 198.18.254.1/30) and forwards between the TUN
device and its veth; the server namespace is a kernel host on the far end of the veth with a
route back to the stack's subnet. So every packet crosses the kernel's IP forwarding, and with
offloads on the kernel's TSO super-segments reach the stack uncut while the stack's
super-segments are cut by the kernel on their way out.

Both directions, offload on and off: the stack downloads 50 MB from ``python3 -m http.server``
and the kernel's ``curl`` downloads 50 MB from an HTTP responder written here on the tcpstack
API; the SHA-256 of what arrived must equal the file's.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest
import trio

from tcpstack.api import Stack, open_stack
from tcpstack.http import Url, http_get
from tcpstack.links.tun import TunLink
from testbeds import netns
from testbeds.netns import entered, root_skip_reason

_skip = root_skip_reason() or (None if shutil.which("curl") else "needs curl")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_skip is not None, reason=_skip or "")]

SIZE = 50_000_000
STACK = "198.18.254.2"
STACK_SUBNET = "198.18.254.0/30"
HTTP_PORT = 8000
STACK_PORT = 8080
DEADLINE = 120.0  # seconds for one whole transfer; a stall fails instead of hanging CI


@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """50 MB of seeded random octets in a file, and their SHA-256."""
    data = random.Random(20261126).randbytes(SIZE)
    path = tmp_path_factory.mktemp("www") / "body.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def net() -> Iterator[netns.Testnet]:
    with netns.Testnet.create() as testnet:
        testnet.client.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        testnet.server.run("ip", "route", "add", STACK_SUBNET, "via", testnet.client_addr)
        yield testnet


def open_link(net: netns.Testnet, offload: bool) -> TunLink:
    with entered(net.client):
        return TunLink.open(address=STACK, offload=offload)


def check_link(link: TunLink, stack: Stack) -> None:
    assert stack.stats.checksum_errors == 0 and stack.stats.malformed == 0
    assert link.tun_stats.non_ipv4_dropped == 0  # IPv6 is off on the device
    assert link.tun_stats.checksum_dropped == 0 and link.tun_stats.write_dropped == 0
    if not link.offload:
        assert link.tun_stats.gso_received == 0 and link.tun_stats.gso_sent == 0


async def wait_listening(net: netns.Testnet, port: int) -> None:
    for _ in range(200):
        if net.server.run("ss", "-Hltn", f"sport = :{port}").strip():
            return
        await trio.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} in the server namespace after 10 s")


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
async def test_stack_downloads_50mb_from_kernel_http_server(
    net: netns.Testnet, body: tuple[Path, str], offload: bool
) -> None:
    path, digest = body
    server = net.server.popen(
        sys.executable, "-m", "http.server", "--bind", net.server_addr, "--directory",
        str(path.parent), str(HTTP_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await wait_listening(net, HTTP_PORT)
        link = open_link(net, offload)
        with trio.fail_after(DEADLINE):
            async with link, open_stack(link) as stack:
                stream = await stack.open_tcp_stream(net.server_addr, HTTP_PORT)
                sha = hashlib.sha256()
                response = await http_get(stream, Url(net.server_addr, HTTP_PORT, f"/{path.name}"),
                                          sha.update)
                status, length = response.status, response.body_bytes
                await stream.aclose()
                info = stream.info()
        assert status == 200
        assert length == SIZE and sha.hexdigest() == digest
        assert info.bytes_received >= SIZE
        check_link(link, stack)
        if offload:
            # Offload was in use: the kernel's TSO segments reached the stack uncut.
            assert link.tun_stats.gso_received > 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


async def serve_file(listener_stack: Stack, data: bytes, done: trio.Event) -> None:
    """Answer one GET with ``data`` over the user stack (HTTP/1.1 framing by h11)."""
    listener = await listener_stack.open_tcp_listener(STACK_PORT)
    stream = await listener.accept()
    http = h11.Connection(h11.SERVER)
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(65536)
            http.receive_data(chunk)
            if not chunk:
                raise AssertionError("client closed before sending a request")
        elif isinstance(event, h11.Request):
            assert event.method == b"GET"
        elif isinstance(event, h11.EndOfMessage):
            break
    response = h11.Response(status_code=200, headers=[
        ("Content-Length", str(len(data))), ("Content-Type", "application/octet-stream"),
    ])
    await stream.send_all(http.send(response))
    for start in range(0, len(data), 1 << 20):
        # Passthrough: h11 frames the chunk (with Content-Length: adds nothing), no join copy.
        pieces = http.send_with_data_passthrough(h11.Data(data=data[start:start + (1 << 20)]))
        assert pieces is not None
        for piece in pieces:
            await stream.send_all(piece)
    await stream.send_all(http.send(h11.EndOfMessage()))
    await stream.send_eof()
    # Wait for curl's FIN so every octet is acknowledged before the stack shuts down.
    while await stream.receive_some(65536):
        pass
    await stream.aclose()
    await listener.aclose()
    done.set()


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
async def test_kernel_curl_downloads_50mb_from_stack(
    net: netns.Testnet, body: tuple[Path, str], offload: bool, tmp_path: Path
) -> None:
    path, digest = body
    data = path.read_bytes()
    out = tmp_path / "curl.out"
    link = open_link(net, offload)
    with trio.fail_after(DEADLINE):
        async with link, open_stack(link) as stack:
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_file, stack, data, done)
                await trio.testing.wait_all_tasks_blocked()
                result = await trio.run_process(
                    ["ip", "netns", "exec", net.server.name, "curl", "-sS", "--fail",
                     "--max-time", str(int(DEADLINE)), "-o", str(out),
                     f"http://{STACK}:{STACK_PORT}/{path.name}"],
                    capture_stdout=True, capture_stderr=True, check=False,
                )
                assert result.returncode == 0, result.stderr.decode(errors="replace")
                await done.wait()
    assert out.stat().st_size == SIZE
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    check_link(link, stack)
    if offload:
        assert link.tun_stats.gso_sent > 0  # the kernel cut the stack's super-segments
