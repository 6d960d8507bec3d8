"""PcapLink and its AF_PACKET fallback: the capture filter, interface facts, and (as root, in
namespaces) packets in and out, drops, closing, jumbo frames, privileges and namespaces."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pcap
import pytest
import trio
from links_helpers import ipv4_checksum

from tcpstack.links.pcap import (
    LinkSetupError,
    PcapLink,
    compile_bpf,
    default_interface,
    filter_expression,
    interface_info,
    open_pcap_link,
)
from tcpstack.privileges import PrivilegeError
from tcpstack.wire import build_packet
from tcpstack.wire.icmp import build_icmp
from tcpstack.wire.segment import IcmpMessage, IcmpType, TcpFlags, TcpSegment
from testbeds.netns import Testnet as Net
from testbeds.netns import entered, offloads, root_skip_reason

SKIP = root_skip_reason()
US, PEER, OTHER = "198.18.5.1", "198.18.5.2", "198.18.5.9"
PORTS = range(40000, 40100)


def tcp(dst: str, dport: int, payload: bytes = b"", *, src: str = PEER, sport: int = 8000,
        seq: int = 1000) -> bytes:
    return build_packet(TcpSegment(src, dst, sport, dport, seq, flags=TcpFlags.SYN | TcpFlags.ACK
                                   if not payload else TcpFlags.ACK, window=1000,
                                   ip_id=seq & 0xFFFF, payload=payload))


def icmp(type_: int, code: int, dst: str = US) -> bytes:
    quote = tcp(PEER, 8000, src=dst, sport=40001)[:28]
    packet = bytearray(build_icmp(IcmpMessage(PEER, dst, type_, code, quoted=quote)))
    # A non-zero IP ID, so the kernel sends the packet unchanged (it fills in a zero one).
    packet[4:6], packet[10:12] = b"\x12\x34", b"\x00\x00"
    packet[10:12] = ipv4_checksum(bytes(packet[:20])).to_bytes(2, "big")
    return bytes(packet)


# ---------------------------------------------------------------------------- no root needed


ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def test_default_interface_is_the_default_route_with_the_lowest_metric() -> None:
    assert default_interface(ROUTES) == "eth0"
    with pytest.raises(LinkSetupError, match="no IPv4 default route"):
        default_interface(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[3])


def test_interface_info_of_loopback() -> None:
    info = interface_info("lo")
    assert info.address == "127.0.0.1" and info.index >= 1 and info.mtu >= 1500
    with pytest.raises(LinkSetupError, match="no network interface 'nope0'"):
        interface_info("nope0")


def test_filter_takes_our_tcp_ports_and_icmp_errors_only() -> None:
    expression = filter_expression(US, PORTS)
    program = pcap.bpf(expression.encode(), pcap.DLT_RAW)
    accepted = [tcp(US, 40000), tcp(US, 40099, b"x" * 100), icmp(IcmpType.DEST_UNREACHABLE, 4),
                icmp(IcmpType.TIME_EXCEEDED, 0)]
    rejected = [tcp(US, 39999), tcp(US, 40100), tcp(OTHER, 40000),
                icmp(IcmpType.ECHO_REQUEST, 0), icmp(IcmpType.DEST_UNREACHABLE, 3, OTHER)]
    assert [bool(program.filter(p)) for p in accepted] == [True] * len(accepted)
    assert [bool(program.filter(p)) for p in rejected] == [False] * len(rejected)


def test_compile_bpf_gives_a_sock_filter_array_and_names_bad_filters() -> None:
    raw = compile_bpf(filter_expression(US, PORTS))
    ether = compile_bpf(filter_expression(US, PORTS), linktype=1)
    assert raw and len(raw) % 8 == 0 and raw != ether
    # The last instruction of a libpcap program is "ret #0" (reject).
    assert raw[-8:] == bytes.fromhex("0600000000000000")
    with pytest.raises(LinkSetupError, match="bad capture filter"):
        compile_bpf("tcp dst port ninety")


async def test_bad_arguments_fail_before_anything_opens() -> None:
    with pytest.raises(ValueError, match="backend"):
        async with open_pcap_link("lo", backend="netmap"):
            pass
    with pytest.raises(ValueError, match="ports"):
        async with open_pcap_link("lo", ports=range(70000, 70010)):
            pass


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the error a non-root user sees")
async def test_non_root_gets_one_line_naming_the_capability() -> None:
    with pytest.raises(PrivilegeError, match=r"^missing capability CAP_NET_RAW: needed for a raw "
                       r"IPv4 socket and packet capture \(PcapLink\); run as root"):
        async with open_pcap_link("lo", firewall=False):
            pass


# ---------------------------------------------------------------------------- in namespaces


@pytest.fixture
def net() -> Iterator[Net]:
    if SKIP is not None:
        pytest.skip(SKIP)
    with Net.create(subnet=5) as testnet:
        for ns, dev in ((testnet.client, testnet.client_dev), (testnet.server, testnet.server_dev)):
            offloads(ns, dev, on=False)
        yield testnet


@contextlib.contextmanager
def peer_raw(net: Net) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A raw socket in the server namespace: sends whole IPv4 packets, receives TCP copies."""
    with entered(net.server):
        out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        tap = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    tap.settimeout(2.0)
    try:
        yield out, tap
    finally:
        out.close()
        tap.close()


async def _receive(link: PcapLink, want: int) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(5):
        while len(got) < want:
            got += await link.receive_batch(64)
    return got


