"""Construction of frozen value types without their attrs ``__init__``.

The generated ``__init__`` of a frozen slotted attrs class sets every field through
``object.__setattr__`` and runs converters: ~2 us for :class:`TcpSegment` on this machine kind,
more than the whole rest of parsing a packet. The parser already produces values of the right
types, so it builds instances of private subclasses that share the parent's slot layout but keep
the plain ``object`` attribute protocol (so ``self.x = v`` compiles to the specialised slot store,
a few ns each), then switches ``__class__`` to the public type. CPython allows that switch because
the subclass adds no slots (``__slots__ = ()``); the result is an ordinary instance of the public
class, equal to and hashing like one built through ``__init__``.

Overriding both ``__setattr__`` and ``__delattr__`` matters: they share one type slot, and if only
one is overridden CPython falls back to a generic dispatcher that is ~20x slower per store.
``__init__ = object.__init__`` makes calling the class the cheapest allocation there is: CPython
puts ``object_init`` itself in the type slot (it recognises the wrapper), so ``_MutableSegment()``
is one C call, ~50 ns less than ``object.__new__(_MutableSegment)``, which goes through the
generic ``__new__`` wrapper and its argument tuples.

Only the codec uses these; callers must pass values already normalised (``str`` addresses,
``TcpFlags``, ``bytes`` payload, tuples of ``SackBlock``), which the codec guarantees. The tests
check that every attrs field is set, so a field added to a value type cannot be forgotten here.
"""

from __future__ import annotations

from typing import Any

from .segment import SackBlock, TcpFlags, TcpOptions, TcpSegment, Timestamps

__all__ = ["new_segment", "new_options", "SEGMENT_FIELDS", "OPTIONS_FIELDS"]


class _MutableSegment(TcpSegment):
    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    __init__ = object.__init__  # no arguments: the caller stores the slots


class _MutableOptions(TcpOptions):
    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    __init__ = object.__init__  # no arguments: the caller stores the slots


SEGMENT_FIELDS = (
    "src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "urgent", "options",
    "payload", "ttl", "tos", "ip_id", "df",
)
OPTIONS_FIELDS = ("mss", "wscale", "sack_permitted", "sack_blocks", "timestamps", "unknown", "layout")


def new_segment(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: TcpFlags,
    window: int,
    urgent: int,
    options: TcpOptions,
    payload: bytes,
    ttl: int,
    tos: int,
    ip_id: int,
    df: bool,
) -> TcpSegment:
    """A :class:`TcpSegment` from already-normalised field values (no converters run)."""
    # Typed Any: to mypy the attrs fields are read-only properties, as they are on the public class.
    self: Any = _MutableSegment()
    self.src = src
    self.dst = dst
    self.sport = sport
    self.dport = dport
    self.seq = seq
    self.ack = ack
    self.flags = flags
    self.window = window
    self.urgent = urgent
    self.options = options
    self.payload = payload
    self.ttl = ttl
    self.tos = tos
    self.ip_id = ip_id
    self.df = df
    self.__class__ = TcpSegment
    return self


def new_options(
    mss: int | None,
    wscale: int | None,
    sack_permitted: bool,
    sack_blocks: tuple[SackBlock, ...],
    timestamps: Timestamps | None,
    unknown: tuple[tuple[int, bytes], ...],
    layout: tuple[int, ...] | None,
) -> TcpOptions:
    """A :class:`TcpOptions` from already-normalised field values (no converters run)."""
    self: Any = _MutableOptions()
    self.mss = mss
    self.wscale = wscale
    self.sack_permitted = sack_permitted
    self.sack_blocks = sack_blocks
    self.timestamps = timestamps
    self.unknown = unknown
    self.layout = layout
    self.__class__ = TcpOptions
    return self
