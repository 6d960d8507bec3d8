"""The ``tcpstack`` command-line tools end to end, run as a user runs them (root for the network).

Each test starts the console script as a subprocess inside a network namespace of a
:class:`testbeds.netns.Testnet`, against a kernel-TCP HTTP server in the other, and judges what
the user sees:

- ``tcpstack ss -i`` during a ``tcpstack get`` lists that connection (state, 4-tuple, the owning
  process and link, an ``ss -ti``-style line with the options negotiated with the kernel) and its
  counters move while the transfer runs; once the stack exits, it is gone from the list;
- ``tcpstack capture -c 50`` on that running stack writes a pcap file tshark reads: 50 packets of
  that connection, every checksum good;
- the progress bar is drawn on the terminal when stderr is one, and never in the body on stdout;
- ``--help`` of every subcommand, and errors as one clear line (no traceback, nothing left
  behind: no firewall table after a failed start).

The kernel server trickles its response until the test has seen what it looks for, so live
views have a running connection however slowly this machine starts programs. Control sockets
go to the test's temporary folder (``TCPSTACK_CONTROL_DIR``), so these tests only ever see the
stacks they started.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeVar

import attrs
import pytest
from interop_helpers import (
    Body,
    cli_env,
    guard_tables,
    make_body,
    parse_info,
    run_tcpstack,
    serve_process,
    sha256_file,
    stop,
    tcpstack_argv,
    tcpstack_skip_reason,
    trickle_server,
    tshark,
    tun_devices,
)

from tcpstack.cli import main as cli_main
from testbeds.netns import Testnet as Net
from testbeds.netns import offloads

_skip = tcpstack_skip_reason("tshark")
_F = TypeVar("_F", bound=Callable[..., object])


def root_only(test: _F) -> _F:
    """Marked ``root`` and skipped, with the one-line reason, where namespaces are not available."""
    return pytest.mark.root(pytest.mark.skipif(_skip is not None, reason=_skip or "")(test))


SIZE: Final = 4_000_000
HTTP_PORT: Final = 8000
PORTS: Final = range(40000, 41000)
DEADLINE: Final = 60.0
#: rich's DownloadColumn, "<done>/4.0 MB", redrawn as the transfer goes.
BAR: Final = re.compile(r"\d+(\.\d+)?/4\.0 MB")


@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> Body:
    return make_body(tmp_path_factory.mktemp("www-cli"), SIZE, seed=5_0007)


@pytest.fixture
def net(testnet: Net) -> Net:
    return testnet


@attrs.define
class RunningGet:
    proc: subprocess.Popen[bytes]
    output: Path
    errors: Path
    env: dict[str, str]
    release: Callable[[], None]
    status: int | None = None


@contextlib.contextmanager
def running_get(net: Net, body: Body, tmp_path: Path, *, stderr: int | None = None,
                ) -> Iterator[RunningGet]:
    """``tcpstack get --link pcap`` in the client namespace fetching ``body`` from the trickling
    kernel server, running until the block calls ``release()`` (or ends); ``status`` is then the
    exit status."""
    offloads(net.client, net.client_dev, on=False)
    offloads(net.server, net.server_dev, on=False)
    env = cli_env(tmp_path / "ctl")
    output, errors = tmp_path / "got.bin", tmp_path / "get.err"
    url = f"http://{net.server_addr}:{HTTP_PORT}/{body.path.name}"
    with trickle_server(net.server, net.server_addr, HTTP_PORT, body) as release:
        with open(output, "wb") as out, open(errors, "wb") as sink:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", net.client.name,
                 *tcpstack_argv("get", url, "--link", "pcap", "--interface", net.client_dev,
                               # whole checksums in the stack's own capture tap (judged below)
                               "--no-offload")],
                stdout=out, stderr=sink if stderr is None else stderr, env=env)
        running = RunningGet(proc, output, errors, env, release)
        try:
            yield running
            release()
            proc.wait(timeout=DEADLINE)
        finally:
            running.status = stop(proc)


def wait_for_control_socket(get: RunningGet, directory: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not (directory / f"get.{get.proc.pid}.sock").exists():
        assert get.proc.poll() is None, f"tcpstack get ended early: {get.errors.read_text()}"
        assert time.monotonic() < deadline, "tcpstack get never served its control socket"
        time.sleep(0.05)


def ss_rows(net: Net, env: dict[str, str]) -> list[tuple[list[str], dict[str, str]]]:
    """``tcpstack ss -i``'s connection rows: the columns, and the fields of the line below."""
    done = run_tcpstack(net.client, "ss", "-i", env=env, timeout=20)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and lines[0].split()[:2] == ["State", "Send-Q"]
    rows = []
    for n, line in enumerate(lines[1:], start=1):
        if line and not line[0].isspace():
            info = parse_info(lines[n + 1]) if n + 1 < len(lines) and lines[n + 1][:1].isspace() \
                else {}
            rows.append((line.split(), info))
    return rows


