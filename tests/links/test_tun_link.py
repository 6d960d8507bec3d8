"""TunLink: framing, offload headers, drops and batching over a datagram socket pair (no root),
then on a real TUN device in a network namespace with the kernel's TCP as the peer (root).

A ``SOCK_DGRAM`` Unix socket pair keeps packet boundaries exactly as a TUN fd does (one read,
one packet; one write, one packet), so the link's own logic is tested without privileges; the
far end plays the kernel's side of the device.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from tcpstack.api import open_stack
from tcpstack.links.tun import GSO_MAX_SIZE, TunError, TunLink, open_tun_link
from tcpstack.wire import (
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
    build_packet,
    internet_checksum,
    parse_packet,
    pseudo_header_sum,
)
from tcpstack.wire.vnet import (
    VNET_HDR_LEN,
    GsoType,
    VirtioNetHdr,
    VnetFlags,
    encode_vnet_hdr,
    parse_vnet_hdr,
)
from testbeds.netns import Namespace, entered, root_skip_reason

STACK = "198.18.254.2"
PEER = "198.18.7.2"

#: Our end's fd (the link takes it) and the far end, which plays the kernel's side of a TUN fd.
Pair = tuple[int, socket.socket]


def seg(payload: bytes = b"", *, flags: TcpFlags = TcpFlags.ACK, seq: int = 1) -> TcpSegment:
    return TcpSegment(
        src=STACK, dst=PEER, sport=40000, dport=80, seq=seq, ack=1, flags=flags, window=512,
        payload=payload, options=TcpOptions(timestamps=Timestamps(1, 2)),
    )


def inbound(payload: bytes = b"data") -> bytes:
    """A packet from the peer to the stack with correct checksums."""
    return build_packet(TcpSegment(
        src=PEER, dst=STACK, sport=80, dport=40000, seq=5, ack=1, flags=TcpFlags.ACK,
        window=512, payload=payload,
    ))


def ipv6_packet() -> bytes:
    # Version 6, next header UDP, hop limit 255, fe80::1 -> ff02::1, 8 octets of UDP.
    return (struct.pack("!IHBB", 6 << 28, 8, 17, 255) + b"\xfe\x80" + b"\0" * 13 + b"\x01"
            + b"\xff\x02" + b"\0" * 13 + b"\x01" + struct.pack("!HHHH", 547, 546, 8, 0))


def udp_packet(size: int) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 1, 0, 64, 17, 0,
                                   bytes([198, 18, 254, 2]), bytes([198, 18, 7, 2])))
    header[10:12] = struct.pack("!H", internet_checksum(bytes(header)))
    return bytes(header) + struct.pack("!HHHH", 9, 9, size - 20, 0) + bytes(size - 28)


@pytest.fixture
def pair() -> Iterator[Pair]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = ours.detach()  # the link owns and closes it
    theirs.setblocking(False)
    try:
        yield fd, theirs
    finally:
        theirs.close()


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    for _ in range(10_000):
        try:
            out.append(sock.recv(70_000))
        except BlockingIOError:
            return out
    raise AssertionError("more than 10000 datagrams")


# ---------------------------------------------------------------------- sending


async def test_offload_send_writes_a_vnet_header_and_the_pseudo_header_sum(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=True) as link:
        assert link.checksum_offload and link.gso_max_size == GSO_MAX_SIZE
        packet = build_packet(seg(b"hello"), checksum=False)
        link.send_batch([packet])
        (frame,) = drain(far)
        hdr = parse_vnet_hdr(frame)
        assert hdr == VirtioNetHdr(VnetFlags.NEEDS_CSUM, GsoType.NONE, False, 52, 0, 20, 16)
        body = frame[VNET_HDR_LEN:]
        assert body[:36] == packet[:36] and body[38:] == packet[38:]
        assert struct.unpack_from("!H", body, 36)[0] == pseudo_header_sum(STACK, PEER, 6, 37)
        assert link.stats.packets_sent == 1 and link.stats.bytes_sent == len(packet)
        assert link.tun_stats.gso_sent == 0


async def test_offload_send_asks_the_kernel_to_cut_a_super_segment(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=True, mtu=1500) as link:
        packet = build_packet(seg(b"s" * 1448 * 40), checksum=False)
        link.send_batch([packet])
        (frame,) = drain(far)
        hdr = parse_vnet_hdr(frame)
        assert (hdr.gso_type, hdr.gso_size, hdr.hdr_len) == (GsoType.TCPV4, 1448, 52)
        assert len(frame) == VNET_HDR_LEN + len(packet)
        assert link.tun_stats.gso_sent == 1 and link.stats.packets_dropped == 0


async def test_offload_send_drops_a_non_tcp_packet_above_the_mtu(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=True, mtu=576) as link:
        # Not TCP: nothing the kernel may segment, so only the one that fits the MTU goes.
        link.send_batch([udp_packet(1000), udp_packet(500)])
        frames = drain(far)
        assert len(frames) == 1 and frames[0][:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
        assert link.tun_stats.unsendable_dropped == 1
        assert link.stats.packets_dropped == 1 and link.stats.packets_sent == 1


async def test_plain_send_writes_packets_as_they_are_and_drops_oversize(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=False, mtu=1500) as link:
        assert not link.checksum_offload and link.gso_max_size == 0
        small = build_packet(seg(b"p" * 100))
        big = build_packet(seg(b"p" * 1461))
        link.send_batch([small, big, small])
        assert drain(far) == [small, small]
        assert link.tun_stats.unsendable_dropped == 1
        assert (link.stats.packets_sent, link.stats.packets_dropped) == (2, 1)


async def test_a_full_device_queue_drops_and_counts(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=True) as link:
        packets = [build_packet(seg(b"f" * 1000, seq=i), checksum=False) for i in range(400)]
        link.send_batch(packets)  # nobody reads: the queue fills and writes fail with EAGAIN
        got = drain(far)
        assert 0 < len(got) < 400
        assert link.tun_stats.write_dropped == 400 - len(got)
        assert link.tun_stats.last_write_errno == errno.EAGAIN
        assert link.stats.packets_sent == len(got)
        assert link.stats.packets_dropped == 400 - len(got)
        # What went out went out in order.
        sent_seqs = [struct.unpack_from("!I", f, VNET_HDR_LEN + 24)[0] for f in got]
        assert sent_seqs == sorted(sent_seqs)


# ---------------------------------------------------------------------- receiving


async def test_offload_receive_strips_the_header_and_keeps_partial_checksums(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=True) as link:
        partial = bytearray(inbound(b"x" * 3000))
        partial[36:38] = struct.pack("!H", pseudo_header_sum(PEER, STACK, 6, len(partial) - 20))
        coalesced = encode_vnet_hdr(VirtioNetHdr(VnetFlags.NEEDS_CSUM, GsoType.TCPV4, False, 40,
                                                 1460, 20, 16)) + bytes(partial)
        verified = encode_vnet_hdr(VirtioNetHdr(VnetFlags.DATA_VALID)) + bytes(partial)
        far.send(coalesced)
        far.send(verified)
        batch = await link.receive_batch()
        assert batch == [bytes(partial), bytes(partial)]
        assert link.tun_stats.gso_received == 1
        assert link.tun_stats.software_verified == 0
        parsed = parse_packet(batch[0], verify_checksum=False)
        assert isinstance(parsed, TcpSegment) and parsed.payload == b"x" * 3000


async def test_offload_receive_verifies_unflagged_packets_in_software(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=True) as link:
        good = inbound(b"good")
        bad = good[:-1] + b"X"
        for packet in (bad, good):
            far.send(bytes(VNET_HDR_LEN) + packet)  # flags 0: complete, never verified
        assert await link.receive_batch() == [good]
        assert link.tun_stats.software_verified == 2
        assert link.tun_stats.checksum_dropped == 1
        assert link.stats.packets_dropped == 1 and link.stats.packets_received == 1


@pytest.mark.parametrize("offload", [True, False])
async def test_non_ipv4_frames_are_dropped_and_counted_unparsed(pair: Pair, offload: bool) -> None:
    fd, far = pair
    prefix = encode_vnet_hdr(VirtioNetHdr(VnetFlags.DATA_VALID)) if offload else b""
    async with TunLink(fd, address=STACK, offload=offload) as link:
        v6 = ipv6_packet()
        # An IPv6 packet whose bytes 9 and 12..20 happen to look like IPv4/TCP to a sloppy check.
        lookalike = bytearray(inbound(b"z"))
        lookalike[0] = 0x65
        for frame in (v6, bytes(lookalike), b"\x45", inbound(b"ok")):
            far.send(prefix + frame)
        batch = await link.receive_batch()
        assert batch == [b"\x45", inbound(b"ok")]  # the runt is IPv4: the stack's parser judges it
        assert link.tun_stats.non_ipv4_dropped == 2
        assert link.stats.packets_dropped == 2


async def test_offload_receive_drops_gso_types_an_ipv4_stack_cannot_take(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=True) as link:
        udp_gso = encode_vnet_hdr(VirtioNetHdr(VnetFlags.NEEDS_CSUM, GsoType.UDP_L4, False, 28,
                                               1472, 20, 6))
        far.send(udp_gso + inbound())
        far.send(b"\x01\x01\x00")  # shorter than a header
        ecn = encode_vnet_hdr(VirtioNetHdr(VnetFlags.NEEDS_CSUM, GsoType.TCPV4, True, 40, 1460,
                                           20, 16))
        far.send(ecn + inbound(b"ecn"))
        assert await link.receive_batch() == [inbound(b"ecn")]
        assert link.tun_stats.vnet_dropped == 2 and link.tun_stats.gso_received == 1


async def test_receive_returns_at_most_max_packets_and_keeps_the_rest(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=False) as link:
        packets = [inbound(bytes([i]) * 10) for i in range(10)]
        for packet in packets:
            far.send(packet)
        got = [await link.receive_batch(4) for _ in range(3)]
        assert [len(b) for b in got] == [4, 4, 2]
        assert [p for b in got for p in b] == packets
        with pytest.raises(ValueError, match="max_packets"):
            await link.receive_batch(0)


async def test_receive_waits_for_the_fd_to_become_readable(pair: Pair) -> None:
    fd, far = pair
    async with TunLink(fd, address=STACK, offload=False) as link:
        got: list[list[bytes]] = []

        async def receiver(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            got.append(await link.receive_batch())

        async with trio.open_nursery() as nursery:
            await nursery.start(receiver)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # parked in wait_readable, not spinning
            far.send(inbound(b"late"))
        assert got == [[inbound(b"late")]]


async def test_close_wakes_a_waiting_receiver_and_refuses_further_use(pair: Pair) -> None:
    fd, _far = pair
    link = TunLink(fd, address=STACK, offload=True)
    outcome: list[BaseException] = []

    async def receiver() -> None:
        try:
            await link.receive_batch()
        except trio.ClosedResourceError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        await link.aclose()
    assert len(outcome) == 1
    assert link.closed
    await link.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        link.send_batch([inbound()])
    with pytest.raises(trio.ClosedResourceError):
        await link.receive_batch()
    with pytest.raises(OSError):
        os.fstat(fd)  # the fd was closed, not leaked


def test_constructor_rejects_bad_arguments(pair: Pair) -> None:
    fd, _far = pair
    try:
        with pytest.raises(ValueError, match="mtu"):
            TunLink(fd, address=STACK, mtu=67)
        with pytest.raises(ValueError, match="IPv4"):
            TunLink(fd, address="not-an-address")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a-name-that-is-too-long"}, "interface name"),
        ({"name": "bad/name"}, "interface name"),
        ({"address": "198.18.254.1"}, "both"),
        ({"address": "198.18.9.9"}, "not in 198.18.254.0/30"),
        ({"address": "198.18.254.3"}, "host addresses"),
        ({"prefix": 33}, "prefix"),
        ({"mtu": 70_000}, "mtu"),
    ],
)
def test_open_rejects_bad_arguments_before_touching_the_kernel(kwargs: dict[str, object],
                                                               message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TunLink.open(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- a real TUN device (root)

_skip = root_skip_reason()
root = pytest.mark.skipif(_skip is not None, reason=_skip or "")


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    ns = Namespace.create("tun")
    try:
        yield ns
    finally:
        ns.delete()


@root
@pytest.mark.root
async def test_open_tun_link_configures_the_device_and_deletes_it(namespace: Namespace) -> None:
    # The documented use: the device lands in the namespace the calling thread is in.
    with entered(namespace):
        async with open_tun_link(mtu=1400, offload=True) as link:
            shown = namespace.run("ip", "-d", "-o", "addr", "show", "dev", link.name)
            assert "inet 198.18.254.1/30" in shown and "inet6" not in shown
            details = namespace.run("ip", "-d", "-o", "link", "show", "dev", link.name)
            assert "mtu 1400" in details and "vnet_hdr on" in details and "UP" in details
            assert namespace.run(
                "cat", f"/proc/sys/net/ipv6/conf/{link.name}/disable_ipv6").strip() == "1"
            features = namespace.run("ethtool", "-k", link.name)
            assert "tcp-segmentation-offload: on" in features
            assert link.name.startswith("tstun") and link.mtu == 1400
    assert link.closed
    assert link.name not in namespace.run("ip", "-o", "link")


@root
@pytest.mark.root
async def test_a_taken_name_is_a_clear_error(namespace: Namespace) -> None:
    with entered(namespace):
        first = TunLink.open(name="tsdup0")
        try:
            with pytest.raises(TunError, match="tsdup0.*in use"):
                TunLink.open(name="tsdup0")
        finally:
            await first.aclose()
    assert "tsdup0" not in namespace.run("ip", "-o", "link")


@root
@pytest.mark.root
async def test_a_device_deleted_underneath_breaks_the_link(namespace: Namespace) -> None:
    with entered(namespace):
        link = TunLink.open(offload=True)
    async with link:
        namespace.run("ip", "link", "del", link.name)
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError, match="deleted"):
            await link.receive_batch()
        link.send_batch([build_packet(seg(b"gone"), checksum=False)])  # must not raise
        assert link.tun_stats.write_dropped == 1
        assert link.tun_stats.last_write_errno == errno.EBADFD


@root
@pytest.mark.root
@pytest.mark.parametrize("offload", [True, False])
async def test_ipv6_from_the_kernel_never_reaches_the_stack(namespace: Namespace,
                                                            offload: bool) -> None:
    with entered(namespace):
        link = TunLink.open(offload=offload)
        # Turn IPv6 back on and route a prefix through the device: the kernel now writes IPv6.
        namespace.run("sysctl", "-qw", f"net.ipv6.conf.{link.name}.disable_ipv6=0")
        namespace.run("ip", "-6", "addr", "add", "fd00:5::1/64", "dev", link.name, "nodad")
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    async with link:
        try:
            v6.sendto(b"six", ("fd00:5::2", 9))
            v4.sendto(b"four", (STACK, 9))
            with trio.fail_after(5):
                got: list[bytes] = []
                while not got:  # MLD/RS noise may come first; it is dropped as well
                    got = await link.receive_batch()
        finally:
            v6.close()
            v4.close()
        assert len(got) == 1 and got[0][0] >> 4 == 4 and got[0].endswith(b"four")
        assert link.tun_stats.non_ipv4_dropped >= 1


@root
@pytest.mark.root
@pytest.mark.parametrize(
    ("offload", "tso"), [(True, True), (True, False), (False, True)],
    ids=["offload-tso", "offload-mss-segments", "plain"],
)
async def test_kernel_tcp_exchanges_data_with_the_stack(namespace: Namespace, offload: bool,
                                                        tso: bool) -> None:
    size = 4_000_000
    data = os.urandom(16) * (size // 16)
    with entered(namespace):
        link = TunLink.open(offload=offload)
        kernel = trio.socket.socket()
    with trio.fail_after(30):
        async with link, open_stack(link, tso=tso) as stack:
            listener = await stack.open_tcp_listener(5001)
            received = bytearray()

            async def kernel_side() -> None:
                await kernel.connect((STACK, 5001))
                view = memoryview(data)
                while view:
                    view = view[await kernel.send(view[:1 << 20]):]
                kernel.shutdown(socket.SHUT_WR)
                while chunk := await kernel.recv(1 << 20):
                    received.extend(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kernel_side)
                stream = await listener.accept()
                got = bytearray()
                while chunk := await stream.receive_some(1 << 20):
                    got.extend(chunk)
                await stream.send_all(bytes(got))  # echo back: the stack sends the same size
                await stream.send_eof()
            kernel.close()
            await stream.aclose()
        assert got == data and received == data
        assert stack.stats.checksum_errors == 0 and stack.stats.malformed == 0
        if offload:
            # The kernel's TSO reaches us uncut; the stack's super-segments (when it builds
            # them) go out uncut too, and MSS-sized segments still get their checksums filled.
            assert link.tun_stats.gso_received > 0
            assert link.stats.bytes_received / link.stats.packets_received > 1500
            if tso:
                assert link.tun_stats.gso_sent > 0
            else:
                assert link.tun_stats.gso_sent == 0
                assert link.stats.packets_sent > size // 1448
        else:
            assert link.tun_stats.gso_received == link.tun_stats.gso_sent == 0
            assert link.stats.packets_received > size // 1500
            assert link.stats.packets_dropped == 0
