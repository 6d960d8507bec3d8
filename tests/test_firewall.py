"""The firewall guard: port lists, /proc parsing, capabilities, and (as root, in namespaces) the
nftables table and port reservation going in and coming out on exit, error, signals and cleanup."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpstack.cli import main as cli_main
from tcpstack.firewall import (
    FirewallError,
    FirewallGuard,
    cleanup_stale,
    list_guards,
    table_name,
)
from tcpstack.hostnet import format_ports, kernel_ports_in_use, parse_ports, subtract_ports
from tcpstack.privileges import Capability, PrivilegeError, missing_capabilities, require
from testbeds.netns import Namespace, entered, root_skip_reason

SKIP = root_skip_reason()
needs_root = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
ADDR = "198.18.77.1"


# ---------------------------------------------------------------------------- pure parts


def test_port_lists_round_trip_and_merge() -> None:
    assert parse_ports("") == []
    assert parse_ports("40000-40999,50000\n") == [range(40000, 41000), range(50000, 50001)]
    assert format_ports([range(5, 10), range(1, 3), range(3, 5), range(20, 21)]) == "1-9,20"
    with pytest.raises(ValueError, match="not a port"):
        parse_ports("40000-x")
    with pytest.raises(ValueError, match="range"):
        parse_ports("5-3")


@given(
    st.lists(st.tuples(st.integers(1, 300), st.integers(0, 40)), max_size=6),
    st.tuples(st.integers(1, 300), st.integers(1, 40)),
)
def test_subtract_is_set_difference(pieces: list[tuple[int, int]], cut: tuple[int, int]) -> None:
    ranges = [range(a, a + n) for a, n in pieces]
    cut_range = range(cut[0], cut[0] + cut[1])
    got = subtract_ports(ranges, [cut_range])
    want = set().union(*map(set, ranges)) - set(cut_range)
    assert set().union(*map(set, got)) == want
    assert parse_ports(format_ports(got)) == [r for r in got if len(r)] or not want


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1
   1: 014D12C6:9C41 024D12C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2
   2: 00000000:9C42 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3
   3: 014D12C6:9C43 024D12C6:1F90 06 00000000:00000000 00:00000000 00000000     0        0 4
   4: 014D12C6:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:9C44 00000000000000000000000000000000:0000 0A
   1: 0000000000000000FFFF0000014D12C6:9C45 0000000000000000FFFF0000024D12C6:1F90 01
   2: 0000000000000000FFFF0000094D12C6:9C46 00000000000000000000000000000000:0000 0A
"""


def test_kernel_ports_in_use_reads_proc_net_tcp() -> None:
    ports = range(40000, 41000)
    # 127.0.0.1:40000 is another address; 40003 is TIME_WAIT; 8080 is outside the range.
    assert kernel_ports_in_use(PROC_TCP, ADDR, ports) == [(40001, "ESTABLISHED"),
                                                          (40002, "LISTEN")]
    # [::] and ::ffff:ADDR receive IPv4 for ADDR; ::ffff:198.18.77.9 does not.
    assert kernel_ports_in_use(PROC_TCP6, ADDR, ports, ipv6=True) == [(40004, "LISTEN"),
                                                                      (40005, "ESTABLISHED")]
    assert kernel_ports_in_use("header\ngarbage line\n", ADDR, ports) == []


def test_table_name_is_an_nft_identifier_with_the_pid() -> None:
    assert table_name("my stack-1", 42) == "tcpstack_my_stack_1_42"
    assert table_name("x" * 100).startswith("tcpstack_" + "x" * 32 + "_")
    assert table_name("stack").endswith(f"_{os.getpid()}")


def test_guard_rejects_bad_arguments_before_touching_anything() -> None:
    with pytest.raises(ValueError, match="interface"):
        FirewallGuard('eth0" drop', ADDR, range(40000, 40010))
    with pytest.raises(ValueError):
        FirewallGuard("eth0", "198.18.1", range(40000, 40010))
    with pytest.raises(ValueError, match="ports"):
        FirewallGuard("eth0", ADDR, range(40000, 40000))


STATUS = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t{eff}\nCapEff:\t{eff}\nCapAmb:\t{amb}\n"


def test_capabilities_from_status_name_the_missing_one() -> None:
    raw_only = f"{1 << Capability.CAP_NET_RAW:016x}"
    both = f"{(1 << Capability.CAP_NET_RAW) | (1 << Capability.CAP_NET_ADMIN):016x}"
    text = STATUS.format(eff=raw_only, amb="0" * 16)
    assert missing_capabilities([Capability.CAP_NET_RAW, Capability.CAP_NET_ADMIN],
                                status_text=text, euid=1000) == [Capability.CAP_NET_ADMIN]
    with pytest.raises(PrivilegeError, match=r"missing capability CAP_NET_ADMIN: needed for guard"):
        require({Capability.CAP_NET_RAW: "capture", Capability.CAP_NET_ADMIN: "guard"},
                status_text=text, euid=1000)
    # Effective but not ambient: fine for this process, not for the nft it would run as non-root.
    text = STATUS.format(eff=both, amb="0" * 16)
    require({Capability.CAP_NET_ADMIN: "guard"}, status_text=text, euid=1000)
    with pytest.raises(PrivilegeError, match="ambient"):
        require({Capability.CAP_NET_ADMIN: "guard"}, ambient=[Capability.CAP_NET_ADMIN],
                status_text=text, euid=1000)
    require({Capability.CAP_NET_ADMIN: "guard"}, ambient=[Capability.CAP_NET_ADMIN],
            status_text=text, euid=0)


