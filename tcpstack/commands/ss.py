"""``tcpstack ss``: every connection of every running user-level stack on this host."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio

from tcpstack.commands._format import format_info
from tcpstack.control import CONTROL_DIR, ControlError, query_all

__all__ = ["add_arguments", "main_from_args", "render"]

_STATES = {  # ss's short names
    "ESTABLISHED": "ESTAB", "SYN_SENT": "SYN-SENT", "SYN_RECEIVED": "SYN-RECV",
    "FIN_WAIT_1": "FIN-WAIT-1", "FIN_WAIT_2": "FIN-WAIT-2", "TIME_WAIT": "TIME-WAIT",
    "CLOSE_WAIT": "CLOSE-WAIT", "LAST_ACK": "LAST-ACK", "CLOSING": "CLOSING", "LISTEN": "LISTEN",
    "CLOSED": "UNCONN",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "List the connections of every running tcpstack stack on this host (the ones with a "
        f"control socket under {CONTROL_DIR}), in the spirit of `ss -t`."
    )
    parser.add_argument("-i", "--info", action="store_true", help="show TCP internals (ss -ti)")
    parser.add_argument("-l", "--listening", action="store_true", help="show listening ports too")
    parser.add_argument("--json", action="store_true", help="print the raw replies as JSON lines")
    parser.add_argument("--dir", type=Path, default=None, help=argparse.SUPPRESS)


def render(replies: list[dict[str, Any]], *, info: bool, listening: bool) -> str:
    """The table ``tcpstack ss`` prints for the stacks' replies."""
    header = f"{'State':<11}{'Send-Q':>7} {'Local Address:Port':<24}{'Peer Address:Port':<24}Process"
    lines = [header]
    for reply in replies:
        process = f'{reply["name"]}(pid={reply["pid"]},link={reply["link"] or "?"})'
        if listening:
            for port in reply.get("listening", []):
                local = f'{reply["address"]}:{port}'
                lines.append(f"{'LISTEN':<11}{0:>7} {local:<24}{'*:*':<24}{process}")
        for conn in reply["connections"]:
            state = _STATES.get(conn["state"], conn["state"])
            local = "{}:{}".format(*conn["local"])
            remote = "{}:{}".format(*conn["remote"])
            send_q = conn["info"].get("notsent_bytes", 0)
            lines.append(f"{state:<11}{send_q:>7} {local:<24}{remote:<24}{process}")
            if info:
                lines.append("\t " + format_info(conn["info"]))
    return "\n".join(lines)


async def _collect(directory: Path | None) -> tuple[list[dict[str, Any]], list[str]]:
    replies, errors = [], []
    async for sock, reply in query_all({"cmd": "connections"}, directory):
        if isinstance(reply, ControlError):
            errors.append(f"{sock.name}(pid={sock.pid}): {reply}")
        else:
            replies.append(reply)
    return replies, errors


def main_from_args(args: argparse.Namespace) -> int:
    replies, errors = trio.run(_collect, args.dir)
    for error in errors:
        print(f"tcpstack ss: {error}", file=sys.stderr)
    if args.json:
        for reply in replies:
            print(json.dumps(reply))
    else:
        print(render(replies, info=args.info, listening=args.listening))
    return 1 if errors and not replies else 0
