"""PcapLink and its AF_PACKET backend: the capture filter, interface facts, the link's checksum
work (filled in on send, verified or taken on the kernel's word on receive), and (as root, in
namespaces) packets in and out, drops, closing, jumbo frames, privileges and namespaces."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import dpkt
import pcap
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from links_helpers import ipv4, ipv4_checksum

from tcpstack.links.afpacket import AfPacketLink
from tcpstack.links.offload import (
    ChecksumVerdict,
    classify_checksums,
    coalesce,
    ipv4_header_ok,
    segment_tcp,
    with_tcp_checksum,
)
from tcpstack.links.pcap import (
    DEFAULT_BACKEND,
    LinkSetupError,
    PcapLink,
    compile_bpf,
    default_interface,
    filter_expression,
    interface_info,
    open_pcap_link,
)
from tcpstack.privileges import PrivilegeError
from tcpstack.wire import build_packet, parse_packet
from tcpstack.wire.icmp import build_icmp
from tcpstack.wire.segment import (
    IcmpMessage,
    IcmpType,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
)
from testbeds.netns import Testnet as Net
from testbeds.netns import entered, offloads, root_skip_reason

SKIP = root_skip_reason()
US, PEER, OTHER = "198.18.5.1", "198.18.5.2", "198.18.5.9"
PORTS = range(40000, 40100)


def tcp(dst: str, dport: int, payload: bytes = b"", *, src: str = PEER, sport: int = 8000,
        seq: int = 1000, checksum: bool = True) -> bytes:
    return build_packet(TcpSegment(src, dst, sport, dport, seq, flags=TcpFlags.SYN | TcpFlags.ACK
                                   if not payload else TcpFlags.ACK, window=1000,
                                   ip_id=seq & 0xFFFF, payload=payload), checksum=checksum)


def with_field(packet: bytes, at: int, value: int) -> bytes:
    out = bytearray(packet)
    out[at:at + 2] = value.to_bytes(2, "big")
    return bytes(out)


def partial(packet: bytes) -> bytes:
    """``packet`` as a local Linux sender with checksum offload hands it over (CHECKSUM_PARTIAL):
    the TCP checksum field holds the folded pseudo-header sum, not the checksum."""
    total = len(packet)
    s = int.from_bytes(packet[12:16], "big") % 0xFFFF + int.from_bytes(packet[16:20], "big")
    s += 6 + total - 20
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return with_field(packet, 36, s)


def corrupt_payload(packet: bytes) -> bytes:
    out = bytearray(packet)
    out[-1] ^= 0x40
    return bytes(out)


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


def test_classify_checksums_valid_bad_and_partial() -> None:
    good = tcp(US, 40001, b"checksummed " * 50)
    assert classify_checksums(good, partial_rule=False) is ChecksumVerdict.VALID
    assert classify_checksums(icmp(IcmpType.DEST_UNREACHABLE, 4), partial_rule=True) is (
        ChecksumVerdict.VALID)
    # A flipped payload bit: bad whatever the rule (the field is a real, now wrong, checksum).
    assert classify_checksums(corrupt_payload(good), partial_rule=True) is ChecksumVerdict.BAD
    # CHECKSUM_PARTIAL: only the pseudo-header sum in the field. Accepted only under the rule.
    half = partial(good)
    assert classify_checksums(half, partial_rule=True) is ChecksumVerdict.PARTIAL
    assert classify_checksums(half, partial_rule=False) is ChecksumVerdict.BAD
    # The rule does not excuse a broken IPv4 header, a field off by one, or a length that lies.
    assert classify_checksums(with_field(half, 10, 0x1234), partial_rule=True) is (
        ChecksumVerdict.BAD)
    field = int.from_bytes(half[36:38], "big")
    assert classify_checksums(with_field(half, 36, field ^ 1), partial_rule=True) is (
        ChecksumVerdict.BAD)
    assert classify_checksums(half[:-1], partial_rule=True) is ChecksumVerdict.BAD
    assert classify_checksums(b"\x45" + bytes(10), partial_rule=True) is ChecksumVerdict.BAD


def test_partial_rule_matches_the_pseudo_header_sum_in_both_forms_of_zero() -> None:
    # A source address whose pseudo-header sum is 0 (mod 65535): Linux may store that sum as
    # 0xFFFF or as 0x0000; both are the same one's complement value.
    payload = b"z"
    rest = int.from_bytes(socket.inet_aton(US), "big") % 0xFFFF + 198 * 256 + 18 + 6 + 21
    low = -rest % 0xFFFF
    src = f"198.18.{low >> 8}.{low & 0xFF}"
    packet = tcp(US, 40001, payload, src=src)
    assert int.from_bytes(partial(packet)[36:38], "big") % 0xFFFF == 0
    for form in (0xFFFF, 0x0000):
        assert classify_checksums(with_field(packet, 36, form), partial_rule=True) is (
            ChecksumVerdict.PARTIAL)
    assert classify_checksums(with_field(packet, 36, 0x0001), partial_rule=True) is (
        ChecksumVerdict.BAD)


def test_with_tcp_checksum_fills_the_field_whatever_it_held() -> None:
    segment_bytes = b"payload of odd length"
    full = tcp(PEER, 8000, segment_bytes, src=US, sport=40001)
    for before in (tcp(PEER, 8000, segment_bytes, src=US, sport=40001, checksum=False),
                   with_field(full, 36, 0xBEEF), full):
        assert bytes(with_tcp_checksum(before) or b"") == full
    # Agrees with dpkt's checksum routine over the pseudo-header and the zeroed segment.
    zeroed = with_field(full, 36, 0)
    pseudo = zeroed[12:20] + bytes([0, 6]) + (len(full) - 20).to_bytes(2, "big")
    expected = dpkt.dpkt.in_cksum(pseudo + zeroed[20:])
    assert int.from_bytes((with_tcp_checksum(zeroed) or b"")[36:38], "big") == expected
    # A fragment's checksum covers the whole datagram: unchanged. Lying lengths: unsendable.
    fragment = bytearray(full)
    fragment[6:8], fragment[10:12] = b"\x20\x00", b"\x00\x00"
    fragment[10:12] = ipv4_checksum(bytes(fragment[:20])).to_bytes(2, "big")
    assert with_tcp_checksum(bytes(fragment)) == bytes(fragment)
    assert with_tcp_checksum(full[:-1]) is None
    assert with_tcp_checksum(full[:30]) is None


def test_ipv4_header_ok() -> None:
    good = tcp(US, 40001)
    assert ipv4_header_ok(good)
    assert not ipv4_header_ok(with_field(good, 10, 0))
    assert not ipv4_header_ok(good[:19])
    assert not ipv4_header_ok(b"\x60" + good[1:])


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


def _testnet(subnet: int, *, offloads_on: bool) -> Iterator[Net]:
    if SKIP is not None:
        pytest.skip(SKIP)
    with Net.create(subnet=subnet) as testnet:
        for ns, dev in ((testnet.client, testnet.client_dev), (testnet.server, testnet.server_dev)):
            offloads(ns, dev, on=offloads_on)
        yield testnet


@pytest.fixture
def net() -> Iterator[Net]:
    """Veth offloads off: every packet arrives with a complete checksum, one MSS at a time."""
    yield from _testnet(5, offloads_on=False)


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
        assert link.checksum_offload is True and link.ports == PORTS and link.guard is None
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


@pytest.fixture
def net_offloading() -> Iterator[Net]:
    """Veth offloads as the kernel sets them (on): the case of most users' testbeds."""
    yield from _testnet(7, offloads_on=True)


