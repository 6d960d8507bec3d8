"""TCPInfo against Linux: layout checked by gcc on the system header, values by a kernel socket."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
from pathlib import Path

import attrs
import pytest

from tcpstack.tcp.info import FIELD_LAYOUT, TCPInfo
from tcpstack.tcp.state import CaState, TcpiOption, TcpState

HEADER = Path("/usr/include/linux/tcp.h")
_WIDTH = {"8": 1, "16": 2, "32": 4, "64": 8}
_BITFIELDS = {
    "snd_wscale": 4,
    "rcv_wscale": 4,
    "delivery_rate_app_limited": 1,
    "fastopen_client_fail": 2,
}


def _header_members() -> list[tuple[str, int, int | None]]:
    """(member without tcpi_, C width in bytes, bit width or None) from the system header."""
    text = HEADER.read_text()
    body = re.search(r"struct tcp_info \{(.*?)\n\};", text, re.S)
    assert body is not None, "struct tcp_info not found in the header"
    members: list[tuple[str, int, int | None]] = []
    for decl in re.findall(r"__u(8|16|32|64)\s+([^;]+);", re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)):
        width, names = decl
        for part in names.split(","):
            m = re.fullmatch(r"\s*tcpi_(\w+)\s*(?::\s*(\d+))?\s*", part)
            assert m is not None, part
            members.append((m.group(1), _WIDTH[width], int(m.group(2)) if m.group(2) else None))
    return members


def _random_info(rng: random.Random) -> TCPInfo:
    values: dict[str, object] = {}
    sizes = {name: size for name, _, size in FIELD_LAYOUT}
    for field in attrs.fields(TCPInfo):
        name = field.name
        if name == "congestion":
            values[name] = rng.choice(["cubic", "reno", "bbr"])
        elif name == "delivery_rate_app_limited":
            values[name] = rng.random() < 0.5
        elif name in _BITFIELDS:
            values[name] = rng.randrange(1 << _BITFIELDS[name])
        else:
            values[name] = rng.randrange(1 << (8 * sizes[name]))
    return TCPInfo(**values)  # type: ignore[arg-type]


@attrs.frozen
class GccDump:
    sizeof: int
    offsets: dict[str, tuple[int, int]]  # member -> (offsetof, sizeof), non-bitfield members
    values: dict[str, int]  # the value the C program stored in each member
    struct_bytes: bytes
    members: list[tuple[str, int, int | None]]


@pytest.fixture(scope="module")
def gcc_dump(tmp_path_factory: pytest.TempPathFactory) -> GccDump:
    """Compile a C program against the system header that prints sizeof, each member's offset
    and size, and the bytes of a struct whose members hold distinct values."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is missing (install linux-libc-dev)")
    members = _header_members()
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <string.h>",
        "#include <linux/tcp.h>",
        "int main(void) {",
        "  struct tcp_info t;",
        "  memset(&t, 0, sizeof t);",
        '  printf("sizeof %zu\\n", sizeof(struct tcp_info));',
    ]
    values: dict[str, int] = {}
    for i, (name, width, bits) in enumerate(members):
        if bits is None:
            lines.append(
                f'  printf("member {name} %zu %zu\\n", offsetof(struct tcp_info, tcpi_{name}),'
                f" sizeof(t.tcpi_{name}));"
            )
            value = (0x9E3779B97F4A7C15 * (i + 1)) & ((1 << (8 * width)) - 1)
        else:
            # Asymmetric patterns, so a swapped nibble or shifted bit shows.
            value = {"snd_wscale": 0xA, "rcv_wscale": 0x5, "fastopen_client_fail": 2}.get(name, 1)
        values[name] = value
        lines.append(f"  t.tcpi_{name} = {value}ULL;")
    lines += [
        "  const unsigned char *p = (const unsigned char *)&t;",
        '  printf("bytes ");',
        '  for (size_t i = 0; i < sizeof t; i++) printf("%02x", p[i]);',
        '  printf("\\n");',
        "  return 0;",
        "}",
    ]
    folder = tmp_path_factory.mktemp("tcpinfo_c")
    (folder / "t.c").write_text("\n".join(lines))
    subprocess.run(["gcc", "-O0", "-o", str(folder / "t"), str(folder / "t.c")], check=True)
    out = subprocess.run([str(folder / "t")], check=True, capture_output=True, text=True).stdout
    offsets: dict[str, tuple[int, int]] = {}
    sizeof = -1
    struct_bytes = b""
    for line in out.splitlines():
        words = line.split()
        if words[0] == "sizeof":
            sizeof = int(words[1])
        elif words[0] == "member":
            offsets[words[1]] = (int(words[2]), int(words[3]))
        elif words[0] == "bytes":
            struct_bytes = bytes.fromhex(words[1])
    assert sizeof == len(struct_bytes) > 0
    return GccDump(sizeof, offsets, values, struct_bytes, members)