@root_only
def test_ss_lists_the_connection_of_a_running_get(net: Net, body: Body, tmp_path: Path) -> None:
    samples: list[tuple[list[str], dict[str, str]]] = []
    with running_get(net, body, tmp_path) as get:
        wait_for_control_socket(get, tmp_path / "ctl")
        for _ in range(2):
            for columns, info in ss_rows(net, get.env):
                if columns[0] == "ESTAB" and columns[3] == f"{net.server_addr}:{HTTP_PORT}":
                    samples.append((columns, info))
            time.sleep(0.3)
        assert len(samples) == 2, "tcpstack ss did not show the connection while it ran"
    assert get.status == 0, get.errors.read_text()
    assert sha256_file(get.output) == body.sha256
    (columns, first), (_, second) = samples
    local_addr, local_port = columns[2].rsplit(":", 1)
    assert local_addr == net.client_addr and int(local_port) in PORTS
    assert columns[4] == f"get(pid={get.proc.pid},link=pcap)"
    assert {"sack", "ts", "wscale", "cubic"} <= first.keys()
    assert first["mss"] == "1448"  # 1500 - 20 (IP) - 20 (TCP) - 12 (timestamps)
    # Live numbers, not a snapshot: the transfer moved on between the two samples.
    assert 0 < int(first["bytes_received"]) < int(second["bytes_received"]) <= SIZE + 1000
    # The stack is gone: its control socket with it.
    assert ss_rows(net, get.env) == []


@root_only
def test_capture_of_a_running_stack_is_a_pcap_tshark_reads(
    net: Net, body: Body, tmp_path: Path
) -> None:
    pcap_file = tmp_path / "stack.pcap"
    with running_get(net, body, tmp_path) as get:
        # No --pid: the stack is the only one in the control folder, which capture picks.
        wait_for_control_socket(get, tmp_path / "ctl")
        done = run_tcpstack(net.client, "capture", "-c", "50", "-d", "20", "-o", str(pcap_file),
                            env=get.env, timeout=40)
    assert done.returncode == 0, done.stderr
    assert get.status == 0, get.errors.read_text()
    assert f"50 packets of get(pid={get.proc.pid})" in done.stderr
    rows = [line.split("\t") for line in tshark(
        pcap_file, "frame", "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "tcp.checksum.status",
        "ip.checksum.status")]
    assert len(rows) == 50
    ends = {net.client_addr, net.server_addr}
    for src, dst, sport, dport, tcp_ok, ip_ok in rows:
        assert {src, dst} == ends
        assert str(HTTP_PORT) in (sport, dport)
        assert (tcp_ok, ip_ok) == ("1", "1")  # tshark validated both checksums: good
    assert tshark(pcap_file, "_ws.malformed") == []


