"""HTTP/1.1 over any trio stream (a user-stack :class:`~tcpstack.api.TCPStream` included), via h11.

h11 does the protocol (framing, chunked bodies, keep-alive rules); this module moves bytes between
it and the stream and adds what ``tcpstack get`` and ``tcpstack serve`` need: URL parsing with clear
errors, a streaming GET that hands body chunks to a callback, and a static-file server that never
serves a path outside its root.
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs
import h11
import trio

from tcpstack import __version__

__all__ = ["HttpError", "HttpResponse", "Url", "http_get", "parse_url", "serve_static"]

_CHUNK: Final = 256 * 1024
_MAX_HEADER_BYTES: Final = 64 * 1024
USER_AGENT: Final = f"tcpstack/{__version__}"


class HttpError(Exception):
    """An HTTP exchange failed; the message is one line for the user."""


@attrs.frozen
class Url:
    host: str
    port: int
    target: str  # path and query, as sent in the request line

    @property
    def authority(self) -> str:
        return self.host if self.port == 80 else f"{self.host}:{self.port}"


def parse_url(text: str) -> Url:
    """Parse an ``http://host[:port]/path`` URL; anything else is an HttpError saying why."""
    parts = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme != "http":
        raise HttpError(f"unsupported scheme {parts.scheme!r}: only http:// (no TLS on this stack)")
    if not parts.hostname:
        raise HttpError(f"no host in URL {text!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise HttpError(f"bad port in URL {text!r}") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Url(parts.hostname, port, target)


@attrs.frozen
class HttpResponse:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body_bytes: int

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _headers(event: h11.Response | h11.Request) -> tuple[tuple[str, str], ...]:
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)


async def http_get(
    stream: trio.abc.Stream,
    url: Url,
    on_body: Callable[[bytes], None],
    *,
    on_response: Callable[[HttpResponse], None] | None = None,
) -> HttpResponse:
    """GET ``url`` over ``stream``; body chunks go to ``on_body`` as they arrive.

    ``on_response`` is called once the status line and headers are in (a progress bar learns the
    length there). Returns the response with the number of body bytes received.
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEADER_BYTES)
    request = h11.Request(method="GET", target=url.target, headers=[
        ("Host", url.authority), ("User-Agent", USER_AGENT), ("Accept", "*/*"),
        ("Connection", "close"),
    ])
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    response: HttpResponse | None = None
    received = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(f"bad response from server: {exc}") from None
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(_CHUNK))
            try:
                conn.receive_data(data)
            except h11.RemoteProtocolError as exc:
                raise HttpError(f"bad response from server: {exc}") from None
            continue
        if isinstance(event, h11.Response):
            response = HttpResponse(event.status_code, event.reason.decode("latin-1"),
                                    _headers(event), 0)
            if on_response is not None:
                on_response(response)
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Data):
            received += len(event.data)
            on_body(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("server closed the connection before the response was complete")
    assert response is not None  # h11 yields a Response before any Data or EndOfMessage
    return attrs.evolve(response, body_bytes=received)


def _resolve(root: Path, target: str) -> Path | None:
    """The file ``target`` names under ``root``, or None if it escapes the root."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
    candidate = (root / path.lstrip("/")).resolve()
    if candidate != root and root not in candidate.parents:
        return None
    if candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate


async def serve_static(
    stream: trio.abc.Stream,
    root: Path,
    *,
    log: Callable[[str], None] | None = None,
    peer: str = "-",
    idle_timeout: float = 30.0,
) -> int:
    """Serve GET/HEAD for files under ``root`` on one connection until it closes; return requests.

    Keep-alive follows h11's rules. Paths that escape ``root`` get 403, missing files 404, other
    methods 405; a malformed request gets 400 and the connection is closed.
    """
    root = root.resolve()
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)
    served = 0
    while True:
        try:
            with trio.fail_after(idle_timeout):
                event = conn.next_event()
                while event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(_CHUNK)))
                    event = conn.next_event()
        except trio.TooSlowError:
            return served
        except h11.RemoteProtocolError:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _respond(stream, conn, 400, b"bad request\n")
            return served
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return served
        if not isinstance(event, h11.Request):
            continue
        served += 1
        status, size = await _answer(stream, conn, event, root)
        if log is not None:
            when = email.utils.formatdate(usegmt=True)
            log(f'{peer} - - [{when}] "{event.method.decode()} {event.target.decode("latin-1")} '
                f'HTTP/{event.http_version.decode()}" {status} {size}')
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return served
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return served


async def _respond(stream: trio.abc.Stream, conn: h11.Connection, status: int,
                   body: bytes, *, head: bool = False) -> None:
    headers = [("Server", USER_AGENT), ("Content-Type", "text/plain"),
               ("Content-Length", str(len(body)))]
    data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    if not head:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _answer(stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request,
                  root: Path) -> tuple[int, int]:
    # Drain the request body (GET/HEAD normally have none) so the next cycle can start.
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(_CHUNK)))
            continue
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    method = request.method.decode()
    if method not in ("GET", "HEAD"):
        await _respond(stream, conn, 405, b"only GET and HEAD\n")
        return 405, 0
    head = method == "HEAD"
    path = _resolve(root, request.target.decode("latin-1"))
    if path is None:
        await _respond(stream, conn, 403, b"forbidden\n", head=head)
        return 403, 0
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below, across awaits
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        await _respond(stream, conn, 404, b"not found\n", head=head)
        return 404, 0
    except PermissionError:
        await _respond(stream, conn, 403, b"forbidden\n", head=head)
        return 403, 0
    with file:
        size = os.fstat(file.fileno()).st_size
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = [("Server", USER_AGENT), ("Content-Type", ctype), ("Content-Length", str(size)),
                   ("Last-Modified", email.utils.formatdate(os.fstat(file.fileno()).st_mtime,
                                                            usegmt=True))]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        sent = 0
        if not head:
            while chunk := file.read(_CHUNK):
                await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
                sent += len(chunk)
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    return 200, sent
