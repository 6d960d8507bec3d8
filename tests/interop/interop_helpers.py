"""What the kernel-matrix and CLI interop tests share: kernel servers, captures, the CLI, digests.

Everything here runs real programs inside the namespaces of a :class:`testbeds.netns.Testnet`,
the way a user would: nginx (Debian's, with a config written to a temporary folder) and
``python3 -m http.server`` as kernel-TCP servers, ``curl`` as a kernel-TCP client, ``tcpdump`` for
captures judged by ``tshark`` with checksum validation on, ``ss -tin`` for the kernel's view of a
connection, and the ``tcpstack`` console script as a subprocess. Every process gets a timeout and
is ended (SIGTERM, then SIGKILL) by the helper that started it; every wait loop is bounded.

The ``tcpstack`` subprocesses get ``TCPSTACK_CONTROL_DIR`` pointing into the test's temporary
folder, so ``tcpstack ss`` and ``tcpstack capture`` see exactly the stacks the test started and
never another test's (or another user's) stack under ``/run/tcpstack``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

import attrs

from testbeds.netns import Namespace, Testnet, offloads, veth

__all__ = [
    "Body",
    "Capture",
    "Chain",
    "TUN_ADDRESS",
    "TUN_SUBNET",
    "capture",
    "chain",
    "cli_env",
    "guard_tables",
    "http_server",
    "kernel_http_server",
    "kernel_connection",
    "make_body",
    "nginx",
    "parse_info",
    "route_to_tun",
    "run_tcpstack",
    "serve_process",
    "sha256_file",
    "stop",
    "tcpstack_argv",
    "tcpstack_skip_reason",
    "trickle_server",
    "tshark",
    "tshark_count",
    "tun_devices",
    "wait_listening",
]

#: The ``tcpstack`` CLI's TUN defaults (``--address`` / ``--host-address``): the stack's address
#: and the /30 the kernel routes through the device.
TUN_ADDRESS: Final = "198.18.254.2"
TUN_SUBNET: Final = "198.18.254.0/30"

#: tshark's checksum validation is off by default; these turn it on for TCP and IPv4.
TSHARK_CHECKSUMS: Final = ("-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE")

_STOP_TIMEOUT: Final = 10.0


def tcpstack_skip_reason(*tools: str) -> str | None:
    """Why these tests cannot run (one line) or None: root, namespaces and the named tools."""
    from testbeds.netns import root_skip_reason

    reason = root_skip_reason()
    if reason is not None:
        return reason
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (run ./setup.sh as root)"
    if not Path(tcpstack_argv()[0]).exists():
        return "needs the tcpstack console script beside the interpreter (run ./setup.sh)"
    return None


# ------------------------------------------------------------------------------- data


@attrs.frozen
class Body:
    """A file of seeded random octets served in a transfer, and its SHA-256."""

    path: Path
    size: int
    sha256: str


def make_body(directory: Path, size: int, *, seed: int, name: str = "body.bin") -> Body:
    # Seeded random octets: nothing compresses, and a failure replays with the same data.
    data = random.Random(seed).randbytes(size)
    path = directory / name
    path.write_bytes(data)
    return Body(path, size, hashlib.sha256(data).hexdigest())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------- processes


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], *,
         sig: int = signal.SIGTERM) -> int:
    """End a process this test started: ``sig``, then SIGKILL if it lingers; its exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT)
    return int(proc.returncode)


