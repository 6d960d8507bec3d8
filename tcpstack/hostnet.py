"""The host's network as a user-level stack meets it: namespaces, port lists, kernel sockets.

:class:`NetNamespace` is a network namespace held by a descriptor; commands run in it (through
``nsenter`` when the calling thread is elsewhere) and ``/proc`` files are read from it. The port
list helpers speak the kernel's syntax (``net.ipv4.ip_local_reserved_ports``), and
:func:`kernel_ports_in_use` reads ``/proc/net/tcp{,6}``. :mod:`tcpstack.firewall` and
:mod:`tcpstack.links.pcap` build on these.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

__all__ = [
    "HostError",
    "NetNamespace",
    "format_ports",
    "kernel_ports_in_use",
    "parse_ports",
    "subtract_ports",
]

_CLONE_NEWNET: Final = 0x40000000
# /proc/net/tcp "st" values of sockets that own their port: everything but TIME_WAIT and CLOSE.
_TCP_STATES: Final = {
    0x01: "ESTABLISHED", 0x02: "SYN_SENT", 0x03: "SYN_RECV", 0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2", 0x08: "CLOSE_WAIT", 0x09: "LAST_ACK", 0x0A: "LISTEN", 0x0B: "CLOSING",
}


class HostError(RuntimeError):
    """A host command or namespace operation failed; the message is one line saying what."""


# ---------------------------------------------------------------------------- namespaces


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(ctypes.c_int(fd), ctypes.c_int(_CLONE_NEWNET)) != 0:
        raise HostError(f"setns: {os.strerror(ctypes.get_errno())}")


class NetNamespace:
    """A network namespace held open by a descriptor: where commands run and sockets open.

    :meth:`current` is the calling thread's namespace, :meth:`named` one under
    ``/run/netns`` (``ip netns add``). The descriptor keeps the namespace alive and reachable
    until :meth:`close`.
    """

    def __init__(self, fd: int, label: str) -> None:
        self.fd = fd
        self.label = label
        mine = os.fstat(fd)
        self._id = (mine.st_dev, mine.st_ino)

    @classmethod
    def current(cls) -> NetNamespace:
        return cls(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC), "current")

    @classmethod
    def named(cls, name: str) -> NetNamespace:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a network namespace name: {name!r}")
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise HostError(f"network namespace {name!r}: {exc.strerror}") from exc
        return cls(fd, name)

    @property
    def inode(self) -> int:
        return self._id[1]

    def is_current(self) -> bool:
        """True if the calling thread is in this namespace now (its children would be too)."""
        here = os.stat("/proc/thread-self/ns/net")
        return (here.st_dev, here.st_ino) == self._id

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into this namespace for the block (to open descriptors)."""
        if self.is_current():
            yield
            return
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _libc_setns(self.fd)
            try:
                yield
            finally:
                _libc_setns(home)
        finally:
            os.close(home)

    def command(self, args: Sequence[str]) -> tuple[list[str], tuple[int, ...]]:
        """The argv that runs ``args`` in this namespace, and the descriptors it must inherit."""
        # A child inherits the namespace of the thread that forks it: decide at each call.
        if self.is_current():
            return list(args), ()
        if shutil.which("nsenter") is None:
            raise HostError("nsenter (util-linux) is needed to run commands in a namespace")
        return ["nsenter", f"--net=/proc/self/fd/{self.fd}", *args], (self.fd,)

    def run(self, args: Sequence[str], *, input: str | None = None, timeout: float = 10.0) -> str:
        """Run a command in this namespace; its stdout, or :class:`HostError` in one line."""
        if shutil.which(args[0]) is None:
            raise HostError(f"{args[0]} is not installed")
        argv, fds = self.command(args)
        try:
            done = subprocess.run(
                argv, input=input, capture_output=True, text=True, timeout=timeout,
                check=False, pass_fds=fds,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HostError(f"{' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            detail = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
            raise HostError(f"{' '.join(args)}: {detail}")
        return done.stdout

    def read(self, path: str) -> str:
        """Read a per-namespace ``/proc`` file (``/proc/net/...``, ``/proc/sys/net/...``)."""
        if self.is_current():
            # /proc/net is /proc/self/net: the main thread's view; this thread's is thread-self.
            if path.startswith("/proc/net/"):
                path = "/proc/thread-self/net/" + path[len("/proc/net/"):]
            with open(path, encoding="ascii") as f:
                return f.read()
        return self.run(["cat", path])

    def __repr__(self) -> str:
        return f"NetNamespace({self.label!r}, fd={self.fd})"


# ---------------------------------------------------------------------------- port lists


def parse_ports(text: str) -> list[range]:
    """Parse a kernel port list (``"40000-40999,50000"``) into ranges; "" is no ports."""
    ranges: list[range] = []
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError as exc:
            raise ValueError(f"not a port list: {text!r}") from exc
        if not 0 <= first <= last <= 65535:
            raise ValueError(f"not a port range: {part!r}")
        ranges.append(range(first, last + 1))
    return ranges


def _merge(ranges: Iterable[range]) -> list[range]:
    merged: list[range] = []
    for r in sorted((r for r in ranges if len(r)), key=lambda r: r.start):
        if merged and r.start <= merged[-1].stop:
            merged[-1] = range(merged[-1].start, max(merged[-1].stop, r.stop))
        else:
            merged.append(r)
    return merged


def subtract_ports(ranges: Iterable[range], remove: Iterable[range]) -> list[range]:
    """The ports of ``ranges`` that are not in ``remove``, as merged sorted ranges."""
    out = _merge(ranges)
    for cut in _merge(remove):
        kept: list[range] = []
        for r in out:
            if cut.stop <= r.start or cut.start >= r.stop:
                kept.append(r)
                continue
            if r.start < cut.start:
                kept.append(range(r.start, cut.start))
            if cut.stop < r.stop:
                kept.append(range(cut.stop, r.stop))
        out = kept
    return out


def format_ports(ranges: Iterable[range]) -> str:
    """The kernel's port-list syntax for ``ranges`` (merged and sorted)."""
    parts = []
    for r in _merge(ranges):
        parts.append(str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}")
    return ",".join(parts)


def kernel_ports_in_use(
    proc_tcp: str, address: str, ports: range, *, ipv6: bool = False
) -> list[tuple[int, str]]:
    """(port, state) of the kernel sockets in a ``/proc/net/tcp{,6}`` text that own a port of
    ``ports`` on ``address`` (bound to it or to the wildcard), leaving TIME_WAIT/CLOSE aside."""
    want = ipaddress.IPv4Address(address)
    found: list[tuple[int, str]] = []
    for line in proc_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1]:
            continue
        hex_addr, _, hex_port = fields[1].partition(":")
        try:
            port, state = int(hex_port, 16), int(fields[3], 16)
            raw = bytes.fromhex(hex_addr)
        except ValueError:
            continue
        if port not in ports or state not in _TCP_STATES:
            continue
        if ipv6:
            if len(raw) != 16:
                continue
            # Four little-endian 32-bit words; :: and ::ffff:a.b.c.d can receive IPv4.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
            v6 = ipaddress.IPv6Address(words)
            if not (v6.is_unspecified or v6.ipv4_mapped == want):
                continue
        else:
            if len(raw) != 4:
                continue
            v4 = ipaddress.IPv4Address(raw[::-1])
            if v4 != want and not v4.is_unspecified:
                continue
        found.append((port, _TCP_STATES[state]))
    return sorted(set(found))