# ---------------------------------------------------------------------------- in namespaces


@pytest.fixture
def ns() -> Iterator[Namespace]:
    if SKIP is not None:
        pytest.skip(SKIP)
    space = Namespace.create("fw")
    try:
        space.run("ip", "link", "add", "fw0", "type", "veth", "peer", "name", "fw1")  # no dummy module here
        space.run("ip", "addr", "add", f"{ADDR}/24", "dev", "fw0")
        space.run("ip", "link", "set", "fw0", "up")
        yield space
    finally:
        space.delete()


def tables(space: Namespace) -> str:
    return space.run("nft", "list", "tables")


def reserved(space: Namespace) -> str:
    return space.run("cat", "/proc/sys/net/ipv4/ip_local_reserved_ports").strip()


@needs_root
def test_guard_installs_drop_rule_and_reservation_then_removes_both(ns: Namespace) -> None:
    ns.run("sysctl", "-q", "-w", "net.ipv4.ip_local_reserved_ports=40005-40006,50000")
    guard = FirewallGuard("fw0", ADDR, range(40000, 40010), name="t", netns=ns.name)
    with guard:
        ruleset = ns.run("nft", "list", "table", "inet", guard.table)
        assert 'iifname "fw0" ip daddr 198.18.77.1 tcp dport 40000-40009' in ruleset
        assert "drop" in ruleset and "hook input" in ruleset
        assert reserved(ns) == "40000-40009,50000"
        [record] = list_guards(ns.name)
        assert record.alive and record.ports == range(40000, 40010) and record.address == ADDR
        # 40005-40006 were reserved before us: not ours to give back.
        assert record.reserved == (range(40000, 40005), range(40007, 40010))
    assert guard.table not in tables(ns)
    assert reserved(ns) == "40005-40006,50000"


@needs_root
def test_guard_drops_what_the_kernel_would_answer(ns: Namespace) -> None:
    # Connections to the namespace's own address arrive on lo: guard lo.
    guard = FirewallGuard("lo", ADDR, range(40000, 40010), name="t", netns=ns.name)
    with guard:
        # A SYN to the guarded range: the kernel would RST it (connection refused at once); with
        # the guard it is dropped and the connect times out instead.
        code = ("import socket\ns=socket.socket();s.settimeout(0.3)\n"
                f"try:\n s.connect(('{ADDR}',40001));print('connected')\n"
                "except ConnectionRefusedError: print('refused')\n"
                "except TimeoutError: print('timeout')\n")
        assert ns.run(sys.executable, "-c", code).strip() == "timeout"
        assert guard.dropped() >= 1
    code = code.replace("0.3", "2")
    assert ns.run(sys.executable, "-c", code).strip() == "refused"


@needs_root
def test_clash_with_a_kernel_socket_is_a_clear_error_and_installs_nothing(ns: Namespace) -> None:
    with entered(ns):
        kernel = socket.socket()
    try:
        kernel.bind((ADDR, 40003))
        kernel.listen()
        before = reserved(ns)
        guard = FirewallGuard("fw0", ADDR, range(40000, 40010), netns=ns.name)
        with pytest.raises(FirewallError, match=r"port 40003 on 198\.18\.77\.1 is in use by a "
                           r"kernel socket \(LISTEN\)"):
            guard.install()
        assert "tcpstack_" not in tables(ns)
        assert reserved(ns) == before
    finally:
        kernel.close()


@needs_root
def test_overlapping_guard_is_refused(ns: Namespace) -> None:
    with FirewallGuard("fw0", ADDR, range(40000, 40010), name="a", netns=ns.name):
        other = FirewallGuard("fw0", ADDR, range(40005, 40020), name="b",
                              netns=ns.name)
        with pytest.raises(FirewallError, match="held by tcpstack_a_"):
            other.install()
        # A disjoint range on the same address is fine.
        with FirewallGuard("fw0", ADDR, range(40010, 40020), name="c",
                           netns=ns.name):
            assert len(list_guards(ns.name)) == 2
    assert "tcpstack_" not in tables(ns)


@needs_root
def test_guard_in_the_entered_namespace_is_removed_from_outside(ns: Namespace) -> None:
    with entered(ns):
        guard = FirewallGuard("fw0", ADDR, range(40000, 40010))
        guard.install()
    assert guard.table not in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                             text=True, check=True).stdout
    assert guard.table in tables(ns)
    guard.remove()  # from the test's own namespace: nsenter lands it in ns
    assert guard.table not in tables(ns)


