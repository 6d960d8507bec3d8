"""Per-stack control sockets: how ``tcpstack ss`` and ``tcpstack capture`` reach running stacks.

A kernel socket is visible to ``ss`` because the kernel owns it. A user-level stack's sockets live
in one process, so each stack that wants to be seen serves a Unix stream socket at
``/run/tcpstack/<name>.<pid>.sock`` (mode 0600 in a 0700 directory: TCPInfo is not for every
user). A client sends one JSON request line and reads one JSON reply line:

``{"cmd": "connections"}``
    the stack's name, pid, address, link, counters and every connection (4-tuple, state, TCPInfo
    as a dict), what ``ss -ti`` shows for kernel sockets;
``{"cmd": "capture", "path": P, "duration": S, "count": N}``
    record the stack's traffic to the pcap file P (LINKTYPE_RAW) through a
    :class:`~tcpstack.links.pcap_tap.PcapTap` attached to the stack's :class:`CaptureSwitch`, for
    S seconds or N packets, whichever ends first; the reply comes when the file is closed.

The server runs in a nursery its caller owns (:func:`serve_control`), answers each client in its
own task with a bounded request size and a timeout, and removes its socket file on exit. Socket
files of dead processes are removed by :func:`list_sockets` (pid no longer running).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from tcpstack.links.base import DEFAULT_BATCH, Link, Middleware
from tcpstack.links.pcap_tap import PcapTap

__all__ = [
    "CONTROL_DIR",
    "CaptureSwitch",
    "ControlError",
    "StackSocket",
    "list_sockets",
    "query",
    "serve_control",
]

#: Where stacks put their control sockets; overridable for tests and non-root users.
CONTROL_DIR: Final = Path(os.environ.get("TCPSTACK_CONTROL_DIR", "/run/tcpstack"))
_MAX_REQUEST: Final = 4096
_CLIENT_TIMEOUT: Final = 5.0
_MAX_CAPTURE_SECONDS: Final = 3600.0
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SOCK_RE: Final = re.compile(r"^(?P<name>[A-Za-z0-9_-]{1,32})\.(?P<pid>\d+)\.sock$")


class ControlError(RuntimeError):
    """A control request failed; the message says why in one line."""


class CaptureSwitch(Middleware):
    """A link middleware that records to a pcap file only while a capture is attached.

    It costs one attribute test per batch when idle, so CLI stacks always wrap their link in one
    and ``tcpstack capture`` can start recording a running stack without restarting it.
    """

    def __init__(self, link: Link) -> None:
        super().__init__(link)
        self._tap: PcapTap | None = None
        self._done = trio.Event()
        self._limit = 0

    @property
    def capturing(self) -> bool:
        return self._tap is not None

    def _record(self, packets: list[bytes]) -> None:
        tap = self._tap
        if tap is None:
            return
        if self._limit:
            # A batch can hold more than the count left: `-c N` means N packets, as tcpdump's.
            room = self._limit - tap.packets_written
            if room <= 0:
                return
            if len(packets) > room:
                packets = packets[:room]
        tap._record(packets)
        if self._limit and tap.packets_written >= self._limit:
            self._done.set()

    def send_batch(self, packets: Iterable[bytes]) -> None:
        if self._tap is None:
            self.inner.send_batch(packets)
            return
        batch = [bytes(p) for p in packets]
        self._record(batch)
        self.inner.send_batch(batch)

    async def receive_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        batch = await self.inner.receive_batch(max_packets)
        self._record(batch)
        return batch

    async def capture(self, path: str, *, duration: float, count: int = 0) -> int:
        """Record to ``path`` for ``duration`` seconds or ``count`` packets; return packets written."""
        if self._tap is not None:
            raise ControlError("a capture is already running on this stack")
        # The tap's own inner link is never used for I/O: this switch forwards the traffic.
        tap = PcapTap(self.inner, path)
        self._tap, self._done, self._limit = tap, trio.Event(), max(0, count)
        try:
            with trio.move_on_after(duration):
                await self._done.wait()
        finally:
            self._tap = None
            file, tap._file = tap._file, None
            if file is not None:
                file.close()
        return tap.packets_written


def _socket_path(name: str, pid: int, directory: Path) -> Path:
    return directory / f"{name}.{pid}.sock"


def _describe(stack: Any, name: str, link_kind: str) -> dict[str, Any]:
    rows = []
    for entry in stack.connections():
        rows.append({
            "local": list(entry.local),
            "remote": list(entry.remote),
            "state": entry.state.name,
            "info": entry.info.to_dict(),
        })
    listeners = sorted(getattr(stack, "_listeners", {}))
    return {
        "name": name,
        "pid": os.getpid(),
        "address": stack.address,
        "link": link_kind,
        "listening": [int(p) for p in listeners],
        "stats": attrs.asdict(stack.stats) if attrs.has(type(stack.stats)) else {},
        "connections": rows,
    }


async def _answer(stream: trio.SocketStream, stack: Any, name: str, link_kind: str,
                  switch: CaptureSwitch | None) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(_CLIENT_TIMEOUT):
            while b"\n" not in buf and len(buf) <= _MAX_REQUEST:
                chunk = await stream.receive_some(_MAX_REQUEST)
                if not chunk:
                    break
                buf += chunk
        reply: dict[str, Any]
        try:
            if b"\n" not in buf:
                raise ControlError("request must be one JSON line of at most 4096 bytes")
            request = json.loads(buf.split(b"\n", 1)[0])
            if not isinstance(request, dict):
                raise ControlError("request must be a JSON object")
            cmd = request.get("cmd")
            if cmd == "connections":
                reply = {"ok": True, **_describe(stack, name, link_kind)}
            elif cmd == "capture":
                if switch is None:
                    raise ControlError("this stack was started without a capture switch")
                path = request.get("path")
                duration = float(request.get("duration", 10.0))
                count = int(request.get("count", 0))
                if not isinstance(path, str) or not path:
                    raise ControlError("capture needs a 'path'")
                if not 0 < duration <= _MAX_CAPTURE_SECONDS:
                    raise ControlError(f"duration must be in (0, {_MAX_CAPTURE_SECONDS:.0f}] s")
                written = await switch.capture(path, duration=duration, count=count)
                reply = {"ok": True, "path": path, "packets": written}
            else:
                raise ControlError(f"unknown command {cmd!r}")
        except (ControlError, ValueError, TypeError, OSError) as exc:
            reply = {"ok": False, "error": str(exc)}
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(reply).encode() + b"\n")


async def serve_control(stack: Any, *, name: str = "stack", link_kind: str = "",
                        switch: CaptureSwitch | None = None, directory: Path | None = None,
                        task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``stack``'s control socket until cancelled; ``task_status`` gets the socket path.

    Run it with ``await nursery.start(serve_control, stack, ...)`` in a nursery that lives as long
    as the stack. The socket file is removed when the task ends.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"stack name must be 1-32 of [A-Za-z0-9_-], got {name!r}")
    directory = CONTROL_DIR if directory is None else Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = _socket_path(name, os.getpid(), directory)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # our own pid: a leftover of this very process
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
    except BaseException:
        sock.close()
        raise
    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                stream = await listener.accept()
                nursery.start_soon(_answer, stream, stack, name, link_kind, switch)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@attrs.frozen
class StackSocket:
    """One running stack's control socket."""

    name: str
    pid: int
    path: Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_sockets(directory: Path | None = None, *, remove_stale: bool = True) -> list[StackSocket]:
    """Control sockets of running stacks; files of processes that no longer exist are removed."""
    directory = CONTROL_DIR if directory is None else Path(directory)
    found: list[StackSocket] = []
    if not directory.is_dir():
        return found
    for entry in sorted(directory.iterdir()):
        m = _SOCK_RE.match(entry.name)
        if m is None:
            continue
        pid = int(m["pid"])
        if not _pid_alive(pid):
            if remove_stale:
                with contextlib.suppress(OSError):
                    entry.unlink()
            continue
        found.append(StackSocket(m["name"], pid, entry))
    return found


async def query(path: Path, request: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a control socket and return its reply; ControlError on any failure."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(json.dumps(request).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = await stream.receive_some(1 << 16)
                    if not chunk:
                        break
                    buf += chunk
    except trio.TooSlowError:
        raise ControlError(f"{path}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"{path}: reply is not JSON") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: reply is not a JSON object")
    if not reply.get("ok"):
        raise ControlError(f"{path}: {reply.get('error', 'request failed')}")
    return reply


async def query_all(request: dict[str, Any], directory: Path | None = None,
                    ) -> AsyncIterator[tuple[StackSocket, dict[str, Any] | ControlError]]:
    """Ask every running stack; yields (socket, reply or the error it gave)."""
    for sock in list_sockets(directory):
        try:
            yield sock, await query(sock.path, request)
        except ControlError as exc:
            yield sock, exc
