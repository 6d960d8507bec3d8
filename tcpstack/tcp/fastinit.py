"""Positional constructors for the engine's frozen per-ACK value types, without attrs' __init__.

The ``__init__`` attrs generates for a frozen slotted class stores every field through
``object.__setattr__`` (a bound-method call each): ~1 us for the ten fields of
:class:`~tcpstack.tcp.scoreboard.AckResult` or :class:`~tcpstack.tcp.rate.RateSample`, and
the engine builds one of each per ACK. As :mod:`tcpstack.wire._fast` does for segments, the
constructor made here fills an instance of a private subclass that shares the parent's slot
layout but keeps the plain attribute protocol (a slot store each), then switches ``__class__``
to the public type: the result is an ordinary instance, equal to and hashing like one built
through ``__init__``.

Only for classes without converters or validators, and callers pass every field in order
(checked against ``attrs.fields`` when the constructor is made, so a field added later cannot be
silently left unset: the constructor's arity changes and every caller fails loudly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

__all__ = ["fast_constructor"]

T = TypeVar("T")


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """A function ``(field1, field2, ...) -> cls`` taking every attrs field positionally."""
    fields = attrs.fields(cls)  # type: ignore[arg-type]  # any attrs class
    for f in fields:
        if f.converter is not None or f.validator is not None or not f.init:
            raise TypeError(f"{cls.__name__}.{f.name}: converters/validators need __init__")
    mutable = type(
        f"_Mutable{cls.__name__}",
        (cls,),
        {
            "__slots__": (),
            # Both overridden: they share one type slot (see tcpstack.wire._fast).
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            "__init__": object.__init__,
        },
    )
    names = [f.name for f in fields]
    body = "".join(f"    o.{n} = {n}\n" for n in names)
    src = f"def new({', '.join(names)}):\n    o = _mutable()\n{body}    o.__class__ = _cls\n    return o\n"
    namespace: dict[str, Any] = {"_mutable": mutable, "_cls": cls}
    exec(src, namespace)  # noqa: S102 - source built from attrs field names only
    new: Callable[..., T] = namespace["new"]
    new.__name__ = new.__qualname__ = f"new_{cls.__name__}"
    new.__doc__ = f"A {cls.__name__} from every field, in declaration order (no validation)."
    return new