@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
async def test_bad_checksums_are_dropped_and_counted_with_offloads_on(
    net_offloading: Net, backend: str
) -> None:
    net = net_offloading
    us, peer = net.client_addr, net.server_addr
    async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                              firewall=False, backend=backend) as link:
        good = tcp(us, 40001, b"g" * 1000, src=peer, seq=1)
        bad_tcp = corrupt_payload(tcp(us, 40001, b"b" * 1000, src=peer, seq=2))
        bad_ip = with_field(tcp(us, 40002, b"h" * 10, src=peer, seq=3), 10, 0x1111)
        last = tcp(us, 40003, b"l" * 10, src=peer, seq=4)
        mac = bytes.fromhex(net.client.run("cat", f"/sys/class/net/{net.client_dev}/address")
                            .strip().replace(":", ""))
        with entered(net.server):
            # A packet socket: a raw IPv4 socket would repair the IPv4 header checksum.
            out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
        with out:
            for packet in (good, bad_tcp, bad_ip, last):
                # Sent as they are; nothing on the way marks them (CHECKSUM_NONE), so the link
                # must check them itself.
                out.sendto(packet, (net.server_dev, 0x0800, 0, 0, mac))
        assert await _receive(link, 2) == [good, last]
        assert link.rx_stats.checksum_dropped == 2
        assert link.rx_stats.software_verified == 2 and link.rx_stats.partial == 0
        assert (link.stats.packets_dropped, link.stats.packets_received) == (2, 2)