@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
async def test_receives_exactly_the_filtered_ipv4_packets(net: Net, backend: str) -> None:
    async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                              firewall=False, backend=backend) as link:
        assert (link.address, link.mtu, link.interface) == (net.client_addr, 1500, net.client_dev)
        assert link.checksum_offload is False and link.ports == PORTS and link.guard is None
        wanted = [tcp(US, 40001, b"a" * 1460), icmp(IcmpType.DEST_UNREACHABLE, 4),
                  tcp(US, 40099, seq=7)]
        unwanted = [tcp(US, 39999), tcp(US, 40100), tcp(US, 22)]
        with peer_raw(net) as (out, _):
            for packet in [unwanted[0], wanted[0], unwanted[1], wanted[1], unwanted[2], wanted[2]]:
                out.sendto(packet, (US, 0))
        got = await _receive(link, len(wanted))
        # Exactly the IPv4 datagrams, link header stripped, in order; nothing else follows.
        assert got == wanted
        assert link.stats.packets_received == 3
        assert link.stats.bytes_received == sum(map(len, wanted))
        with trio.move_on_after(0.2) as late:
            await link.receive_batch()
        assert late.cancelled_caught


@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
async def test_sends_ipv4_packets_out_of_the_interface(net: Net, backend: str) -> None:
    async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                              firewall=False, backend=backend) as link:
        packets = [tcp(PEER, 8000, bytes([i]) * 1000, src=US, sport=40001, seq=i) for i in range(5)]
        too_big = tcp(PEER, 8000, b"z" * 1461, src=US, sport=40001)
        # The client's own firewall refuses this one: sendto fails with EPERM.
        net.client.nft("table inet refuse {\n chain output {\n type filter hook output priority 0;\n"
                       f" ip daddr {OTHER} drop\n }}\n}}\n")
        nowhere = tcp(OTHER, 8000, src=US, sport=40001)
        with peer_raw(net) as (_, tap):
            link.send_batch([packets[0], b"\x60" + bytes(39), too_big, nowhere, *packets[1:]])
            seen = [await trio.to_thread.run_sync(tap.recv, 65535) for _ in packets]
        assert seen == packets
        assert (link.stats.packets_sent, link.stats.bytes_sent) == (5, 5 * 1040)
        # Not IPv4, bigger than the MTU, refused by the kernel: dropped and counted, not raised.
        assert link.stats.packets_dropped == 3
        assert link.send_errors == {errno.EPERM: 1}


@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
async def test_close_wakes_a_receiver_and_refuses_further_use(net: Net, backend: str) -> None:
    async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                              firewall=False, backend=backend) as link:
        caught: list[BaseException] = []

        async def waiter() -> None:
            try:
                await link.receive_batch()
            except trio.ClosedResourceError as exc:
                caught.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                await link.aclose()
        assert len(caught) == 1 and link.closed
        with pytest.raises(trio.ClosedResourceError):
            link.send_batch([tcp(PEER, 8000, src=US, sport=40001)])
        with pytest.raises(trio.ClosedResourceError):
            await link.receive_batch()
        await link.aclose()  # idempotent


@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
async def test_afpacket_carries_jumbo_frames() -> None:
    with Net.create(subnet=6, mtu=9000) as net:
        offloads(net.client, net.client_dev, on=False)
        offloads(net.server, net.server_dev, on=False)
        us, peer = net.client_addr, net.server_addr
        async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                                  firewall=False, backend="afpacket") as link:
            assert link.mtu == 9000
            jumbo = tcp(us, 40001, os.urandom(8900), src=peer)
            with entered(net.server):
                out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            with out:
                out.sendto(jumbo, (us, 0))
            assert await _receive(link, 1) == [jumbo]
            assert link.capture_stats()[1:] == (0, 0)  # no buffer drops, nothing truncated


async def test_pypcap_reading_a_file_named_like_the_interface_is_refused(
    net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / net.client_dev, "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW)
        writer.writepkt(tcp(US, 40001), ts=0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LinkSetupError, match=f"opened the file ./{net.client_dev} instead"):
        async with open_pcap_link(net.client_dev, netns=net.client.name, firewall=False):
            pass


async def test_opened_inside_entered_namespace_guards_that_namespace(net: Net) -> None:
    net.client.run("ip", "route", "add", "default", "via", net.server_addr)
    async with contextlib.AsyncExitStack() as stack:
        with entered(net.client):
            # No interface, no address: the default route's and its primary address.
            link = await stack.enter_async_context(open_pcap_link(ports=PORTS, name="entered"))
        assert (link.interface, link.address) == (net.client_dev, net.client_addr)
        assert link.guard is not None and link.guard.installed
        assert link.guard.table in net.client.run("nft", "list", "tables")
        own = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        assert link.guard.table not in own
        table = link.guard.table
    # Removed from the test's own namespace after the block, in the namespace it was made in.
    assert table not in net.client.run("nft", "list", "tables")
    assert net.client.run("sysctl", "-n", "net.ipv4.ip_local_reserved_ports").strip() == ""


DROP_CHILD = """
import trio
from tcpstack.links.pcap import open_pcap_link
async def main():
    async with open_pcap_link({dev!r}, netns={ns!r}, ports=range(40000, 40100)):
        pass
trio.run(main)
"""


@pytest.mark.parametrize(("keep", "missing"), [("-all", "CAP_NET_RAW"),
                                               ("-all,+net_raw", "CAP_NET_ADMIN")])
def test_without_capabilities_a_clear_error_and_nothing_installed(
    net: Net, keep: str, missing: str
) -> None:
    code = DROP_CHILD.format(dev=net.client_dev, ns=net.client.name)
    done = subprocess.run(
        ["setpriv", "--inh-caps=-all", f"--bounding-set={keep}", "--", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tcpstack.privileges.PrivilegeError: missing capability {missing}: ")
    assert "tcpstack_" not in net.client.run("nft", "list", "tables")
