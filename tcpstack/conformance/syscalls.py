"""System calls of a script, carried out with :mod:`tcpstack.socket`.

:class:`SyscallRunner` keeps the script's descriptor numbers (``socket(...) = 3`` names the new
socket 3, whatever the stack calls it) and turns each call into the socket method Linux would
run, returning what the call returned: ``(value, None)`` or ``(-1, "ECONNREFUSED")``. Values a
call reads back (``getsockopt(..., [65536], ...)``, ``ioctl(..., SIOCINQ, [0])``) are compared
here and reported as :class:`ValueMismatch`. A call or argument the runner cannot reproduce
raises :class:`~tcpstack.conformance.environment.Unsupported`.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Callable
from typing import Any

from tcpstack import socket as tsocket
from tcpstack.conformance.environment import Unsupported
from tcpstack.conformance.matching import REMOTE_ADDRESS, Flow
from tcpstack.conformance.nodes import (
    BinaryExpr,
    EllipsisExpr,
    Expr,
    IntExpr,
    ListExpr,
    StringExpr,
    StructExpr,
    SymbolExpr,
    SyscallEvent,
)

__all__ = ["SyscallRunner", "ValueMismatch", "O_RDWR", "O_NONBLOCK"]

O_RDWR = 0x2
O_NONBLOCK = 0x800  # Linux's value; scripts compare F_GETFL results symbolically or before it is set
F_GETFL = 3
F_SETFL = 4
SIOCINQ = 0x541B  # == FIONREAD
CONNECT_PORT = 8080  # packetdrill's --connect_port default

SYMBOLS: dict[str, int] = {
    "AF_INET": tsocket.AF_INET, "PF_INET": tsocket.AF_INET, "SOCK_STREAM": tsocket.SOCK_STREAM,
    "IPPROTO_TCP": tsocket.IPPROTO_TCP, "SOL_TCP": tsocket.SOL_TCP, "SOL_SOCKET": tsocket.SOL_SOCKET,
    "SO_REUSEADDR": tsocket.SO_REUSEADDR, "SO_REUSEPORT": tsocket.SO_REUSEPORT,
    "SO_KEEPALIVE": tsocket.SO_KEEPALIVE, "SO_SNDBUF": tsocket.SO_SNDBUF,
    "SO_RCVBUF": tsocket.SO_RCVBUF, "SO_ERROR": tsocket.SO_ERROR, "SO_LINGER": tsocket.SO_LINGER,
    "SO_TYPE": tsocket.SO_TYPE,
    "TCP_NODELAY": tsocket.TCP_NODELAY, "TCP_MAXSEG": tsocket.TCP_MAXSEG,
    "TCP_KEEPIDLE": tsocket.TCP_KEEPIDLE, "TCP_KEEPINTVL": tsocket.TCP_KEEPINTVL,
    "TCP_KEEPCNT": tsocket.TCP_KEEPCNT, "TCP_INFO": tsocket.TCP_INFO,
    "TCP_CONGESTION": tsocket.TCP_CONGESTION, "TCP_USER_TIMEOUT": tsocket.TCP_USER_TIMEOUT,
    "SHUT_RD": tsocket.SHUT_RD, "SHUT_WR": tsocket.SHUT_WR, "SHUT_RDWR": tsocket.SHUT_RDWR,
    "MSG_PEEK": tsocket.MSG_PEEK, "MSG_DONTWAIT": tsocket.MSG_DONTWAIT,
    "O_RDWR": O_RDWR, "O_NONBLOCK": O_NONBLOCK, "F_GETFL": F_GETFL, "F_SETFL": F_SETFL,
    "SIOCINQ": SIOCINQ, "FIONREAD": SIOCINQ,
}


class ValueMismatch(Exception):
    """A call succeeded but read back another value than the script's."""