@pytest.mark.parametrize("offload", [True, False])
@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
async def test_partial_checksums_of_a_local_kernel_sender_are_accepted(
    net_offloading: Net, backend: str, offload: bool
) -> None:
    """A kernel TCP SYN over a veth with tx offload on carries CHECKSUM_PARTIAL: its checksum
    field is only the pseudo-header sum, yet the link hands it up (and says why); with
    ``offload=False``, for a stack that verifies, completed."""
    net = net_offloading
    async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                              firewall=False, backend=backend, offload=offload) as link:
        assert link.checksum_offload is offload and link.gso_max_size in (
            (0, 65535) if offload else (0,))
        with entered(net.server):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        with client:
            with contextlib.suppress(BlockingIOError):
                client.connect((net.client_addr, 40005))
            (syn,) = (await _receive(link, 1))[:1]
        assert syn[9] == 6 and int.from_bytes(syn[22:24], "big") == 40005
        if offload:
            assert classify_checksums(syn, partial_rule=False) is ChecksumVerdict.BAD
            assert classify_checksums(syn, partial_rule=True) is ChecksumVerdict.PARTIAL
        else:
            assert classify_checksums(syn, partial_rule=False) is ChecksumVerdict.VALID
        assert link.rx_stats.partial >= 1 and link.rx_stats.checksum_dropped == 0


@pytest.mark.parametrize("backend", ["pcap", "afpacket"])
async def test_sends_ipv4_packets_out_of_the_interface(net: Net, backend: str) -> None:
    async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                              firewall=False, backend=backend) as link:
        packets = [tcp(PEER, 8000, bytes([i]) * 1000, src=US, sport=40001, seq=i) for i in range(5)]
        # The stack leaves the TCP checksum to the link (checksum_offload): it is filled in.
        handed = [tcp(PEER, 8000, bytes([i]) * 1000, src=US, sport=40001, seq=i, checksum=False)
                  for i in range(5)]
        assert all(a != b for a, b in zip(handed, packets, strict=True))
        # Not TCP, so no segmentation offload applies: beyond the MTU it cannot be sent.
        too_big = ipv4(US, PEER, b"z" * 1481)
        # The client's own firewall refuses this one: sendto fails with EPERM.
        net.client.nft("table inet refuse {\n chain output {\n type filter hook output priority 0;\n"
                       f" ip daddr {OTHER} drop\n }}\n}}\n")
        nowhere = tcp(OTHER, 8000, src=US, sport=40001)
        with peer_raw(net) as (_, tap):
            link.send_batch([handed[0], b"\x60" + bytes(39), too_big, nowhere, *handed[1:]])
            seen = [await trio.to_thread.run_sync(tap.recv, 65535) for _ in packets]
        assert seen == packets
        assert (link.stats.packets_sent, link.stats.bytes_sent) == (5, 5 * 1040)
        # Not IPv4, bigger than the MTU, refused by the kernel: dropped and counted, not raised.
        assert link.stats.packets_dropped == 3
        assert link.send_errors == {errno.EPERM: 1}


@pytest.mark.parametrize("learned", [True, False])
async def test_afpacket_sends_super_segments_that_arrive_cut_to_the_mtu(
    net: Net, learned: bool
) -> None:
    """TCP goes out through the packet socket to the next hop the peer's packets came from,
    and the kernel cuts a 64 KiB super-segment; before any packet from the peer (no next hop
    known) the link cuts it itself and sends the pieces through the raw socket. Either way the
    peer gets MTU-sized segments with complete checksums, in order, carrying the payload."""
    payload = random.Random(11).randbytes(20_000)
    big = tcp(PEER, 8000, payload, src=US, sport=40001, seq=5000, checksum=False)
    async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                              firewall=False) as link:
        assert isinstance(link, AfPacketLink) and link.gso and link.gso_max_size == 65535
        with peer_raw(net) as (out, tap):
            if learned:
                # Teaches the link the next hop (an ICMP error: the client kernel stays silent).
                out.sendto(icmp(IcmpType.DEST_UNREACHABLE, 4), (US, 0))
                await _receive(link, 1)
            link.send_batch([big])
            seen = [await trio.to_thread.run_sync(tap.recv, 65535) for _ in range(14)]
        assert all(len(p) <= 1500 and classify_checksums(p, partial_rule=False)
                   is ChecksumVerdict.VALID for p in seen)
        segs = [parse_packet(p) for p in seen]
        assert b"".join(s.payload for s in segs if isinstance(s, TcpSegment)) == payload
        assert [s.seq for s in segs if isinstance(s, TcpSegment)] == [
            5000 + 1460 * i for i in range(14)]
        if learned:
            assert (link.tx_stats.gso_sent, link.tx_stats.software_segmented) == (1, 0)
        else:
            assert (link.tx_stats.packet_socket, link.tx_stats.software_segmented) == (0, 1)


