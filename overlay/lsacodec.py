"""LSA bodies on the wire, with the caches that let a flood encode and decode each LSA once.

The frame around a body (header, counter, MAC) and every other body are in
:mod:`overlay.messages`, whose docstring gives the byte layout::

    Lsa         str origin, u64 seq, u16 count, count * LinkAdvert
      LinkAdvert  str neighbour, f64 latency (s), f64 loss, f64 throughput (B/s), u8 up

``str`` (u8 length + 1..255 bytes of UTF-8) is the field every body's node ids use, so its
codec (:func:`encode_str`, :func:`decode_strings`) lives here, below both modules.

Decoding never validates more than the encoding can express (lengths, ranges of the floats,
the ``up`` byte); anything else wrong with an LSA is :func:`overlay.linkstate.validate_lsa`'s
business. A body that does not parse raises :class:`Malformed`, ``IndexError``,
``struct.error`` or ``UnicodeDecodeError``; :func:`overlay.messages.decode_frame` turns all of
them into a MALFORMED drop.
"""

from __future__ import annotations

import math
import struct

import attrs

__all__ = [
    "LinkAdvert",
    "Lsa",
    "Malformed",
    "decode_lsa",
    "decode_strings",
    "encode_lsa",
    "encode_str",
]

_U8 = struct.Struct(">B")
_LSA_MID = struct.Struct(">QH")  # seq, count
_ADVERT_TAIL = struct.Struct(">dddB")  # latency, loss, throughput, up


class Malformed(Exception):
    """Raised inside body decoding; turned into FrameError(MALFORMED) at the boundary."""


@attrs.frozen(slots=True)
class LinkAdvert:
    """One link in an LSA: the origin's measurement of its link to ``neighbour``."""

    neighbour: str
    latency: float  # s
    loss: float  # fraction 0..1
    throughput: float  # bytes/s
    up: bool


@attrs.frozen(slots=True)
class Lsa:
    """Link-state advertisement: every link of ``origin``; a higher ``seq`` supersedes."""

    origin: str
    seq: int
    links: tuple[LinkAdvert, ...]


# -- str fields --------------------------------------------------------------------------------

# Node ids repeat in nearly every frame: remember their encoded fields (bounded).
_STR_FIELDS: dict[str, bytes] = {}
_STR_FIELDS_MAX = 4096


def encode_str(value: str, what: str) -> bytes:
    """``value`` as a ``str`` field; ``what`` names it in the ValueError if it cannot be one."""
    if type(value) is str:
        field = _STR_FIELDS.get(value)
        if field is not None:
            return field
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {value!r}")
    raw = value.encode("utf-8")
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"{what} must be 1..255 bytes of UTF-8, got {len(raw)}")
    field = _U8.pack(len(raw)) + raw
    if len(_STR_FIELDS) >= _STR_FIELDS_MAX:
        _STR_FIELDS.clear()
    _STR_FIELDS[value] = field
    return field


def decode_strings(body: bytes, pos: int, count: int) -> tuple[list[str], int]:
    """``count`` ``str`` fields of ``body`` from ``pos``, and the offset after them."""
    out = []
    for _ in range(count):
        n = body[pos]  # IndexError past the end
        nxt = pos + 1 + n
        raw = body[pos + 1 : nxt]
        if n == 0 or len(raw) != n:
            raise Malformed("bad string length")
        out.append(raw.decode("utf-8"))  # UnicodeDecodeError
        pos = nxt
    return out, pos


# -- LSA bodies --------------------------------------------------------------------------------

# A flooded LSA is the same body on every link: a node receives each instance once per
# neighbour and sends it to all but one, and relays pass the object on unchanged. So LSA bodies
# are decoded once per distinct body and encoded once per object (bounded; the identity cache
# holds the object, so its id cannot be reused while the entry lives). Lsa is immutable.
_LSA_CACHE_MAX = 4096
_LSAS: dict[bytes, Lsa] = {}  # body -> the Lsa it decodes to
_LSA_BODIES: dict[int, tuple[Lsa, bytes]] = {}  # id(lsa) -> (lsa, its body)


def _remember_lsa(lsa: Lsa, body: bytes) -> None:
    if len(_LSA_BODIES) >= _LSA_CACHE_MAX:
        _LSA_BODIES.clear()
    _LSA_BODIES[id(lsa)] = (lsa, body)


def _advert(link: LinkAdvert) -> bytes:
    for name in ("latency", "throughput"):
        value = getattr(link, name)
        if not isinstance(value, int | float) or math.isnan(value) or value < 0:
            raise ValueError(f"LinkAdvert.{name} must be >= 0 (inf allowed), got {value!r}")
    if not isinstance(link.loss, int | float) or not 0.0 <= link.loss <= 1.0:
        raise ValueError(f"LinkAdvert.loss must be in [0, 1], got {link.loss!r}")
    return encode_str(link.neighbour, "LinkAdvert.neighbour") + _ADVERT_TAIL.pack(
        link.latency, link.loss, link.throughput, 1 if link.up else 0
    )


def encode_lsa(msg: Lsa) -> bytes:
    """The body of ``msg`` (ValueError if a field cannot be encoded)."""
    cached = _LSA_BODIES.get(id(msg))
    if cached is not None and cached[0] is msg:
        return cached[1]
    if len(msg.links) > 0xFFFF:
        raise ValueError(f"an Lsa carries at most 65535 links, got {len(msg.links)}")
    body = b"".join(
        (
            encode_str(msg.origin, "Lsa.origin"),
            _LSA_MID.pack(msg.seq, len(msg.links)),
            *(_advert(link) for link in msg.links),
        )
    )
    _remember_lsa(msg, body)
    return body


def decode_lsa(body: bytes) -> Lsa:
    """The Lsa that ``body`` (exactly the bytes between the counter and the MAC) encodes."""
    cached = _LSAS.get(body)
    if cached is not None:
        return cached
    msg = _decode_lsa(body)
    if len(_LSAS) >= _LSA_CACHE_MAX:
        _LSAS.clear()
    _LSAS[body] = msg
    _remember_lsa(msg, body)
    return msg


def _decode_lsa(body: bytes) -> Lsa:
    (origin,), pos = decode_strings(body, 0, 1)
    seq, count = _LSA_MID.unpack_from(body, pos)
    pos += _LSA_MID.size
    links = []
    for _ in range(count):
        (neighbour,), pos = decode_strings(body, pos, 1)
        latency, loss, throughput, up = _ADVERT_TAIL.unpack_from(body, pos)
        pos += _ADVERT_TAIL.size
        if not (latency >= 0 and throughput >= 0 and 0.0 <= loss <= 1.0 and up <= 1):
            raise Malformed(f"LinkAdvert to {neighbour!r} out of range")
        links.append(LinkAdvert(neighbour, latency, loss, throughput, bool(up)))
    if pos != len(body):
        raise Malformed(f"{len(body) - pos} trailing bytes")
    return Lsa(origin, seq, tuple(links))