def wait_listening(ns: Namespace, port: int, proc: subprocess.Popen[bytes] | None = None,
                   *, timeout: float = 15.0) -> None:
    """Wait until a kernel socket listens on ``port`` in ``ns`` (and ``proc`` is still alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with status {proc.returncode} before listening")
        if ns.run("ss", "-Hltn", f"sport = :{port}").strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} in {ns.name} after {timeout:g} s")


@contextlib.contextmanager
def nginx(ns: Namespace, address: str, port: int, root: Path, workdir: Path,
          ) -> Iterator[Path]:
    """Debian's nginx serving ``root`` on ``address:port`` in ``ns``; yields its access log.

    Pid file, logs and temporary folders all live in ``workdir``; the master stays in the
    foreground (``daemon off``) so the test owns its process.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    access_log = workdir / "access.log"
    conf = workdir / "nginx.conf"
    temp = {kind: workdir / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf.write_text(
        # Workers as root: pytest's temporary folders are 0700 root, unreadable for www-data.
        "user root;\n"
        "worker_processes 1;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"  access_log {access_log};\n"
        f"  client_body_temp_path {temp['client_body']};\n"
        f"  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n"
        f"  uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n"
        "  default_type application/octet-stream;\n"
        "  sendfile on;\n"
        "  server {\n"
        f"    listen {address}:{port};\n"
        f"    root {root};\n"
        "  }\n"
        "}\n"
    )
    proc = ns.popen("nginx", "-p", str(workdir), "-e", str(workdir / "error.log"),
                    "-c", str(conf), "-g", "daemon off;",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_listening(ns, port, proc)
        except AssertionError as exc:
            errors = (workdir / "error.log").read_text() if (workdir / "error.log").exists() else ""
            raise AssertionError(f"nginx did not start: {exc}; error.log: {errors.strip()}") from None
        yield access_log
    finally:
        stop(proc, sig=signal.SIGQUIT)  # nginx's graceful shutdown


@contextlib.contextmanager
def http_server(ns: Namespace, address: str, port: int, root: Path) -> Iterator[None]:
    """``python3 -m http.server`` serving ``root`` on ``address:port`` in ``ns``."""
    proc = ns.popen(sys.executable, "-m", "http.server", "--bind", address, "--directory",
                    str(root), str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(ns, port, proc)
        yield
    finally:
        stop(proc)


@contextlib.contextmanager
def kernel_http_server(kind: str, ns: Namespace, address: str, port: int, root: Path,
                       workdir: Path) -> Iterator[Path | None]:
    """``nginx`` or ``http.server`` (see those); yields nginx's access log, or None."""
    if kind == "nginx":
        with nginx(ns, address, port, root, workdir / "nginx") as access_log:
            yield access_log
    elif kind == "http.server":
        with http_server(ns, address, port, root):
            yield None
    else:
        raise ValueError(f"unknown kernel server {kind!r}")


@attrs.frozen
class Chain:
    """Three hosts in a line: ``client`` -- ``router`` -- ``server``, each link a veth pair.

    Loss and rate limits go on the router's egress, where no endpoint's TCP can see them: a
    drop on a host's own egress (a netdev egress rule, a full qdisc) is reported back to the
    sending socket as a local drop (NET_XMIT_DROP), so the kernel's TCP resends at once, without
    a retransmission and without the receiver ever seeing a hole.
    """

    client: Namespace
    router: Namespace
    server: Namespace
    client_dev: str  # client's end of client--router
    router_client_dev: str  # router's end of client--router
    router_server_dev: str  # router's end of router--server
    server_dev: str  # server's end of router--server
    client_addr: str
    server_addr: str


@contextlib.contextmanager
def chain() -> Iterator[Chain]:
    """A :class:`Chain` on 198.18.10.0/24 and 198.18.11.0/24, offloads off everywhere (the
    client's PcapLink and the captures need whole, checksummed packets); deleted on exit."""
    made: list[Namespace] = []
    try:
        for label in ("c", "r", "s"):
            made.append(Namespace.create(label))
        client, router, server = made
        cdev, rcdev = veth(client, router, "198.18.10.1", "198.18.10.2")
        rsdev, sdev = veth(router, server, "198.18.11.1", "198.18.11.2")
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        client.run("ip", "route", "add", "default", "via", "198.18.10.2")
        server.run("ip", "route", "add", "default", "via", "198.18.11.1")
        for ns, dev in ((client, cdev), (router, rcdev), (router, rsdev), (server, sdev)):
            offloads(ns, dev, on=False)
        yield Chain(client, router, server, cdev, rcdev, rsdev, sdev, "198.18.10.1",
                    "198.18.11.2")
    finally:
        for ns in made:
            ns.delete()


# A kernel-TCP HTTP server whose transfer lasts as long as the test needs: it sends the response
# header and then 1 KiB every 10 ms until a line arrives on its stdin (or a minute passes), then
# the rest at once. Live views (`tcpstack ss`, `tcpstack capture`, the progress bar) get a
# running connection with steady traffic however slowly the machine starts programs.
_TRICKLE: Final = r"""
import select, socket, sys, time
path, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(path, "rb").read()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((address, port))
listener.listen(1)
print("ready", flush=True)
conn, _ = listener.accept()
request = b""
while b"\r\n\r\n" not in request:
    chunk = conn.recv(4096)
    if not chunk:
        sys.exit("client closed before its request was complete")
    request += chunk
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data))
sent, until = 0, time.monotonic() + 60
while sent < len(data) // 2 and time.monotonic() < until:
    if select.select([sys.stdin], [], [], 0.01)[0]:
        break
    conn.sendall(data[sent:sent + 1024])
    sent += 1024
conn.sendall(data[sent:])
conn.shutdown(socket.SHUT_WR)
while conn.recv(65536):
    pass
"""


@contextlib.contextmanager
def trickle_server(ns: Namespace, address: str, port: int, body: Body,
                   ) -> Iterator[Callable[[], None]]:
    """The trickling server above, serving ``body`` for one GET; yields ``release()``, which
    lets it send the rest at full speed."""
    proc = ns.popen(sys.executable, "-c", _TRICKLE, str(body.path), address, str(port),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            with contextlib.suppress(BrokenPipeError):  # it is done already
                stdin.write(b"go\n")
                stdin.flush()

    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if not ready or proc.stdout.readline().strip() != b"ready":
            raise AssertionError("the trickling server did not start")
        yield release
    finally:
        stop(proc)
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
        proc.stdout.close()


def route_to_tun(net: Testnet) -> None:
    """Let the server namespace reach a TUN stack in the client namespace (through its veth)."""
    net.client.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    net.server.run("ip", "route", "replace", TUN_SUBNET, "via", net.client_addr)


def guard_tables(ns: Namespace) -> list[str]:
    """Names of the tcpstack firewall-guard tables (``tcpstack_<name>_<pid>``) in ``ns``."""
    return [line.split()[-1] for line in ns.run("nft", "list", "tables").splitlines()
            if line.split()[-1].startswith("tcpstack_")]


def tun_devices(ns: Namespace) -> list[str]:
    out = ns.run("ip", "-o", "link", "show", "type", "tun")
    return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]


# ------------------------------------------------------------------------------- tcpstack CLI


def tcpstack_argv(*args: str) -> list[str]:
    """The console script installed beside this interpreter (the project's .venv), with ``args``."""
    return [str(Path(sys.executable).parent / "tcpstack"), *args]


def cli_env(control_dir: Path) -> dict[str, str]:
    """The environment for tcpstack subprocesses: control sockets in ``control_dir`` only."""
    return {**os.environ, "TCPSTACK_CONTROL_DIR": str(control_dir)}


def run_tcpstack(ns: Namespace, *args: str, env: Mapping[str, str], timeout: float,
                 ) -> subprocess.CompletedProcess[str]:
    """Run ``tcpstack ARGS`` in ``ns`` to completion; stdout and stderr captured as text."""
    return subprocess.run(["ip", "netns", "exec", ns.name, *tcpstack_argv(*args)],
                          capture_output=True, text=True, timeout=timeout, env=dict(env),
                          check=False)


@contextlib.contextmanager
def serve_process(ns: Namespace, *args: str, env: Mapping[str, str], log: Path,
                  timeout: float = 20.0) -> Iterator[subprocess.Popen[bytes]]:
    """``tcpstack serve ARGS`` running in ``ns`` until the block ends (then SIGTERM).

    Its stderr (the ready line and the access log) goes to ``log``, a file, so a chatty server
    can never block on a full pipe. Yields once the ready line is there.
    """
    with open(log, "wb") as sink:
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *tcpstack_argv("serve", *args)],
                                stdout=subprocess.DEVNULL, stderr=sink, env=dict(env))
    try:
        deadline = time.monotonic() + timeout
        while b"tcpstack serve: http://" not in log.read_bytes():
            if proc.poll() is not None:
                raise AssertionError(f"tcpstack serve exited with status {proc.returncode}: "
                                     f"{log.read_text(errors='replace').strip()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"tcpstack serve not ready after {timeout:g} s")
            time.sleep(0.05)
        yield proc
    finally:
        stop(proc)


_INFO_FLAGS: Final = frozenset({"sack", "ts", "ecn", "app_limited"})


def parse_info(line: str) -> dict[str, str]:
    """The fields of an ``ss -ti``-style line (the kernel's ``ss`` or ``tcpstack``'s): ``key:value``
    pairs by key, bare flags (``sack``, ``ts``) mapped to ``""``, ``delivery_rate X`` and
    ``send X`` pairs by their first word."""
    fields: dict[str, str] = {}
    words = line.split()
    i = 0
    while i < len(words):
        word = words[i]
        if ":" in word:
            key, _, value = word.partition(":")
            fields[key] = value
        elif word in _INFO_FLAGS:
            fields[word] = ""
        elif word in ("delivery_rate", "send", "pacing_rate") and i + 1 < len(words):
            fields[word] = words[i + 1]
            i += 1
        else:
            fields.setdefault(word, "")  # the congestion control's name, and words ss adds
        i += 1
    return fields


def kernel_connection(ns: Namespace, local_port: int, peer: str) -> dict[str, str] | None:
    """The kernel's ``ss -tine`` fields for its connection on ``local_port`` with ``peer``, or
    None if there is none established right now.

    ``-e`` is needed: the iproute2 6.1 ``ss`` here prints the ``ts`` and ``sack`` flags only with
    it (``ss -ti`` omits them on this kernel although ``tcpi_options`` has them set).
    """
    out = ns.run("ss", "-Htine", "state", "established", f"( sport = :{local_port} )",
                 "dst", peer)
    lines = out.splitlines()
    for n, line in enumerate(lines):
        if peer in line and n + 1 < len(lines):
            return parse_info(lines[n + 1])
    return None


# ------------------------------------------------------------------------------- captures


@attrs.define
class Capture:
    """A finished tcpdump capture: the file and the kernel's drop count for it."""

    path: Path
    captured: int = -1
    dropped_by_kernel: int = -1


@contextlib.contextmanager
def capture(ns: Namespace, dev: str, path: Path, bpf: str, *, timeout: float = 15.0,
            ) -> Iterator[Capture]:
    """tcpdump on ``dev`` in ``ns`` writing ``path`` for the block; counts are set on exit.

    The block starts only once tcpdump says it is listening, so no early packet is missed.
    """
    result = Capture(path)
    proc = ns.popen("tcpdump", "-i", dev, "-n", "-s", "0", "-U", "-w", str(path), bpf,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = b""
    try:
        deadline = time.monotonic() + timeout
        while b"listening on" not in stderr:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(f"tcpdump did not start: {stderr.decode(errors='replace')}")
            ready, _, _ = select.select([proc.stderr], [], [], left)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    continue
                stderr += chunk
        yield result
        # tcpdump may still have packets in its capture buffer, and on SIGINT it stops without
        # reading them: wait until the file stops growing.
        quiet_since, size = time.monotonic(), -1
        deadline = quiet_since + timeout
        while time.monotonic() < deadline:
            now_size = path.stat().st_size if path.exists() else 0
            if now_size != size:
                quiet_since, size = time.monotonic(), now_size
            elif time.monotonic() - quiet_since >= 1.0:
                break
            time.sleep(0.05)
    finally:
        stop(proc, sig=signal.SIGINT)  # SIGINT: tcpdump flushes the file and prints its counts
        stderr += proc.stderr.read()
        proc.stderr.close()
    text = stderr.decode(errors="replace")
    if m := re.search(r"(\d+) packets? captured", text):
        result.captured = int(m[1])
    if m := re.search(r"(\d+) packets? dropped by kernel", text):
        result.dropped_by_kernel = int(m[1])


def tshark(path: Path, display_filter: str, *fields: str, timeout: float = 60.0) -> list[str]:
    """Lines ``tshark -r path -Y filter -T fields`` prints (checksum validation on)."""
    args = ["tshark", "-r", str(path), "-n", *TSHARK_CHECKSUMS, "-Y", display_filter,
            "-T", "fields"]
    for field in fields or ("frame.number",):
        args += ["-e", field]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"tshark -Y {display_filter!r} failed: {done.stderr.strip()}")
    return [line for line in done.stdout.splitlines() if line.strip()]


def tshark_count(path: Path, display_filter: str) -> int:
    return len(tshark(path, display_filter))