async def test_afpacket_without_gso_offers_none_and_drops_what_exceeds_the_mtu(net: Net) -> None:
    async with open_pcap_link(net.client_dev, netns=net.client.name, ports=PORTS,
                              firewall=False, gso=False) as link:
        assert isinstance(link, AfPacketLink) and not link.gso and link.gso_max_size == 0
        link.send_batch([tcp(PEER, 8000, b"z" * 1461, src=US, sport=40001)])
        assert (link.stats.packets_dropped, link.stats.packets_sent) == (1, 0)


def test_segment_tcp_cuts_like_linux() -> None:
    flags = TcpFlags.ACK | TcpFlags.PSH | TcpFlags.FIN | TcpFlags.CWR
    big = build_packet(TcpSegment(US, PEER, 40001, 8000, 0xFFFFF000, 9, flags=flags, window=77,
                                  options=TcpOptions(timestamps=Timestamps(5, 6)),
                                  payload=bytes(range(256)) * 20, ip_id=0xFFFE), checksum=False)
    pieces = segment_tcp(big, 1500)
    segs = [parse_packet(p) for p in pieces]  # checksums verified
    assert [len(p) for p in pieces] == [1500] * 3 + [len(big) - 3 * 1448]
    assert all(isinstance(s, TcpSegment) for s in segs)
    tcp_segs = [s for s in segs if isinstance(s, TcpSegment)]
    assert [s.seq for s in tcp_segs] == [(0xFFFFF000 + 1448 * i) & 0xFFFFFFFF for i in range(4)]
    assert [s.ip_id for s in tcp_segs] == [0xFFFE, 0xFFFF, 0, 1]
    assert [s.flags for s in tcp_segs] == [TcpFlags.ACK | TcpFlags.CWR] + [TcpFlags.ACK] * 2 + [
        TcpFlags.ACK | TcpFlags.PSH | TcpFlags.FIN]
    assert all(s.options.timestamps == Timestamps(5, 6) and s.window == 77 for s in tcp_segs)
    assert b"".join(s.payload for s in tcp_segs) == bytes(range(256)) * 20
    assert segment_tcp(big[:-1], 1500) == [] and segment_tcp(big, 52) == []


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
        async with open_pcap_link(net.client_dev, netns=net.client.name, firewall=False,
                                  backend="pcap"):
            pass


async def test_opened_inside_entered_namespace_guards_that_namespace(net: Net) -> None:
    net.client.run("ip", "route", "add", "default", "via", net.server_addr)
    async with contextlib.AsyncExitStack() as stack:
        with entered(net.client):
            # No interface, no address: the default route's and its primary address.
            link = await stack.enter_async_context(open_pcap_link(ports=PORTS, name="entered"))
        assert (link.interface, link.address) == (net.client_dev, net.client_addr)
        # The default backend reads the kernel's checksum status: AF_PACKET.
        assert DEFAULT_BACKEND == "afpacket" and isinstance(link, AfPacketLink)
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


# ---------------------------------------------------------------------------- receive coalescing


def seg(seq: int, payload: bytes, *, flags: TcpFlags = TcpFlags.ACK, ack: int = 500,
        window: int = 1000, tsval: int = 7, sport: int = 8000, ip_id: int = 0) -> bytes:
    return build_packet(TcpSegment(PEER, US, sport, 40001, seq, ack, flags=flags, window=window,
                                   options=TcpOptions(timestamps=Timestamps(tsval, 3)),
                                   payload=payload, ip_id=ip_id))


def test_gro_merges_a_run_into_one_valid_segment() -> None:
    parts = [bytes([i]) * 1000 for i in range(5)]
    run = [seg(1000 + 1000 * i, p, ip_id=i) for i, p in enumerate(parts)]
    run[-1] = seg(5000, parts[-1], flags=TcpFlags.ACK | TcpFlags.PSH, ip_id=4)
    (merged,), count = coalesce(run)
    assert count == 4
    parsed = parse_packet(merged, verify_checksum=False)
    first = parse_packet(run[0])
    assert isinstance(parsed, TcpSegment) and isinstance(first, TcpSegment)
    assert parsed.payload == b"".join(parts) and len(merged) == 20 + 32 + 5000
    assert parsed.flags == TcpFlags.ACK | TcpFlags.PSH  # the PSH of the run's last segment
    assert attrs.evolve(parsed, payload=b"", flags=TcpFlags.ACK) == attrs.evolve(first, payload=b"")
    # A sound IPv4 header, and the TCP checksum in the CHECKSUM_PARTIAL form the module states.
    assert ipv4_header_ok(merged)
    assert classify_checksums(merged, partial_rule=True) is ChecksumVerdict.PARTIAL


