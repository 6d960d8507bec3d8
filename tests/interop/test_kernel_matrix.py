"""The user stack against the Linux kernel's TCP, as users run it, in network namespaces (root).

The matrix: ``tcpstack get`` (the console script, a subprocess in the client namespace) over
``--link pcap`` and ``--link tun`` downloads 50 MB from Debian's nginx and from ``python3 -m
http.server`` in the server namespace; the kernel's ``curl`` downloads 50 MB from ``tcpstack
serve`` over both links. SHA-256 of what arrived must equal the file's.

Then what the kernel and the wire say about the stack:

- through a 20 Mbit/s ``tbf`` bottleneck with 2% ``numgen random`` loss, both directions
  complete intact, the loss happened (the nftables counter), and the user stack's TCPInfo and
  events show the recovery (as sender: ``total_retrans`` > 0, equal to its
  ``SegmentRetransmitted`` events and to the count ``tcpstack ss -i`` prints, SACK/fast
  recovery among them; as receiver: out-of-order
  arrivals, ``rcv_ooopack``, while the kernel's ``ss`` counts its retransmissions). The loss sits
  on the egress of a router namespace between the two hosts, not on the sender's own egress:
  there the kernel's TCP is told of the drop (NET_XMIT_DROP) and quietly sends again, so a
  kernel sender would never retransmit and the user stack would never see a hole;
- ``ss -tine`` in the kernel's namespace, during a transfer, shows ``wscale``, ``sack`` and ``ts``
  negotiated with the user stack, with the scale factors mirrored from the stack's own TCPInfo;
- a tcpdump capture of a whole transfer (veth offloads off) has no malformed packet and no bad
  IPv4 or TCP checksum by tshark, every checksum verified good, and no RST from the stack's host
  address while the firewall guard is up; after the stack exits its guard table is gone.

PcapLink tests turn veth offloads off so that tshark can judge every checksum in the capture:
with them on, a kernel peer's segments carry checksums left to "hardware" (the link accepts them
by their AF_PACKET checksum status, tests/links/test_pcap_link.py), which tshark would flag.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final

import pytest
import trio
from interop_helpers import (
    TUN_ADDRESS,
    Body,
    Chain,
    capture,
    chain,
    cli_env,
    guard_tables,
    kernel_connection,
    kernel_http_server,
    make_body,
    nginx,
    parse_info,
    route_to_tun,
    run_tcpstack,
    serve_process,
    sha256_file,
    stop,
    tcpstack_argv,
    tcpstack_skip_reason,
    tshark,
    tshark_count,
    tun_devices,
)

from tcpstack.api import TCPListener, TCPStream, open_stack
from tcpstack.control import serve_control
from tcpstack.http import http_get, parse_url, serve_static
from tcpstack.links.pcap import open_pcap_link
from tcpstack.tcp.events import (
    Event,
    RecoveryEntered,
    RetransmitKind,
    SegmentRetransmitted,
)
from testbeds.netns import Namespace, egress_dropped, egress_loss, offloads, tbf
from testbeds.netns import Testnet as Net

_skip = tcpstack_skip_reason("curl", "nginx", "tcpdump", "tshark")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_skip is not None, reason=_skip or "")]

BIG: Final = 50_000_000  # the transfer size
LOSSY: Final = 10_000_000  # ~4 s at 20 Mbit/s, a few more with 2% loss
CAPTURED: Final = 4_000_000  # a whole transfer tshark reads in a second or two
HTTP_PORT: Final = 8000
SERVE_PORT: Final = 8080
PORTS: Final = range(40000, 41000)  # the CLI's default --ports for `tcpstack get`
BOTTLENECK: Final = 20_000_000  # bit/s
LOSS: Final = 0.02
DEADLINE: Final = 120.0  # seconds for one 50 MB transfer: a stall fails, it does not hang CI
LOSSY_DEADLINE: Final = 60.0


@pytest.fixture(scope="module")
def big_body(tmp_path_factory: pytest.TempPathFactory) -> Body:
    return make_body(tmp_path_factory.mktemp("www-big"), BIG, seed=5_0050)


@pytest.fixture(scope="module")
def lossy_body(tmp_path_factory: pytest.TempPathFactory) -> Body:
    return make_body(tmp_path_factory.mktemp("www-small"), LOSSY, seed=5_0010)


@pytest.fixture(scope="module")
def capture_body(tmp_path_factory: pytest.TempPathFactory) -> Body:
    return make_body(tmp_path_factory.mktemp("www-capture"), CAPTURED, seed=5_0004)


@pytest.fixture
def net(testnet: Net) -> Net:
    return testnet


def prepare(net: Net, link: str) -> tuple[str, list[str]]:
    """Set the namespaces up for ``link``; return the stack's address and the CLI link options."""
    if link == "pcap":
        offloads(net.client, net.client_dev, on=False)
        offloads(net.server, net.server_dev, on=False)
        return net.client_addr, ["--link", "pcap", "--interface", net.client_dev]
    route_to_tun(net)
    return TUN_ADDRESS, ["--link", "tun"]