CHILD = """
import faulthandler, signal, sys, trio
from tcpstack.firewall import FirewallGuard, guarded
faulthandler.register(signal.SIGUSR1)  # a child that hangs shows where (see _wait_or_explain)
# As a program started from a terminal: a shell without job control starts background commands
# with SIGINT ignored, and the child would inherit that from pytest.
signal.signal(signal.SIGINT, signal.default_int_handler)
async def main():
    guard = FirewallGuard("fw0", "{addr}", range(40000, 40010), name="child",
                          netns="{ns}")
    async with guarded(guard):
        print("ready", flush=True)
        await trio.sleep(30)
trio.run(main)
"""


def _start_child(space: Namespace) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(addr=ADDR, ns=space.name)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 30)
    line = child.stdout.readline() if ready else ""
    if line.strip() != "ready":
        child.kill()
        raise AssertionError(f"child did not start: {line!r} {child.communicate(timeout=5)}")
    return child


def _wait_or_explain(child: subprocess.Popen[str], timeout: float) -> None:
    """Wait for ``child`` to end; if it does not, fail with its Python stacks and output."""
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGUSR1)  # faulthandler dumps every thread's stack to stderr
        time.sleep(0.5)
        child.kill()
        out, err = child.communicate(timeout=5)
        raise AssertionError(
            f"child still running {timeout} s after the signal\nstdout: {out}\nstderr: {err}"
        ) from None


@needs_root
@pytest.mark.parametrize(("signum", "times"), [(signal.SIGTERM, 1), (signal.SIGTERM, 2),
                                               (signal.SIGINT, 1)])
def test_signal_removes_the_guard_and_still_ends_the_process(
    ns: Namespace, signum: int, times: int
) -> None:
    before = reserved(ns)
    child = _start_child(ns)
    try:
        assert "tcpstack_child_" in tables(ns) and reserved(ns) != before
        for i in range(times):  # a second SIGTERM during the cleanup must not cut it short
            if i:
                time.sleep(0.005)  # after the first is taken, while the guard comes out
            child.send_signal(signum)
        _wait_or_explain(child, 10)
    finally:
        child.kill()
        child.wait(timeout=5)
    if signum == signal.SIGTERM:
        assert child.returncode == -signal.SIGTERM  # re-delivered after the cleanup
    else:
        assert child.returncode in (-signal.SIGINT, 1)  # unwound as KeyboardInterrupt
    assert "tcpstack_" not in tables(ns)
    assert reserved(ns) == before


@needs_root
def test_cleanup_removes_a_sigkilled_guard_but_not_a_live_one(ns: Namespace, capsys:
                                                              pytest.CaptureFixture[str]) -> None:
    before = reserved(ns)
    child = _start_child(ns)
    child.kill()
    child.wait(timeout=5)
    assert f"tcpstack_child_{child.pid}" in tables(ns)
    with FirewallGuard("fw0", ADDR, range(41000, 41010), name="live",
                       netns=ns.name) as live:
        assert cli_main(["firewall", "--netns", ns.name]) == 0
        listing = capsys.readouterr().out
        assert f"tcpstack_child_{child.pid}  pid {child.pid} stale" in listing
        assert f"{live.table}  pid {os.getpid()} running" in listing
        assert cli_main(["firewall", "--cleanup", "--netns", ns.name]) == 0
        assert "1 stale table(s) removed" in capsys.readouterr().out
        assert "tcpstack_child_" not in tables(ns)
        assert live.table in tables(ns)
        assert reserved(ns) == format_ports(parse_ports(before) + [range(41000, 41010)])
    assert reserved(ns) == before
    assert cleanup_stale(ns.name) == []


@needs_root
def test_cli_reports_a_missing_namespace_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["firewall", "--cleanup", "--netns", "no-such-ns-here"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "tcpstack firewall: network namespace 'no-such-ns-here': No such file or directory"


@needs_root
def test_two_guards_of_one_process_get_their_own_tables(ns: Namespace) -> None:
    first = FirewallGuard("fw0", ADDR, range(40000, 40010), name="same", netns=ns.name)
    second = FirewallGuard("fw0", ADDR, range(40010, 40020), name="same", netns=ns.name)
    assert first.table != second.table
    with first, second:
        first.remove()
        assert second.table in tables(ns) and first.table not in tables(ns)
        assert reserved(ns) == "40010-40019"
    assert "tcpstack_" not in tables(ns) and reserved(ns) == ""


@needs_root
def test_a_leftover_table_with_our_name_is_reported_not_merged_into(ns: Namespace) -> None:
    guard = FirewallGuard("fw0", ADDR, range(40000, 40010), name="reused", netns=ns.name)
    ns.nft(f"table inet {guard.table} {{\n chain input {{\n type filter hook input priority 0;\n }}\n}}\n")
    with pytest.raises(FirewallError, match=f"table {guard.table} exists already .*--cleanup"):
        guard.install()
    assert "counter" not in ns.run("nft", "list", "table", "inet", guard.table)
    assert reserved(ns) == ""