def test_gro_keeps_apart_what_linux_keeps_apart() -> None:
    p = b"x" * 100

    def runs(packets: list[bytes]) -> list[int]:
        """Sequence numbers of what comes out."""
        out, _ = coalesce(packets)
        return [int.from_bytes(packet[24:28], "big") for packet in out]

    assert runs([seg(1, p), seg(101, p), seg(201, p)]) == [1]
    assert runs([seg(1, p), seg(102, p)]) == [1, 102]  # a hole
    assert runs([seg(1, p), seg(101, p, ack=501)]) == [1, 101]
    assert runs([seg(1, p), seg(101, p, window=999)]) == [1, 101]
    assert runs([seg(1, p), seg(101, p, tsval=8)]) == [1, 101]  # options differ
    assert runs([seg(1, p, flags=TcpFlags.ACK | TcpFlags.PSH), seg(101, p)]) == [1, 101]
    assert runs([seg(1, p), seg(101, p, flags=TcpFlags.ACK | TcpFlags.PSH), seg(201, p)]) == [1, 201]
    assert runs([seg(1, p), seg(101, p, flags=TcpFlags.ACK | TcpFlags.FIN)]) == [1, 101]
    assert runs([seg(1, p), seg(101, b""), seg(101, p)]) == [1, 101, 101]  # a pure ACK between
    # Another connection in between neither merges nor breaks the run; per-connection order holds.
    assert runs([seg(1, p), seg(1, p, sport=9000), seg(101, p), seg(101, p, sport=9000)]) == [1, 1]
    # Nothing merges beyond the IPv4 total length limit.
    big = b"y" * 30000
    assert runs([seg(1, big), seg(30001, big), seg(60001, big)]) == [1, 60001]
    # Nothing to merge: the very list comes back.
    lone = [seg(1, p), icmp(IcmpType.DEST_UNREACHABLE, 4)]
    assert coalesce(lone) == (lone, 0)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from([8000, 9000]), st.integers(0, 300),
                          st.sampled_from(["data", "psh", "gap", "ack", "fin", "ts"])),
                max_size=40))
def test_gro_preserves_every_connections_byte_stream_and_control(
    plan: list[tuple[int, int, str]]
) -> None:
    next_seq = {8000: 1, 9000: 1}
    packets: list[bytes] = []
    for n, (sport, size, kind) in enumerate(plan):
        seq = next_seq[sport] + (7 if kind == "gap" else 0)
        payload = bytes([n & 0xFF]) * (0 if kind == "ack" else max(size, 1))
        flags = {"psh": TcpFlags.ACK | TcpFlags.PSH, "fin": TcpFlags.ACK | TcpFlags.FIN}.get(
            kind, TcpFlags.ACK)
        packets.append(seg(seq, payload, flags=flags, sport=sport, tsval=8 if kind == "ts" else 7))
        next_seq[sport] = seq + len(payload) + (1 if kind == "fin" else 0)
    out, merged = coalesce(packets)
    assert len(out) == len(packets) - merged
    for sport in (8000, 9000):
        def stream(items: list[bytes], sport: int = sport
                   ) -> tuple[list[tuple[int, int]], list[int], int, list[int]]:
            """Every payload octet at its sequence number, FINs, PSH count, control order."""
            segs = [parse_packet(x, verify_checksum=False) for x in items]
            mine = [s for s in segs if isinstance(s, TcpSegment) and s.sport == sport]
            octets = [(s.seq + i, b) for s in mine for i, b in enumerate(s.payload)]
            fins = [s.seq for s in mine if s.flags & TcpFlags.FIN]
            pushes = sum(1 for s in mine if s.flags & TcpFlags.PSH)
            # Where the pure ACKs and FINs sit relative to the data: by the octets before them.
            order = [sum(len(m.payload) for m in mine[:k]) for k, s in enumerate(mine)
                     if not s.payload or s.flags & TcpFlags.FIN]
            return octets, fins, pushes, order
        assert stream(out) == stream(packets)
    for packet in out:
        assert ipv4_header_ok(packet)
        assert classify_checksums(packet, partial_rule=True) is not ChecksumVerdict.BAD
