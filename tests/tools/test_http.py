"""HTTP over the user-level stack: tcpstack.http's GET client and static server, in memory."""

from __future__ import annotations

import hashlib
import random
from functools import partial
from pathlib import Path

import pytest
import trio

from tcpstack import open_stack
from tcpstack.commands.serve import serve_forever
from tcpstack.http import HttpError, Url, http_get, parse_url
from tcpstack.links.memory import MemoryNetwork

A, B = "198.18.7.1", "198.18.7.2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://198.18.0.1/", Url("198.18.0.1", 80, "/")),
        ("http://example.test:8080/a/b?c=1", Url("example.test", 8080, "/a/b?c=1")),
        ("198.18.0.1:81", Url("198.18.0.1", 81, "/")),
    ],
)
def test_parse_url(text: str, expected: Url) -> None:
    assert parse_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("https://198.18.0.1/", "only http://"), ("http:///x", "no host"),
     ("http://h:99999/", "bad port")],
)
def test_parse_url_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(HttpError, match=message):
        parse_url(text)


async def _fetch(root: Path, target: str, *, method: str = "GET") -> tuple[int, bytes, str]:
    """Serve ``root`` on stack B, request ``target`` from stack A; (status, body, raw head)."""
    async with MemoryNetwork(seed=3) as net, \
            open_stack(net.attach(A), seed=1) as sa, open_stack(net.attach(B), seed=2) as sb, \
            trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_forever, sb, 8080, root, quiet=True))
        stream = await sa.open_tcp_stream(B, port)
        if method == "GET":
            body = bytearray()
            response = await http_get(stream, Url(B, port, target), body.extend)
            await stream.aclose()
            nursery.cancel_scope.cancel()
            return response.status, bytes(body), ""
        await stream.send_all(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              "Content-Length: 0\r\n\r\n".encode())
        raw = bytearray()
        while chunk := await stream.receive_some():
            raw.extend(chunk)
        await stream.aclose()
        nursery.cancel_scope.cancel()
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        return int(head.split()[1]), body, head.decode()


async def test_get_of_a_file_is_byte_exact(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    data = random.Random(5).randbytes(1_500_000)
    (tmp_path / "blob.bin").write_bytes(data)
    status, body, _ = await _fetch(tmp_path, "/blob.bin")
    assert status == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


async def test_missing_file_is_404(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    status, _, _ = await _fetch(tmp_path, "/nothing-here")
    assert status == 404


async def test_path_outside_root_is_refused(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("no")
    status, body, _ = await _fetch(root, "/../secret")
    assert status == 403
    assert b"no" != body


async def test_head_has_length_and_no_body(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    (tmp_path / "f.txt").write_bytes(b"x" * 1234)
    status, body, head = await _fetch(tmp_path, "/f.txt", method="HEAD")
    assert status == 200
    assert "content-length: 1234" in head.lower()
    assert body == b""


async def test_other_methods_are_405(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    status, _, _ = await _fetch(tmp_path, "/", method="POST")
    assert status == 405