def test_size_is_linux_6_18() -> None:
    assert TCPInfo.SIZE == 280
    assert len(TCPInfo.zeros().pack()) == TCPInfo.SIZE


def test_every_header_member_is_a_field_in_order(gcc_dump: GccDump) -> None:
    members = [name for name, _, _ in gcc_dump.members]
    ours = [f.name for f in attrs.fields(TCPInfo) if f.name != "congestion"]
    # The system header may be older than the kernel; it must be a prefix of ours.
    assert ours[: len(members)] == members


def test_offsets_and_sizes_match_gcc(gcc_dump: GccDump) -> None:
    offsets = gcc_dump.offsets
    layout = {name: (offset, size) for name, offset, size in FIELD_LAYOUT}
    assert len(offsets) == sum(1 for _, _, bits in gcc_dump.members if bits is None) >= 50
    for name, (offset, size) in offsets.items():
        assert layout[name] == (offset, size), name
        assert TCPInfo.offsetof(name) == offset
    # Spot checks a reader can verify by hand against the header.
    assert TCPInfo.offsetof("rto") == 8
    assert TCPInfo.offsetof("pacing_rate") == 104
    assert TCPInfo.offsetof("snd_wscale") == TCPInfo.offsetof("rcv_wscale") == 6
    assert TCPInfo.offsetof("fastopen_client_fail") == 7


def test_header_sizeof_is_a_boundary_of_our_layout(gcc_dump: GccDump) -> None:
    sizeof = gcc_dump.sizeof
    ends = {offset + size for _, offset, size in FIELD_LAYOUT}
    assert sizeof in ends or sizeof == TCPInfo.SIZE
    assert sizeof <= TCPInfo.SIZE


def test_pack_is_byte_identical_to_gcc_struct(gcc_dump: GccDump) -> None:
    """Every member of the header (bitfields included) set to a distinct value in C and in
    Python gives the same bytes, so field order, padding and bit allocation all agree."""
    values = gcc_dump.values
    c_bytes = gcc_dump.struct_bytes
    fields: dict[str, object] = dict(values)
    fields["delivery_rate_app_limited"] = bool(values["delivery_rate_app_limited"])
    info = TCPInfo.zeros(**fields)
    packed = info.pack()
    assert packed[: len(c_bytes)] == c_bytes
    assert TCPInfo.unpack(c_bytes) == info


def test_bitfields_take_the_bits_gcc_gives_them() -> None:
    packed = TCPInfo.zeros(
        snd_wscale=0xA, rcv_wscale=0x5, delivery_rate_app_limited=True, fastopen_client_fail=2
    ).pack()
    assert packed[6] == 0x5A  # snd_wscale in the low nibble
    assert packed[7] == 0b101  # app_limited bit 0, fastopen_client_fail bits 1-2


def test_round_trip_random_values() -> None:
    rng = random.Random(20240611)
    for _ in range(200):
        info = _random_info(rng)
        assert TCPInfo.unpack(info.pack(), congestion=info.congestion) == info


def test_unpack_prefix_zeroes_missing_fields() -> None:
    info = _random_info(random.Random(7))
    packed = info.pack()
    old = TCPInfo.unpack(packed[:232], congestion=info.congestion)  # Linux 5.5 .. 6.1 size
    assert old.snd_wnd == info.snd_wnd
    assert old.rcv_ooopack == info.rcv_ooopack
    assert old.rcv_wnd == old.rehash == old.total_rto == old.accecn_opt_seen == 0
    # A cut inside snd_wnd (228..232) drops it rather than reading half of it.
    cut = TCPInfo.unpack(packed[:230])
    assert cut.snd_wnd == 0 and cut.rcv_ooopack == info.rcv_ooopack
    # Only the first 8 bytes (the u8s and bitfields).
    tiny = TCPInfo.unpack(packed[:8])
    assert (tiny.state, tiny.snd_wscale, tiny.rto) == (info.state, info.snd_wscale, 0)
    assert TCPInfo.unpack(b"") == TCPInfo.zeros()


def test_unpack_ignores_bytes_of_a_newer_kernel() -> None:
    info = _random_info(random.Random(8))
    assert TCPInfo.unpack(info.pack() + b"\xff" * 24, congestion=info.congestion) == info
    assert TCPInfo.unpack(bytearray(info.pack()), congestion=info.congestion) == info
    assert TCPInfo.unpack(memoryview(info.pack()), congestion=info.congestion) == info


