"""Conformance testing against packetdrill scripts (Google's and nplab's FreeBSD dialects).

:mod:`tcpstack.conformance.script` parses a script into a frozen AST (:class:`Script`); the runner
that executes it against the engine consumes that AST. Names are loaded lazily, so that
``python -m tcpstack.conformance.script`` does not import the module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcpstack.conformance.script import Script, ScriptError, parse_file, parse_script

__all__ = ["Script", "ScriptError", "parse_file", "parse_script"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tcpstack.conformance import script

        return getattr(script, name)
    raise AttributeError(f"module 'tcpstack.conformance' has no attribute {name!r}")