def info_of(stderr: str, remote: str) -> tuple[str, dict[str, str]]:
    """The ``local -> remote`` line ``tcpstack get --info`` prints, and its TCPInfo fields."""
    lines = stderr.splitlines()
    for n, line in enumerate(lines):
        if line.endswith(f" -> {remote}") and n + 1 < len(lines):
            return line.split(" -> ")[0], parse_info(lines[n + 1])
    raise AssertionError(f"no TCPInfo line for {remote} in --info output:\n{stderr}")


@pytest.mark.parametrize("server", ["nginx", "http.server"])
@pytest.mark.parametrize("link", ["pcap", "tun"])
def test_tcpstack_get_downloads_50mb_from_a_kernel_server(
    net: Net, big_body: Body, tmp_path: Path, link: str, server: str,
    record_property: Callable[[str, object], None],
) -> None:
    stack_addr, link_args = prepare(net, link)
    url = f"http://{net.server_addr}:{HTTP_PORT}/{big_body.path.name}"
    out = tmp_path / "got.bin"
    with kernel_http_server(server, net.server, net.server_addr, HTTP_PORT,
                            big_body.path.parent, tmp_path) as access_log:
        done = run_tcpstack(net.client, "get", url, "-o", str(out), "--info", *link_args,
                            env=cli_env(tmp_path / "ctl"), timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size == BIG
    assert sha256_file(out) == big_body.sha256
    summary = next(line for line in done.stderr.splitlines() if line.startswith("HTTP 200 OK"))
    assert summary.startswith(f"HTTP 200 OK: {BIG} bytes")
    record_property("tcpstack_get", summary)
    print(f"tcpstack get --link {link} from {server}: {summary}")
    local, info = info_of(done.stderr, f"{net.server_addr}:{HTTP_PORT}")
    address, port = local.rsplit(":", 1)
    assert address == stack_addr
    if link == "pcap":
        assert int(port) in PORTS  # inside the range the firewall guard protects
    assert {"sack", "ts", "wscale"} <= info.keys()
    assert int(info["bytes_received"]) > BIG  # the body and the response header
    if access_log is not None:  # nginx's own record: it sent the whole file, with status 200
        assert f'"GET /{big_body.path.name} HTTP/1.1" 200 {BIG} ' in access_log.read_text()
    # Nothing of the stack outlives it: no guard table, no TUN device.
    assert guard_tables(net.client) == []
    assert tun_devices(net.client) == []


@pytest.mark.parametrize("link", ["pcap", "tun"])
def test_curl_downloads_50mb_from_tcpstack_serve(
    net: Net, big_body: Body, tmp_path: Path, link: str,
    record_property: Callable[[str, object], None],
) -> None:
    stack_addr, link_args = prepare(net, link)
    out = tmp_path / "curl.bin"
    log = tmp_path / "serve.log"
    with serve_process(net.client, "--port", str(SERVE_PORT), "--root",
                       str(big_body.path.parent), *link_args, env=cli_env(tmp_path / "ctl"),
                       log=log) as serve:
        if link == "pcap":
            # The listening port is the guarded range; the table is named after the process.
            assert guard_tables(net.client) == [f"tcpstack_serve_{serve.pid}"]
        curl = subprocess.run(
            ["ip", "netns", "exec", net.server.name, "curl", "-sS", "--fail", "--max-time",
             str(int(DEADLINE)), "-o", str(out), "-w", "%{http_code} %{size_download} %{speed_download}",
             f"http://{stack_addr}:{SERVE_PORT}/{big_body.path.name}"],
            capture_output=True, text=True, timeout=DEADLINE + 10, check=False,
        )
        # The server logs a request once its last octets are queued, which can be a moment
        # after curl has them all: wait for the line rather than race the SIGTERM.
        request_line = f'"GET /{big_body.path.name} HTTP/1.1" 200 {BIG}'
        deadline = time.monotonic() + 10
        while request_line not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert curl.returncode == 0, curl.stderr
    status, size, speed = curl.stdout.split()
    assert (status, size) == ("200", str(BIG))
    record_property("curl_MBps", round(float(speed) / 1e6, 1))
    print(f"curl from tcpstack serve --link {link}: {float(speed) / 1e6:.1f} MB/s")
    assert sha256_file(out) == big_body.sha256
    # The server's access log names the kernel client and the whole body.
    assert request_line in log.read_text()
    assert f"{net.server_addr}:" in log.read_text()
    assert guard_tables(net.client) == []  # removed on SIGTERM
    assert tun_devices(net.client) == []


# ---------------------------------------------------------------------------- loss and recovery


async def collect_events(stream: TCPStream, into: list[Event]) -> None:
    async for event in stream.events():
        into.append(event)


async def watch_kernel(ns: Namespace, port: int, peer: str, into: list[dict[str, str]]) -> None:
    """Sample the kernel's ``ss -tine`` view of its connection with ``peer`` until cancelled."""
    while True:
        sample = await trio.to_thread.run_sync(kernel_connection, ns, port, peer)
        if sample is not None:
            into.append(sample)
        await trio.sleep(0.1)


def bottleneck(hosts: Chain, receiver: str) -> None:
    """20 Mbit/s and 2% random loss on the router's egress towards ``receiver``."""
    dev = hosts.router_client_dev if receiver == "client" else hosts.router_server_dev
    tbf(hosts.router, dev, BOTTLENECK)
    egress_loss(hosts.router, dev, LOSS)


async def test_lossy_bottleneck_kernel_to_stack(lossy_body: Body, tmp_path: Path) -> None:
    """nginx sends through the lossy bottleneck; the user stack (PcapLink) receives."""
    digest = hashlib.sha256()
    events: list[Event] = []
    kernel: list[dict[str, str]] = []
    with chain() as hosts, nginx(hosts.server, hosts.server_addr, HTTP_PORT,
                                 lossy_body.path.parent, tmp_path / "ngx"):
        bottleneck(hosts, "client")
        url = parse_url(f"http://{hosts.server_addr}:{HTTP_PORT}/{lossy_body.path.name}")
        with trio.fail_after(LOSSY_DEADLINE):
            async with open_pcap_link(hosts.client_dev, netns=hosts.client.name, ports=PORTS,
                                      name="lossdown") as link:
                async with open_stack(link, ephemeral_ports=link.ports) as stack:
                    stream = await stack.open_tcp_stream(hosts.server_addr, HTTP_PORT)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(collect_events, stream, events)
                        nursery.start_soon(watch_kernel, hosts.server, HTTP_PORT,
                                           hosts.client_addr, kernel)
                        response = await http_get(stream, url, digest.update)
                        info = stream.info()
                        await stream.aclose()
                        nursery.cancel_scope.cancel()
                    assert stack.stats.checksum_errors == 0
        dropped = egress_dropped(hosts.router)
    assert response.status == 200 and response.body_bytes == LOSSY
    assert digest.hexdigest() == lossy_body.sha256
    assert dropped > 0  # the loss happened
    # The kernel retransmitted (its own count); the user stack saw the holes and had them filled.
    assert kernel, "ss never saw the connection in the server namespace"
    # ss prints retrans:<now>/<total> only once there is one.
    assert max(int(k.get("retrans", "0/0").split("/")[1]) for k in kernel) > 0, kernel[-1]
    assert info.rcv_ooopack > 0
    assert info.bytes_received >= LOSSY
    # The receiver had nothing of its own to resend (its request went out before any loss).
    assert info.total_retrans == len(
        [e for e in events if isinstance(e, SegmentRetransmitted)])


async def serve_one(listener: TCPListener, root: Path, events: list[Event],
                    streams: list[TCPStream], sampled: trio.Event, served: trio.Event) -> None:
    """Serve one connection with tcpstack's static server, collecting its events to the end
    (``served`` is set once the connection is CLOSED and every event is in).

    The connection stays in CLOSE-WAIT, all data acknowledged, until ``sampled`` is set, so
    ``tcpstack ss`` can look at its final TCPInfo before it goes.
    """
    stream = await listener.accept()
    streams.append(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_events, stream, events)  # ends when the connection is CLOSED
        async with stream:
            await serve_static(stream, root)
            await sampled.wait()
    served.set()


def ss_retransmissions(stdout: str, local: str, remote: str) -> tuple[str, int]:
    """State and total retransmissions ``tcpstack ss -i`` shows for ``local`` -> ``remote``."""
    lines = stdout.splitlines()
    for n, line in enumerate(lines):
        columns = line.split()
        if len(columns) >= 4 and columns[2:4] == [local, remote] and n + 1 < len(lines):
            return columns[0], int(parse_info(lines[n + 1]).get("retrans", "0/0").split("/")[1])
    raise AssertionError(f"tcpstack ss -i does not list {local} -> {remote}:\n{stdout}")


async def test_lossy_bottleneck_stack_to_kernel(lossy_body: Body, tmp_path: Path) -> None:
    """The user stack (PcapLink) sends through the lossy bottleneck; the kernel's curl receives.
    ``tcpstack ss -i`` (the CLI, over the stack's control socket) shows the retransmissions."""
    out = tmp_path / "curl.bin"
    events: list[Event] = []
    streams: list[TCPStream] = []
    sampled, served = trio.Event(), trio.Event()
    port = PORTS.start + 80
    with chain() as hosts:
        bottleneck(hosts, "server")
        with trio.fail_after(LOSSY_DEADLINE):
            async with open_pcap_link(hosts.client_dev, netns=hosts.client.name, ports=PORTS,
                                      name="lossup") as link:
                async with open_stack(link, ephemeral_ports=link.ports) as stack:
                    listener = await stack.open_tcp_listener(port)
                    async with listener, trio.open_nursery() as nursery:
                        await nursery.start(partial(serve_control, stack, name="lossup",
                                                    link_kind="pcap", directory=tmp_path))
                        nursery.start_soon(serve_one, listener, lossy_body.path.parent, events,
                                           streams, sampled, served)
                        curl = await trio.run_process(
                            ["ip", "netns", "exec", hosts.server.name, "curl", "-sS", "--fail",
                             "--max-time", str(int(LOSSY_DEADLINE)), "-o", str(out),
                             f"http://{hosts.client_addr}:{port}/{lossy_body.path.name}"],
                            capture_stdout=True, capture_stderr=True, check=False,
                        )
                        assert curl.returncode == 0, curl.stderr.decode(errors="replace")
                        ss = await trio.run_process(
                            tcpstack_argv("ss", "-i", "--dir", str(tmp_path)),
                            capture_stdout=True, capture_stderr=True, check=False)
                        sampled.set()
                        await served.wait()
                        nursery.cancel_scope.cancel()  # the control socket server
                    # serve_one has returned: the connection is CLOSED and every event is in.
                    info = streams[0].info()
                    assert stack.stats.checksum_errors == 0
        dropped = egress_dropped(hosts.router)
    assert sha256_file(out) == lossy_body.sha256
    assert dropped > 0  # the loss happened
    assert info.bytes_acked >= LOSSY
    # TCPInfo and events tell the same story, one SegmentRetransmitted per retransmission.
    retransmitted = [e for e in events if isinstance(e, SegmentRetransmitted)]
    assert streams[0].events_dropped == 0
    assert info.total_retrans > 0 and info.bytes_retrans > 0
    assert len(retransmitted) == info.total_retrans
    # Random loss is repaired mostly by SACK-driven fast recovery, not only by timeouts.
    assert any(e.kind in (RetransmitKind.FAST, RetransmitKind.SACK_RECOVERY)
               for e in retransmitted)
    assert any(isinstance(e, RecoveryEntered) for e in events)
    # And the command line saw the same count on the quiescent connection (curl gone, our FIN
    # not yet sent: nothing could be retransmitted after the sample).
    assert ss.returncode == 0, ss.stderr.decode(errors="replace")
    state, total = ss_retransmissions(ss.stdout.decode(), f"{hosts.client_addr}:{port}",
                                      f"{hosts.server_addr}:{streams[0].remote[1]}")
    assert state == "CLOSE-WAIT"
    assert total == info.total_retrans


# ---------------------------------------------------------------------------- the kernel's view


def _flag(value: str) -> bool:
    return value in ("1", "True")


@pytest.mark.parametrize("link", ["pcap", "tun"])
def test_kernel_view_and_capture_of_a_whole_transfer(
    net: Net, capture_body: Body, tmp_path: Path, link: str
) -> None:
    """``ss -tine`` and a tshark-judged tcpdump capture, both from the kernel's namespace."""
    stack_addr, link_args = prepare(net, link)
    offloads(net.client, net.client_dev, on=False)
    offloads(net.server, net.server_dev, on=False)
    # A bottleneck so the transfer lasts ~2 s whatever the link's speed: ss samples it live.
    tbf(net.server, net.server_dev, 16_000_000)
    url = f"http://{net.server_addr}:{HTTP_PORT}/{capture_body.path.name}"
    out, errors = tmp_path / "got.bin", tmp_path / "get.err"
    kernel: list[dict[str, str]] = []
    tables: set[str] = set()
    pcap_file = tmp_path / "transfer.pcap"
    with nginx(net.server, net.server_addr, HTTP_PORT, capture_body.path.parent, tmp_path / "ngx"), \
            capture(net.server, net.server_dev, pcap_file, f"tcp port {HTTP_PORT}") as cap:
        with open(errors, "wb") as sink:
            get = subprocess.Popen(
                ["ip", "netns", "exec", net.client.name,
                 *tcpstack_argv("get", url, "-o", str(out), "--info", *link_args)],
                stdout=subprocess.DEVNULL, stderr=sink, env=cli_env(tmp_path / "ctl"))
        try:
            deadline = time.monotonic() + LOSSY_DEADLINE
            while get.poll() is None and time.monotonic() < deadline:
                sample = kernel_connection(net.server, HTTP_PORT, stack_addr)
                if sample is not None:
                    kernel.append(sample)
                tables.update(guard_tables(net.client))
                time.sleep(0.05)
        finally:
            status = stop(get)
    stderr = errors.read_text()
    assert status == 0, stderr
    assert sha256_file(out) == capture_body.sha256
    _, info = info_of(stderr, f"{net.server_addr}:{HTTP_PORT}")

    # The kernel negotiated window scaling, SACK and timestamps with the user stack, and its
    # scale factors mirror the stack's: (kernel snd, kernel rcv) == (stack rcv, stack snd).
    assert kernel, "ss never saw the connection in the server namespace during the transfer"
    seen = kernel[-1]
    assert {"wscale", "sack", "ts"} <= seen.keys(), seen
    assert seen["wscale"].split(",") == info["wscale"].split(",")[::-1]

    # The capture: the whole connection, nothing lost by the capture itself.
    assert cap.dropped_by_kernel == 0
    rows = [line.split("\t") for line in tshark(
        pcap_file, "tcp", "ip.src", "tcp.flags.syn", "tcp.flags.fin", "tcp.flags.reset",
        "tcp.checksum.status", "ip.checksum.status")]
    assert len(rows) > capture_body.size // 1500
    assert sum(_flag(r[1]) for r in rows) == 2  # SYN and SYN-ACK: the handshake is in
    assert sum(_flag(r[2]) for r in rows) >= 2  # both FINs: so is the close
    # tshark validated every checksum (status 1 = Good), so "no bad checksum" is not vacuous.
    assert all(r[4] == "1" and r[5] == "1" for r in rows), [r for r in rows if r[4:] != ["1", "1"]][:5]
    assert tshark_count(
        pcap_file, "_ws.malformed || tcp.checksum.status == 0 || ip.checksum.status == 0") == 0
    # No RST from the stack's host address (tcp.flags.reset == 1 && ip.src == <stack>): with the
    # guard up the kernel never answered for the stack's port; nor did anyone else reset.
    assert [r for r in rows if _flag(r[3]) and r[0] == stack_addr] == []
    assert not any(_flag(r[3]) for r in rows)
    if link == "pcap":
        assert tables == {f"tcpstack_get_{get.pid}"}  # the guard was up during the transfer
    assert guard_tables(net.client) == []  # and is gone after the stack exited