def test_unpack_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="needs bytes"):
        TCPInfo.unpack("not bytes")  # type: ignore[arg-type]


def test_counters_wrap_like_the_kernels_u32() -> None:
    info = TCPInfo.zeros(segs_out=(1 << 32) + 5, bytes_acked=(1 << 64) + 1, total_rto=70000)
    back = TCPInfo.unpack(info.pack())
    assert (back.segs_out, back.bytes_acked, back.total_rto) == (5, 1, 70000 - 65536)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rtt", -1, "rtt must be a non-negative int"),
        ("rtt", 1.5, "rtt must be a non-negative int"),
        ("snd_wscale", 16, "snd_wscale must fit in 4 bits"),
        ("rcv_wscale", -1, "rcv_wscale must fit in 4 bits"),
        ("fastopen_client_fail", 4, "fastopen_client_fail must fit in 2 bits"),
    ],
)
def test_pack_rejects_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TCPInfo.zeros(**{field: value}).pack()


def test_every_field_is_required() -> None:
    with pytest.raises(TypeError):
        TCPInfo()  # type: ignore[call-arg]
    kwargs = TCPInfo.zeros().to_dict()
    del kwargs["snd_cwnd"]
    with pytest.raises(TypeError, match="snd_cwnd"):
        TCPInfo(**kwargs)
    with pytest.raises(TypeError, match="bogus"):
        TCPInfo.zeros(bogus=1)


def test_to_dict_is_json_and_complete() -> None:
    info = TCPInfo.zeros(
        state=TcpState.ESTABLISHED.linux_code,
        ca_state=CaState.RECOVERY,
        options=TcpiOption.SACK | TcpiOption.TIMESTAMPS,
        delivery_rate_app_limited=True,
        rtt=12345,
        congestion="cubic",
    )
    d = json.loads(json.dumps(info.to_dict()))
    assert len(d) == len(attrs.fields(TCPInfo))
    assert d["state"] == 1 and d["ca_state"] == 3 and d["options"] == 3
    assert d["delivery_rate_app_limited"] is True and d["rtt"] == 12345
    assert d["congestion"] == "cubic"
    assert TCPInfo(**d) == info
    assert info.tcp_state is TcpState.ESTABLISHED
    assert info.ca is CaState.RECOVERY
    assert info.option_flags == TcpiOption.SACK | TcpiOption.TIMESTAMPS


def test_offsetof_unknown_member() -> None:
    with pytest.raises(ValueError, match="no member 'nope'"):
        TCPInfo.offsetof("nope")


def test_kernel_socket_tcp_info_unpacks_to_sane_values() -> None:
    """The kernel's own TCP, on loopback, read through TCPInfo.unpack."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    except OSError as exc:
        listener.close()
        pytest.skip(f"no loopback TCP here: {exc}")
    with listener, client, server:
        server.settimeout(5)
        client.sendall(b"x" * 5000)
        received = 0
        while received < 5000:
            received += len(server.recv(65536))
        server.sendall(b"y" * 100)  # its ACK-bearing reply makes the client's RTT sample certain
        client.recv(100)
        raw = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPInfo.SIZE)
        info = TCPInfo.unpack(raw, congestion="kernel")
        srv = TCPInfo.unpack(server.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPInfo.SIZE))

    # The kernel answers with min(asked, its sizeof): on a kernel at least as new as our layout it
    # fills it all; on an older one its size must fall on one of our field boundaries.
    ends = {offset + size for _, offset, size in FIELD_LAYOUT}
    assert len(raw) == TCPInfo.SIZE or len(raw) in ends
    assert info.tcp_state is TcpState.ESTABLISHED
    assert info.ca is CaState.OPEN
    assert 0 < info.snd_mss <= info.pmtu
    assert info.rtt > 0 and info.min_rtt > 0 and info.rto >= 200_000
    assert info.snd_cwnd >= 10 and info.advmss > 0
    assert info.bytes_acked >= 5000 and info.bytes_sent >= 5000
    assert info.data_segs_out >= 1 and info.segs_out >= info.data_segs_out
    assert srv.bytes_received >= 5000 and srv.data_segs_in >= 1
    assert info.options & TcpiOption.WSCALE or info.snd_wscale == 0
    if len(raw) >= TCPInfo.offsetof("rcv_wnd") + 4:
        assert info.rcv_wnd > 0
    assert TCPInfo.unpack(info.pack(), congestion="kernel") == info