@root_only
def test_progress_bar_goes_to_the_terminal_not_into_the_body(
    net: Net, body: Body, tmp_path: Path
) -> None:
    master, slave = pty.openpty()
    terminal = b""
    try:
        with running_get(net, body, tmp_path, stderr=slave) as get:
            os.close(slave)
            slave = -1
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                if BAR.search(terminal.decode(errors="replace")):
                    get.release()  # the bar is up: let the transfer finish
                ready, _, _ = select.select([master], [], [], 0.5)
                if not ready:
                    if get.proc.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    break
                if not chunk:
                    break
                terminal += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert get.status == 0, terminal.decode(errors="replace")
    # The body is intact: the bar never went to stdout.
    assert sha256_file(get.output) == body.sha256
    text = terminal.decode(errors="replace")
    assert BAR.search(text), text[-2000:]
    assert f"HTTP 200 OK: {SIZE} bytes" in text


# ---------------------------------------------------------------------------- help and errors


@pytest.mark.parametrize("command", ["get", "serve", "ss", "capture", "firewall"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # In-process: the console script itself is exercised by every other test here.
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tcpstack {command}")
    assert len(out.splitlines()) > 3


def assert_one_line_error(status: int, stderr: str, prefix: str) -> str:
    """A failure exit status and exactly one line on stderr, starting with ``prefix``."""
    assert status != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["get", "https://198.18.0.1/"], "unsupported scheme 'https'"),
    (["get", "http://198.18.0.1:99999/"], "bad port"),
    (["serve", "--root", "/nonexistent/tcpstack-test"], "--root '/nonexistent/tcpstack-test'"),
    (["capture", "-o", "/dev/null", "-c", "1", "--dir", "{ctl}"], "no running stack"),
])
def test_usage_errors_are_one_line(args: list[str], expected: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (an escaping exception fails the test as a traceback would); nothing here
    # reaches the network.
    status = cli_main([arg.format(ctl=tmp_path) for arg in args])
    line = assert_one_line_error(status, capsys.readouterr().err, f"tcpstack {args[0]}: ")
    assert expected in line


@root_only
def test_network_errors_are_one_line_and_leave_nothing(net: Net, tmp_path: Path) -> None:
    offloads(net.client, net.client_dev, on=False)
    offloads(net.server, net.server_dev, on=False)
    env = cli_env(tmp_path / "ctl")
    # No interface of that name: nothing is installed.
    done = run_tcpstack(net.client, "get", f"http://{net.server_addr}:{HTTP_PORT}/",
                        "--link", "pcap", "--interface", "nosuch0", env=env, timeout=30)
    assert "nosuch0" in assert_one_line_error(done.returncode, done.stderr, "tcpstack get: ")
    assert guard_tables(net.client) == []
    # Nothing listens there: the server kernel refuses, the user hears it in one line.
    done = run_tcpstack(net.client, "get", f"http://{net.server_addr}:{HTTP_PORT}/",
                        "--link", "pcap", "--interface", net.client_dev, "--timeout", "10",
                        env=env, timeout=30)
    line = assert_one_line_error(done.returncode, done.stderr, "tcpstack get: ")
    assert f"connect to {net.server_addr}:{HTTP_PORT}" in line and "refused" in line.lower()
    assert line.count("connect to") == 1, line  # said once
    assert guard_tables(net.client) == []


@root_only
def test_sigterm_ends_serve_cleanly(net: Net, tmp_path: Path) -> None:
    """SIGTERM closes the stack as Ctrl-C does: exit 0, no TUN device, no control socket left."""
    ctl = tmp_path / "ctl"
    env = cli_env(ctl)
    root = tmp_path / "www"
    root.mkdir()
    log = tmp_path / "serve.log"
    with serve_process(net.client, "--link", "tun", "--port", "8080", "--root", str(root),
                       env=env, log=log) as proc:
        assert len(list(ctl.glob("serve.*.sock"))) == 1
        assert tun_devices(net.client) != []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text(errors="replace")
    assert "SIGTERM, closing" in log.read_text()
    assert list(ctl.glob("*.sock")) == []
    assert tun_devices(net.client) == []
