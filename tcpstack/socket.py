"""Sockets on the user-level stack, with the names and call shapes of :mod:`trio.socket`.

Code written against ``trio.socket`` switches to this stack by changing one import::

    from tcpstack import socket as tsocket      # was: from trio import socket as tsocket

    with tcpstack.socket.using_stack(stack):
        sock = tsocket.socket(tsocket.AF_INET, tsocket.SOCK_STREAM)
        await sock.connect(("198.18.0.2", 80))
        await sock.send(b"GET / HTTP/1.0\\r\\n\\r\\n")

As in trio, ``bind``, ``connect``, ``accept``, ``send``, ``recv`` and ``recv_into`` are async;
``listen``, ``shutdown``, ``close`` and the option calls are not. Which stack a socket lives on is
taken from :func:`using_stack` (a context variable, so concurrent tasks may use different stacks)
or else from :func:`set_stack` (process-wide).

Errors are :class:`OSError` with Linux ``errno`` values, raised as the matching subclass
(``ConnectionRefusedError`` for ECONNREFUSED and so on), as the kernel would report them.
``setblocking(False)`` makes the async calls fail with ``BlockingIOError`` (EAGAIN, EINPROGRESS)
instead of waiting, which is what the conformance runner needs for ``O_NONBLOCK``.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno as _errno
import os
import struct
import weakref
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from tcpstack.listeners import ListenState
from tcpstack.stack import StackCore
from tcpstack.tcp import Connection
from tcpstack.tcp.config import ConnectionOptions, KeepaliveOptions
from tcpstack.tcp.congestion import create_congestion_control
from tcpstack.tcp.state import TcpState

__all__ = [
    "SocketType", "socket", "set_stack", "using_stack", "current_stack",
    "AF_INET", "SOCK_STREAM", "IPPROTO_TCP", "SOL_TCP", "SOL_SOCKET",
    "SO_REUSEADDR", "SO_REUSEPORT", "SO_KEEPALIVE", "SO_SNDBUF", "SO_RCVBUF", "SO_ERROR",
    "SO_LINGER", "SO_TYPE", "TCP_NODELAY", "TCP_MAXSEG", "TCP_KEEPIDLE", "TCP_KEEPINTVL",
    "TCP_KEEPCNT", "TCP_INFO", "TCP_CONGESTION", "TCP_USER_TIMEOUT", "SHUT_RD", "SHUT_WR",
    "SHUT_RDWR", "MSG_PEEK", "MSG_DONTWAIT",
]

# Linux values (include/linux/socket.h, include/uapi/asm-generic/socket.h, uapi/linux/tcp.h).
AF_INET = 2
SOCK_STREAM = 1
IPPROTO_TCP = 6
SOL_TCP = 6
SOL_SOCKET = 1
SO_REUSEADDR = 2
SO_TYPE = 3
SO_ERROR = 4
SO_SNDBUF = 7
SO_RCVBUF = 8
SO_KEEPALIVE = 9
SO_LINGER = 13
SO_REUSEPORT = 15
TCP_NODELAY = 1
TCP_MAXSEG = 2
TCP_KEEPIDLE = 4
TCP_KEEPINTVL = 5
TCP_KEEPCNT = 6
TCP_INFO = 11
TCP_CONGESTION = 13
TCP_USER_TIMEOUT = 18
SHUT_RD = 0
SHUT_WR = 1
SHUT_RDWR = 2
MSG_PEEK = 0x2
MSG_DONTWAIT = 0x40

TCP_MSS_DEFAULT = 536  # RFC 1122 4.2.2.6: what getsockopt(TCP_MAXSEG) says before a connection
TCP_CA_NAME_MAX = 16
FIRST_FD = 3  # 0, 1 and 2 are the standard streams: like a process, the first socket is 3

# Engine error strings (tcpstack.tcp) -> errno.
_ERRNO_OF_ERROR = {
    "connection reset by peer": _errno.ECONNRESET,
    "connection refused": _errno.ECONNREFUSED,
    "connection timed out": _errno.ETIMEDOUT,
    "user timeout": _errno.ETIMEDOUT,
    "connection aborted": _errno.ECONNABORTED,
}

# Linux calls its NewReno (RFC 6582 with SACK) "reno"; the engine calls it "newreno".
_CC_FROM_LINUX = {"reno": "newreno"}
_CC_TO_LINUX = {v: k for k, v in _CC_FROM_LINUX.items()}

_SYNCHRONIZED = frozenset({
    TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.CLOSE_WAIT,
    TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT,
})

_current: contextvars.ContextVar[StackCore | None] = contextvars.ContextVar(
    "tcpstack_socket_stack", default=None
)
_default: StackCore | None = None


def oserror(code: int, detail: str | None = None) -> OSError:
    """``OSError(code, strerror)``; Python picks the subclass (ConnectionResetError ...)."""
    message = os.strerror(code) if detail is None else f"{os.strerror(code)}: {detail}"
    return OSError(code, message)


def set_stack(stack: StackCore | None) -> None:
    """Make ``stack`` the one new sockets use when no :func:`using_stack` block says otherwise."""
    global _default
    _default = stack


@contextlib.contextmanager
def using_stack(stack: StackCore) -> Iterator[StackCore]:
    """New sockets created in this block (and in tasks started from it) live on ``stack``."""
    token = _current.set(stack)
    try:
        yield stack
    finally:
        _current.reset(token)


def current_stack() -> StackCore:
    stack = _current.get() or _default
    if stack is None:
        raise RuntimeError(
            "no stack for tcpstack.socket: use tcpstack.socket.using_stack(stack) or set_stack(stack)"
        )
    return stack


class _Registry:
    """Per-stack socket bookkeeping: descriptor numbers and bound ports."""

    def __init__(self) -> None:
        self.fds: set[int] = set()
        self.bound: dict[int, SocketType] = {}

    def allocate_fd(self) -> int:
        fd = FIRST_FD
        while fd in self.fds:  # the lowest free number, as POSIX requires of open()/socket()
            fd += 1
        self.fds.add(fd)
        return fd


_registries: weakref.WeakKeyDictionary[StackCore, _Registry] = weakref.WeakKeyDictionary()


def _registry(stack: StackCore) -> _Registry:
    reg = _registries.get(stack)
    if reg is None:
        reg = _registries[stack] = _Registry()
    return reg


def socket(family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0) -> SocketType:  # noqa: A002
    """A new TCP socket on the current stack (see :func:`using_stack`)."""
    if family != AF_INET:
        raise oserror(_errno.EAFNOSUPPORT, "only AF_INET")
    if type != SOCK_STREAM:
        raise oserror(_errno.ESOCKTNOSUPPORT, "only SOCK_STREAM")
    if proto not in (0, IPPROTO_TCP):
        raise oserror(_errno.EPROTONOSUPPORT, "only IPPROTO_TCP")
    return SocketType(current_stack())


def _as_int(value: int | bytes, name: str) -> int:
    if isinstance(value, bytes | bytearray):
        if len(value) < 4:
            raise oserror(_errno.EINVAL, f"{name} needs a 4-byte int")
        return int(struct.unpack_from("i", value)[0])
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int or bytes, got {value!r}")
    return value


def _int_result(value: int, buflen: int | None) -> int | bytes:
    if buflen is None:
        return value
    return struct.pack("i", value)[:buflen]


class SocketType:
    """A TCP socket of a user-level stack; create it with :func:`socket`."""

    def __init__(self, stack: StackCore, conn: Connection | None = None) -> None:
        self._stack = stack
        self._registry = _registry(stack)
        self._fd = self._registry.allocate_fd()
        self._conn = conn
        self._listen: ListenState | None = None
        self._bound: tuple[str, int] | None = conn.local if conn is not None else None
        self._blocking = True
        self._closed = False
        self._changes: dict[str, Any] = {}  # ConnectionOptions fields set before a connection
        self._reuseaddr = False
        self._keepalive = KeepaliveOptions()
        self._linger: tuple[int, int] = (0, 0)
        self._sndbuf_request: int | None = None
        self._rcvbuf_request: int | None = None
        self._error_reported = False  # the connection's error was returned once (SO_ERROR rule)
        self._shut_rd = False

    # ------------------------------------------------------------------ plumbing
    @property
    def family(self) -> int:
        return AF_INET

    @property
    def type(self) -> int:
        return SOCK_STREAM

    @property
    def proto(self) -> int:
        return IPPROTO_TCP

    @property
    def stack(self) -> StackCore:
        return self._stack

    @property
    def connection(self) -> Connection | None:
        """The engine behind a connected socket (its whole state is readable there)."""
        return self._conn

    @property
    def _profile(self) -> str:
        return self._conn.options.profile if self._conn is not None else self._stack.options.profile

    def fileno(self) -> int:
        if self._closed:
            return -1
        return self._fd

    def __repr__(self) -> str:
        state = self._conn.state.name if self._conn else ("LISTEN" if self._listen else "CLOSED")
        return f"<tcpstack.socket.SocketType fd={self.fileno()} {state}>"

    def __enter__(self) -> SocketType:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise oserror(_errno.EBADF)

    def setblocking(self, flag: bool) -> None:
        self._blocking = bool(flag)

    def getblocking(self) -> bool:
        return self._blocking

    def _options(self) -> ConnectionOptions:
        options: ConnectionOptions = attrs.evolve(self._stack.options, **self._changes)
        options.resolve()
        return options

    def _pending_error(self, *, consume: bool) -> int:
        conn = self._conn
        if conn is None or conn.error is None or self._error_reported:
            return 0
        if consume:
            self._error_reported = True
        return _ERRNO_OF_ERROR.get(conn.error, _errno.EIO)

    async def _wait(self, conn: Connection) -> None:
        if conn.state is TcpState.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        await self._stack.wait_changed(conn)

    # ------------------------------------------------------------------ addresses
    async def bind(self, address: tuple[str, int]) -> None:
        self._check_open()
        await trio.lowlevel.checkpoint()
        host, port = address
        if host not in ("", "0.0.0.0", self._stack.address):
            raise oserror(_errno.EADDRNOTAVAIL, f"{host} is not this stack's address")
        if self._bound is not None or self._conn is not None:
            raise oserror(_errno.EINVAL, "already bound")
        if not 0 <= port < 65536:
            raise OverflowError("bind(): port must be 0-65535.")
        if port == 0:
            port = self._stack._allocate_port("0.0.0.0", 0)
        holder = self._registry.bound.get(port)
        if holder is not None and not (self._reuseaddr and holder._listen is None):
            raise oserror(_errno.EADDRINUSE)
        self._registry.bound[port] = self
        self._bound = (self._stack.address, port)

    def getsockname(self) -> tuple[str, int]:
        self._check_open()
        if self._conn is not None:
            return self._conn.local
        return self._bound or ("0.0.0.0", 0)

    def getpeername(self) -> tuple[str, int]:
        self._check_open()
        if self._conn is None or self._conn.state not in _SYNCHRONIZED:
            raise oserror(_errno.ENOTCONN)
        return self._conn.remote

    # ------------------------------------------------------------------ passive open
    def listen(self, backlog: int = 128) -> None:
        self._check_open()
        if self._conn is not None:
            raise oserror(_errno.EINVAL, "socket is connected")
        if self._listen is not None:
            self._listen.backlog = max(backlog, 1)
            return
        if self._bound is None:
            port = self._stack._allocate_port("0.0.0.0", 0)
            self._bound = (self._stack.address, port)
            self._registry.bound[port] = self
        try:
            self._listen = self._stack.listen(self._bound[1], max(backlog, 1), self._options())
        except OSError as exc:
            raise oserror(_errno.EADDRINUSE, str(exc)) from None

    async def accept(self) -> tuple[SocketType, tuple[str, int]]:
        self._check_open()
        listen = self._listen
        if listen is None:
            raise oserror(_errno.EINVAL, "socket is not listening")
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed or listen.closed:
                raise oserror(_errno.EBADF)
            if listen.accept_queue:
                conn = listen.accept_queue.popleft()
                sock = SocketType(self._stack, conn)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return sock, conn.remote
            if not self._blocking:
                raise oserror(_errno.EAGAIN)
            await self._stack.wait_accept(listen)

    # ------------------------------------------------------------------ active open
    async def connect(self, address: tuple[str, int]) -> None:
        self._check_open()
        if self._listen is not None:
            raise oserror(_errno.EINVAL, "socket is listening")
        conn = self._conn
        if conn is None:
            host, port = address
            if self._bound is not None:
                # The stack picks the local port of an active open (StackCore.connect).
                raise oserror(_errno.EOPNOTSUPP, "connect() from a bound port")
            conn = self._conn = self._stack.connect(host, port, self._options())
            if not self._blocking:
                raise oserror(_errno.EINPROGRESS)
        elif conn.state in _SYNCHRONIZED:
            raise oserror(_errno.EISCONN)
        elif not self._blocking and conn.state is not TcpState.CLOSED:
            raise oserror(_errno.EALREADY)
        try:
            while conn.state not in _SYNCHRONIZED:
                if conn.state is TcpState.CLOSED:
                    code = self._pending_error(consume=True) or _errno.ECONNABORTED
                    raise oserror(code)
                await self._wait(conn)
        except trio.Cancelled:
            if conn.state is not TcpState.CLOSED:
                conn.abort()
                self._stack.touch(conn)
            raise
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ data
    def _connected(self) -> Connection:
        self._check_open()
        if self._conn is None:
            raise oserror(_errno.ENOTCONN)
        return self._conn

    async def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """Queue ``data``; a blocking socket waits until all of it is queued (as Linux's
        blocking ``send``), a non-blocking one queues what fits or raises EAGAIN."""
        conn = self._connected()
        view = memoryview(data).cast("B")
        nonblocking = not self._blocking or flags & MSG_DONTWAIT
        await trio.lowlevel.checkpoint_if_cancelled()
        sent = 0
        while True:
            code = self._pending_error(consume=True)
            if code:
                if sent:
                    return sent
                raise oserror(code)
            if conn.state in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED):
                if nonblocking:
                    raise oserror(_errno.EAGAIN)
                await self._wait(conn)
                continue
            try:
                accepted = conn.send(view[sent:]) if sent < len(view) else 0
            except OSError:
                if sent:
                    return sent
                raise oserror(_errno.EPIPE) from None
            if accepted:
                sent += accepted
                self._stack.touch(conn)
            if sent == len(view):
                await trio.lowlevel.cancel_shielded_checkpoint()
                return sent
            if nonblocking:
                if sent:
                    return sent
                raise oserror(_errno.EAGAIN)
            await self._wait(conn)

    async def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        conn = self._connected()
        nonblocking = not self._blocking or flags & MSG_DONTWAIT
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if conn.readable_bytes:
                if flags & MSG_PEEK:
                    data = _peek(conn, bufsize)
                else:
                    data = conn.receive(bufsize)
                    self._stack.touch(conn)  # the window may have opened
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            code = self._pending_error(consume=True)
            if code:
                raise oserror(code)
            if conn.at_eof or conn.state is TcpState.CLOSED or self._shut_rd:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            if nonblocking:
                raise oserror(_errno.EAGAIN)
            await self._wait(conn)

    async def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        data = await self.recv(size, flags)
        view[: len(data)] = data
        return len(data)

    def shutdown(self, how: int) -> None:
        conn = self._connected()
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise oserror(_errno.EINVAL, f"how={how}")
        if conn.state not in _SYNCHRONIZED and conn.state is not TcpState.SYN_RECEIVED:
            raise oserror(_errno.ENOTCONN)
        if how in (SHUT_RD, SHUT_RDWR):
            self._shut_rd = True
            if self._profile != "linux":
                # BSD soshutdown(SHUT_RD): sorflush() drops queued and later data.
                conn.shutdown_read()
            # Linux only marks RCV_SHUTDOWN: data still arriving is queued, ACKed and readable
            # (recv returns 0 only when nothing is queued); see google shutdown-rd-wr-close.pkt.
        if how in (SHUT_WR, SHUT_RDWR):
            conn.shutdown_write()
        self._stack.touch(conn)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._registry.fds.discard(self._fd)
        if self._bound is not None and self._registry.bound.get(self._bound[1]) is self:
            del self._registry.bound[self._bound[1]]
        if self._listen is not None:
            self._stack.unlisten(self._listen)
        conn = self._conn
        if conn is not None and conn.state is not TcpState.CLOSED:
            onoff, linger = self._linger
            if onoff and linger == 0:
                conn.abort()  # SO_LINGER {1, 0}: drop the connection with a RST
            else:
                conn.close()
            self._stack.touch(conn)

    def detach(self) -> int:
        raise oserror(_errno.EOPNOTSUPP, "a user-level socket has no kernel descriptor")

    # ------------------------------------------------------------------ options
    def _apply(self, **changes: Any) -> None:
        """Record ``changes`` for a connection still to come, or apply them to the live one."""
        attrs.evolve(self._stack.options, **{**self._changes, **changes}).resolve()  # validate
        self._changes.update(changes)
        conn = self._conn
        if conn is not None and conn.state is not TcpState.CLOSED:
            live = {k: v for k, v in changes.items() if k != "mss" or conn.state is TcpState.CLOSED}
            if live:
                set_options = getattr(conn, "set_options", None)
                if set_options is not None:
                    set_options(**live)
                else:
                    from tcpstack.tcp.sockopts import apply_options
                    apply_options(conn, live)
                self._stack.touch(conn)
        elif self._listen is not None:
            self._listen.options = self._options()

    def setsockopt(self, level: int, optname: int, value: int | bytes | None, optlen: int | None = None) -> None:
        self._check_open()
        try:
            self._setsockopt(level, optname, value)
        except ValueError as exc:
            raise oserror(_errno.EINVAL, str(exc)) from None

    def _setsockopt(self, level: int, optname: int, value: int | bytes | None) -> None:
        if value is None:
            raise oserror(_errno.EINVAL, "option value required")
        if level == SOL_SOCKET:
            if optname in (SO_REUSEADDR, SO_REUSEPORT):
                self._reuseaddr = bool(_as_int(value, "SO_REUSEADDR"))
            elif optname == SO_KEEPALIVE:
                self._keepalive = attrs.evolve(self._keepalive, enabled=bool(_as_int(value, "SO_KEEPALIVE")))
                self._apply(keepalive=self._keepalive)
            elif optname == SO_SNDBUF:
                size = _as_int(value, "SO_SNDBUF")
                self._sndbuf_request = size
                self._apply(send_buffer=self._effective_buffer(size))
            elif optname == SO_RCVBUF:
                size = _as_int(value, "SO_RCVBUF")
                self._rcvbuf_request = size
                self._apply(receive_buffer=self._effective_buffer(size))
            elif optname == SO_LINGER:
                if not isinstance(value, bytes | bytearray) or len(value) < 8:
                    raise oserror(_errno.EINVAL, "SO_LINGER takes struct linger (8 bytes)")
                onoff, linger = struct.unpack_from("ii", value)
                self._linger = (int(onoff), int(linger))
            else:
                raise oserror(_errno.ENOPROTOOPT, f"SOL_SOCKET option {optname}")
        elif level == IPPROTO_TCP:
            if optname == TCP_NODELAY:
                self._apply(nodelay=bool(_as_int(value, "TCP_NODELAY")))
            elif optname == TCP_MAXSEG:
                mss = _as_int(value, "TCP_MAXSEG")
                conn = self._conn
                if conn is not None and conn.state is not TcpState.CLOSED:
                    # Linux tcp_setsockopt: after the SYN, the value is only remembered.
                    self._changes["mss"] = mss
                else:
                    self._apply(mss=mss)
            elif optname in (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT):
                n = _as_int(value, "TCP_KEEP*")
                ka = self._keepalive
                if optname == TCP_KEEPIDLE:
                    new = attrs.evolve(ka, idle=float(n))
                elif optname == TCP_KEEPINTVL:
                    new = attrs.evolve(ka, interval=float(n))
                else:
                    new = attrs.evolve(ka, count=n)
                new.validate()
                self._keepalive = new
                self._apply(keepalive=new)
            elif optname == TCP_USER_TIMEOUT:
                ms = _as_int(value, "TCP_USER_TIMEOUT")
                if ms < 0:
                    raise oserror(_errno.EINVAL, "TCP_USER_TIMEOUT must be >= 0")
                self._apply(user_timeout=ms / 1000.0 if ms else None)
            elif optname == TCP_CONGESTION:
                if not isinstance(value, bytes | bytearray | str):
                    raise oserror(_errno.EINVAL, "TCP_CONGESTION takes a name")
                raw = value.encode() if isinstance(value, str) else bytes(value)
                name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
                name = _CC_FROM_LINUX.get(name, name)
                try:
                    create_congestion_control(name, 1460, 14600)  # is the name known?
                    self._apply(congestion=name)
                except (ValueError, KeyError):
                    raise oserror(_errno.ENOENT, f"congestion control {name!r}") from None
            else:
                raise oserror(_errno.ENOPROTOOPT, f"IPPROTO_TCP option {optname}")
        else:
            raise oserror(_errno.ENOPROTOOPT, f"level {level}")

    def _effective_buffer(self, size: int) -> int:
        if size < 0:
            raise oserror(_errno.EINVAL, "negative buffer size")
        if self._profile == "linux":
            # Linux sock_setsockopt doubles the value to leave room for bookkeeping overhead,
            # with SOCK_MIN_RCVBUF/SNDBUF floors.
            return max(size * 2, 4608)
        return max(size, 1)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        self._check_open()
        conn = self._conn
        options = self._options() if conn is None else conn.options
        if level == SOL_SOCKET:
            if optname in (SO_REUSEADDR, SO_REUSEPORT):
                return _int_result(int(self._reuseaddr), buflen)
            if optname == SO_TYPE:
                return _int_result(SOCK_STREAM, buflen)
            if optname == SO_ERROR:
                return _int_result(self._pending_error(consume=True), buflen)
            if optname == SO_KEEPALIVE:
                return _int_result(int(self._keepalive.enabled), buflen)
            if optname == SO_SNDBUF:
                return _int_result(options.resolve().send_buffer, buflen)
            if optname == SO_RCVBUF:
                return _int_result(self._reported_rcvbuf(options), buflen)
            if optname == SO_LINGER:
                return struct.pack("ii", *self._linger)[: buflen or 8]
            raise oserror(_errno.ENOPROTOOPT, f"SOL_SOCKET option {optname}")
        if level == IPPROTO_TCP:
            if optname == TCP_NODELAY:
                return _int_result(int(options.nodelay), buflen)
            if optname == TCP_MAXSEG:
                if conn is not None and conn.state in _SYNCHRONIZED:
                    return _int_result(conn.mss_cache, buflen)
                return _int_result(self._changes.get("mss") or TCP_MSS_DEFAULT, buflen)
            if optname == TCP_KEEPIDLE:
                return _int_result(int(self._keepalive.idle), buflen)
            if optname == TCP_KEEPINTVL:
                return _int_result(int(self._keepalive.interval), buflen)
            if optname == TCP_KEEPCNT:
                return _int_result(self._keepalive.count, buflen)
            if optname == TCP_USER_TIMEOUT:
                ut = options.user_timeout
                return _int_result(0 if ut is None else round(ut * 1000), buflen)
            if optname == TCP_CONGESTION:
                linux_name = _CC_TO_LINUX.get(options.congestion, options.congestion)
                name = linux_name.encode()[: TCP_CA_NAME_MAX - 1]
                size = TCP_CA_NAME_MAX if buflen is None else buflen
                return name.ljust(size, b"\0")[:size]
            if optname == TCP_INFO:
                if conn is None:
                    raise oserror(_errno.ENOTCONN, "TCP_INFO of a socket without a connection")
                packed = conn.info(trio.current_time()).pack()
                return packed if buflen is None else packed[:buflen]
            raise oserror(_errno.ENOPROTOOPT, f"IPPROTO_TCP option {optname}")
        raise oserror(_errno.ENOPROTOOPT, f"level {level}")

    def _reported_rcvbuf(self, options: ConnectionOptions) -> int:
        size = options.resolve().receive_buffer
        conn = self._conn
        if options.profile == "freebsd" and conn is not None:
            # FreeBSD tcp_mss(): once the MSS is known the engine rounds the buffer up to whole
            # segments; so_rcv.sb_hiwat is what SO_RCVBUF reports.
            return max(size, conn.rcv.capacity)
        return size

    @property
    def listening(self) -> bool:
        return self._listen is not None and not self._listen.closed


def _peek(conn: Connection, max_bytes: int) -> bytes:
    """MSG_PEEK: the next ``max_bytes`` readable bytes, left in the receive queue."""
    return conn.peek(max_bytes)
