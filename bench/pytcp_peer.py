"""One PyTCP endpoint for bench/interop.py: PyTCP (pip package ``pytcp``) on a TAP device.

Run with the Python of a venv where ``pytcp`` is installed (bench/interop.py makes one), inside
the namespace that holds the TAP device. ``download`` connects to a kernel server and reads;
``upload`` connects and writes. Stops after ``--bytes`` or ``--seconds``, whichever comes first,
and prints one JSON line: {"bytes": n, "seconds": s}. PyTCP's logging is switched off, as any
benchmark of it would.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("download", "upload"))
    parser.add_argument("--tap", required=True)
    parser.add_argument("--address", required=True, help="PyTCP's address/prefix")
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bytes", type=int, default=200_000_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    from pytcp import TcpIpStack, config
    from pytcp.lib import socket

    config.LOG_CHANEL = set()
    config.LOG_DEBUG = False
    config.IP6_SUPPORT = False
    stack = TcpIpStack(interface=args.tap, ip4_address=args.address, ip4_gateway=args.gateway)
    stack.start()
    try:
        time.sleep(1.0)  # ARP for the gateway and address set-up
        sock = socket.socket(family=socket.AF_INET4, type=socket.SOCK_STREAM)
        sock.connect((args.server, args.port))
        start = time.monotonic()
        done = 0
        chunk = b"\0" * 65536
        while done < args.bytes and time.monotonic() - start < args.seconds:
            if args.mode == "download":
                data = sock.recv(timeout=1.0)
                if not data:
                    break
                done += len(data)
            else:
                done += sock.send(chunk)
        elapsed = time.monotonic() - start
        sock.close()
        print(json.dumps({"bytes": done, "seconds": elapsed}), flush=True)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
