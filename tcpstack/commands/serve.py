"""``tcpstack serve``: a static HTTP server on the user-level stack."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import trio

from tcpstack.api import Stack, TCPStream
from tcpstack.commands._runtime import (
    CommandError,
    add_link_arguments,
    link_choice,
    run_command,
    running_stack,
)
from tcpstack.http import serve_static

__all__ = ["add_arguments", "main_from_args", "serve_forever"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the files under --root over HTTP/1.1 (GET and HEAD) on the user-level TCP stack. "
        "With --link pcap the listening port is guarded by the firewall so the kernel leaves it "
        "to this stack."
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default %(default)s)")
    parser.add_argument("--root", default=".", help="directory to serve (default: current)")
    parser.add_argument("--backlog", type=int, default=128, help="accept queue (default 128)")
    parser.add_argument("--max-connections", type=int, default=256,
                        help="connections served at once; more wait in the backlog (default 256)")
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    add_link_arguments(parser, default_ports="40000-40999")


async def _handle(stream: TCPStream, root: Path, quiet: bool, limit: trio.CapacityLimiter) -> None:
    async with limit, stream:
        peer = f"{stream.remote[0]}:{stream.remote[1]}"
        log = None if quiet else partial(print, file=sys.stderr, flush=True)
        try:
            await serve_static(stream, root, log=log, peer=peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to tell it


async def serve_forever(stack: Stack, port: int, root: Path, *, backlog: int = 128,
                        max_connections: int = 256, quiet: bool = False,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept and serve connections on ``stack`` until cancelled."""
    listener = await stack.open_tcp_listener(port, backlog=backlog)
    limit = trio.CapacityLimiter(max_connections)
    async with listener, trio.open_nursery() as nursery:
        task_status.started(listener.port)
        while True:
            stream = await listener.accept()
            nursery.start_soon(_handle, stream, root, quiet, limit)


async def _serve(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise CommandError(f"--root {args.root!r} is not a directory")
    if not 1 <= args.port <= 65535:
        raise CommandError(f"--port must be 1..65535, got {args.port}")
    if args.link == "pcap":
        # The stack owns exactly the listening port; the guard keeps the kernel off it.
        args.ports = range(args.port, args.port + 1)
    choice = link_choice(args, "serve")
    async with running_stack(choice) as stack:
        print(f"tcpstack serve: http://{stack.address}:{args.port}/ from {root.resolve()} "
              f"(link {choice.kind})", file=sys.stderr, flush=True)
        await serve_forever(stack, args.port, root, backlog=args.backlog,
                            max_connections=args.max_connections, quiet=args.quiet)
    return 0


def main_from_args(args: argparse.Namespace) -> int:
    try:
        return run_command(_serve, args)
    except CommandError as exc:
        print(f"tcpstack serve: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"tcpstack serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
