"""Packet builders shared by the link tests (imported by module name: tests/links is on sys.path)."""

from __future__ import annotations

import socket
import struct


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, payload: bytes = b"", *, ident: int = 0, proto: int = 253) -> bytes:
    """A valid IPv4 packet (protocol 253: experimentation, RFC 3692) carrying ``payload``."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        ident & 0xFFFF,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return header + payload


def numbered(src: str, dst: str, n: int, size: int = 100) -> bytes:
    """Packet ``n`` of a sequence: the number sits in the first 4 payload bytes."""
    body = struct.pack("!I", n) + bytes(max(0, size - 24))
    return ipv4(src, dst, body, ident=n)


def number_of(packet: bytes) -> int:
    return int(struct.unpack_from("!I", packet, 20)[0])
