"""``tcpstack get URL``: an HTTP/1.1 GET over the user-level stack, like curl."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import time
from typing import IO, Any

import trio

from tcpstack.commands._format import format_info
from tcpstack.commands._runtime import (
    CommandError,
    add_link_arguments,
    link_choice,
    run_command,
    running_stack,
)
from tcpstack.http import HttpError, HttpResponse, http_get, parse_url

__all__ = ["add_arguments", "main_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fetch URL with HTTP/1.1 over the user-level TCP stack (h11 for HTTP). The body goes to "
        "stdout or -o FILE; exit status 0 only for a 2xx response. Host names are resolved by the "
        "system resolver; TCP runs in this process."
    )
    parser.add_argument("url", metavar="URL", help="http://host[:port]/path")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE")
    parser.add_argument("--info", action="store_true",
                        help="print the connection's TCPInfo (ss -ti style) to stderr at the end")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="give up connecting after S seconds (default %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_link_arguments(parser, default_ports="40000-40999")


def _resolve(host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CommandError(f"cannot resolve {host!r}: {exc.strerror}") from None
    return str(infos[0][4][0])


class _Progress:
    """A rich progress bar, shown only on a terminal and only once a transfer passes one second."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._start = time.monotonic()
        self._total: int | None = None
        self._done = 0
        self._bar: Any = None
        self._task: Any = None

    def response(self, response: HttpResponse) -> None:
        length = response.header("content-length")
        self._total = int(length) if length and length.isdigit() else None

    def advance(self, n: int) -> None:
        self._done += n
        if not self._enabled:
            return
        if self._bar is None:
            if time.monotonic() - self._start < 1.0:
                return
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            # On stderr, the terminal it checked: rich's default console is stdout, where the
            # body may be going.
            self._bar = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), transient=True,
                                 console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("get", total=self._total)
        self._bar.update(self._task, completed=self._done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


async def _get(args: argparse.Namespace, out: IO[bytes]) -> int:
    url = parse_url(args.url)
    host = _resolve(url.host)
    progress = _Progress(not args.quiet)
    choice = link_choice(args, "get")
    started = time.monotonic()
    async with running_stack(choice) as stack:
        try:
            with trio.fail_after(args.timeout):
                stream = await stack.open_tcp_stream(host, url.port)
        except trio.TooSlowError:
            raise CommandError(f"connect to {host}:{url.port} timed out after {args.timeout:g} s") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if not reason.startswith("connect to "):  # the stack's own errors already say it
                reason = f"connect to {host}:{url.port}: {reason}"
            raise CommandError(reason) from None
        try:
            def body(chunk: bytes) -> None:
                out.write(chunk)
                progress.advance(len(chunk))

            try:
                response = await http_get(stream, url, body, on_response=progress.response)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise CommandError(f"connection to {host}:{url.port} broke: {exc}") from None
            finally:
                progress.close()
            info = stream.info()
        finally:
            await stream.aclose()
    elapsed = time.monotonic() - started
    rate = response.body_bytes / elapsed / 1e6 if elapsed > 0 else 0.0
    if not args.quiet:
        print(f"HTTP {response.status} {response.reason}: {response.body_bytes} bytes in "
              f"{elapsed:.2f} s ({rate:.1f} MB/s)", file=sys.stderr)
    if args.info:
        print(f"{stream.local[0]}:{stream.local[1]} -> {host}:{url.port}\n\t"
              f"{format_info(info.to_dict())}", file=sys.stderr)
    return 0 if 200 <= response.status < 300 else 1


def main_from_args(args: argparse.Namespace) -> int:
    try:
        if args.output:
            with open(args.output, "wb") as out:
                return run_command(_get, args, out)
        result = run_command(_get, args, sys.stdout.buffer)
        sys.stdout.flush()
        return result
    except (CommandError, HttpError) as exc:
        print(f"tcpstack get: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"tcpstack get: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