def evaluate(expr: Expr) -> int:
    """An integer argument: a number, a known symbol, an errno name or ``a|b``."""
    if isinstance(expr, IntExpr):
        return expr.value
    if isinstance(expr, SymbolExpr):
        if expr.name in SYMBOLS:
            return SYMBOLS[expr.name]
        code = getattr(_errno, expr.name, None)
        if isinstance(code, int):
            return code
        raise Unsupported(f"unknown symbol {expr.name}")
    if isinstance(expr, BinaryExpr) and expr.op == "|":
        return evaluate(expr.left) | evaluate(expr.right)
    if isinstance(expr, ListExpr) and len(expr.items) == 1:
        return evaluate(expr.items[0])
    raise Unsupported(f"cannot evaluate {expr}")


def _errno_name(exc: OSError) -> str:
    return _errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")


class SyscallRunner:
    """The script's descriptor table over :mod:`tcpstack.socket` sockets."""

    def __init__(self, flow: Flow, on_connection: Callable[[tsocket.SocketType], None]) -> None:
        self.flow = flow
        self.fds: dict[int, tsocket.SocketType] = {}
        self._on_connection = on_connection

    def _sock(self, args: tuple[Expr, ...]) -> tsocket.SocketType:
        if not args:
            raise Unsupported("call without a descriptor")
        fd = evaluate(args[0])
        sock = self.fds.get(fd)
        if sock is None:
            raise OSError(_errno.EBADF, f"descriptor {fd} is not open")
        return sock

    async def call(self, ev: SyscallEvent) -> tuple[int, str | None]:
        """Run ``ev``; return (result, errno name or None)."""
        handler = getattr(self, f"_sys_{ev.name}", None)
        if handler is None:
            raise Unsupported(f"system call {ev.name}() is not supported")
        try:
            result: int = await handler(ev)
        except OSError as exc:
            return -1, _errno_name(exc)
        return result, None

    # ------------------------------------------------------------------ calls
    async def _sys_socket(self, ev: SyscallEvent) -> int:
        args = ev.args
        family = tsocket.AF_INET if isinstance(args[0], EllipsisExpr) else evaluate(args[0])
        sock = tsocket.socket(family, evaluate(args[1]), evaluate(args[2]) if len(args) > 2 else 0)
        fd = ev.result.value if isinstance(ev.result, IntExpr) and ev.result.value >= 0 else sock.fileno()
        if fd in self.fds:
            self.fds[fd].close()
        self.fds[fd] = sock
        return fd

    async def _sys_bind(self, ev: SyscallEvent) -> int:
        await self._sock(ev.args).bind(("0.0.0.0", self.flow.local_port))
        return 0

    async def _sys_listen(self, ev: SyscallEvent) -> int:
        self._sock(ev.args).listen(evaluate(ev.args[1]))
        return 0

    async def _sys_accept(self, ev: SyscallEvent) -> int:
        sock, _address = await self._sock(ev.args).accept()
        fd = ev.result.value if isinstance(ev.result, IntExpr) and ev.result.value >= 0 else sock.fileno()
        self.fds[fd] = sock
        self._on_connection(sock)
        return fd

    async def _sys_connect(self, ev: SyscallEvent) -> int:
        sock = self._sock(ev.args)
        first = sock.connection is None
        # packetdrill connects to the remote address at its "connect port", 8080 by default.
        self.flow.remote_port = CONNECT_PORT
        try:
            await sock.connect((REMOTE_ADDRESS, self.flow.remote_port))
        finally:
            if first and sock.connection is not None:
                self.flow.local_port = sock.connection.local[1]
                self._on_connection(sock)
        return 0

    async def _sys_read(self, ev: SyscallEvent) -> int:
        return len(await self._sock(ev.args).recv(evaluate(ev.args[2])))

    async def _sys_recv(self, ev: SyscallEvent) -> int:
        flags = evaluate(ev.args[3]) if len(ev.args) > 3 else 0
        return len(await self._sock(ev.args).recv(evaluate(ev.args[2]), flags))

    async def _sys_write(self, ev: SyscallEvent) -> int:
        size = evaluate(ev.args[2])
        return await self._sock(ev.args).send(bytes(size))

    async def _sys_send(self, ev: SyscallEvent) -> int:
        flags = evaluate(ev.args[3]) if len(ev.args) > 3 else 0
        return await self._sock(ev.args).send(bytes(evaluate(ev.args[2])), flags)

    async def _sys_close(self, ev: SyscallEvent) -> int:
        sock = self._sock(ev.args)
        sock.close()
        del self.fds[evaluate(ev.args[0])]
        return 0

    async def _sys_shutdown(self, ev: SyscallEvent) -> int:
        self._sock(ev.args).shutdown(evaluate(ev.args[1]))
        return 0

    async def _sys_fcntl(self, ev: SyscallEvent) -> int:
        sock = self._sock(ev.args)
        cmd = evaluate(ev.args[1])
        if cmd == F_GETFL:
            return O_RDWR | (O_NONBLOCK if not sock.getblocking() else 0)
        if cmd == F_SETFL:
            sock.setblocking(not evaluate(ev.args[2]) & O_NONBLOCK)
            return 0
        raise Unsupported(f"fcntl command {ev.args[1]}")

    async def _sys_ioctl(self, ev: SyscallEvent) -> int:
        sock = self._sock(ev.args)
        if evaluate(ev.args[1]) != SIOCINQ:
            raise Unsupported(f"ioctl {ev.args[1]}")
        conn = sock.connection
        if conn is None:
            raise OSError(_errno.EINVAL, "not connected")
        self._check_value(ev.args[2], conn.readable_bytes, "SIOCINQ")
        return 0

    async def _sys_setsockopt(self, ev: SyscallEvent) -> int:
        sock = self._sock(ev.args)
        level, name = evaluate(ev.args[1]), self._option(ev.args[2])
        sock.setsockopt(level, name, self._option_value(ev.args[3]))
        return 0

    async def _sys_getsockopt(self, ev: SyscallEvent) -> int:
        sock = self._sock(ev.args)
        level, name = evaluate(ev.args[1]), self._option(ev.args[2])
        want = ev.args[3]
        if _is_text(want):
            got = sock.getsockopt(level, name, tsocket.TCP_CA_NAME_MAX)
            assert isinstance(got, bytes)
            text = got.split(b"\0", 1)[0].decode()
            if text != _text(want):
                raise ValueMismatch(f"getsockopt value: expected {want} got \"{text}\"")
            return 0
        value = sock.getsockopt(level, name)
        assert isinstance(value, int)
        self._check_value(want, value, "getsockopt value")
        return 0

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _option(expr: Expr) -> int:
        if isinstance(expr, SymbolExpr) and expr.name not in SYMBOLS:
            raise Unsupported(f"socket option {expr.name} is not supported")
        return evaluate(expr)

    @staticmethod
    def _option_value(expr: Expr) -> int | bytes:
        if _is_text(expr):
            return _text(expr).encode()
        if isinstance(expr, StructExpr):
            onoff, linger = expr.field("l_onoff"), expr.field("l_linger")
            if onoff is None or linger is None:
                raise Unsupported(f"option value {expr}")
            return struct.pack("ii", evaluate(onoff), evaluate(linger))
        return evaluate(expr)

    @staticmethod
    def _check_value(want: Expr, got: int, what: str) -> None:
        if isinstance(want, EllipsisExpr):
            return
        expected = evaluate(want)
        if expected != got:
            shown: Any = got
            if isinstance(want, ListExpr) and want.items and isinstance(want.items[0], SymbolExpr):
                shown = _errno.errorcode.get(got, got) if got else 0
            raise ValueMismatch(f"{what}: expected {want} got [{shown}]")


def _is_text(expr: Expr) -> bool:
    if isinstance(expr, ListExpr) and len(expr.items) == 1:
        expr = expr.items[0]
    return isinstance(expr, StringExpr)


def _text(expr: Expr) -> str:
    if isinstance(expr, ListExpr):
        expr = expr.items[0]
    assert isinstance(expr, StringExpr)
    return expr.value
