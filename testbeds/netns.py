"""Test hosts as Linux network namespaces: create, wire with veth, shape, impair, and always delete.

Interop tests and the namespace testbed need hosts the kernel treats as separate machines. A
:class:`Namespace` is one such host (``ip netns add``); :func:`veth` joins two of them;
:func:`tbf` limits a device's rate (this kernel has ``tbf`` and ``htb`` but no netem);
:func:`egress_loss` drops a random fraction of a device's outgoing packets with an nftables
``netdev`` egress chain (``numgen random``), which is where loss must go: packet taps on the
receiving side see ingress before nftables does, so ingress loss would be invisible to them.

Everything a :class:`Testnet` creates is named with the creating process's pid and is deleted when
its ``with`` block ends, on error included. Addresses come from 198.18.0.0/15 (RFC 2544's
benchmarking range). Commands run through ``ip netns exec`` so nothing here changes the calling
process's namespace, except :func:`entered`, which moves only the calling thread and moves it back:
sockets, TUN devices and pcap handles opened inside it stay bound to that namespace afterwards,
which is how one test process drives links in several namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Final

import attrs

__all__ = [
    "Namespace",
    "NetnsError",
    "Testnet",
    "egress_dropped",
    "egress_loss",
    "entered",
    "offloads",
    "root_skip_reason",
    "tbf",
    "veth",
]

_CLONE_NEWNET: Final = 0x40000000
_counter = itertools.count()
_REQUIRED_TOOLS: Final = ("ip", "nft", "tc", "ethtool")


class NetnsError(RuntimeError):
    """A namespace command failed; the message has the command and what it printed."""


def root_skip_reason() -> str | None:
    """Why namespace tests cannot run here, in one line, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, nftables)"
    missing = [tool for tool in _REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (run ./setup.sh as root)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def _run(args: Sequence[str], *, input: str | None = None, timeout: float = 20.0) -> str:
    try:
        done = subprocess.run(
            list(args), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@attrs.define
class Namespace:
    """One network namespace (one test host). Create with :meth:`create`; :meth:`delete` ends it."""

    name: str
    deleted: bool = False

    @classmethod
    def create(cls, label: str) -> Namespace:
        name = f"ts{os.getpid()}-{label}-{next(_counter)}"
        _run(["ip", "netns", "add", name])
        ns = cls(name)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def run(self, *args: str, input: str | None = None, timeout: float = 20.0) -> str:
        """Run a command inside the namespace and return its stdout; NetnsError on failure."""
        return _run(["ip", "netns", "exec", self.name, *args], input=input, timeout=timeout)

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running process (a server) inside the namespace; the caller ends it."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kwargs)  # type: ignore[call-overload]

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f -`` syntax) inside the namespace."""
        self.run("nft", "-f", "-", input=ruleset)

    def delete(self) -> None:
        if self.deleted:
            return
        self.deleted = True
        # Deleting the namespace destroys its veth ends, qdiscs and nftables tables with it.
        with contextlib.suppress(NetnsError):
            _run(["ip", "netns", "delete", self.name])


def _libc_setns() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.setns
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _setns(fd: int) -> None:
    if _libc_setns()(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns: Namespace) -> Iterator[None]:
    """Move the calling thread into ``ns`` for the block, then back to where it was.

    Only file descriptors opened inside the block (sockets, TUN, pcap) belong to ``ns``; code run
    after the block, including trio's I/O on those descriptors, is unaffected by the switch.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def veth(a: Namespace, b: Namespace, addr_a: str, addr_b: str, *, prefix: int = 24,
         mtu: int = 1500) -> tuple[str, str]:
    """Join ``a`` and ``b`` with a veth pair, address both ends, bring them up; return the names."""
    n = next(_counter)
    dev_a, dev_b = f"va{n}", f"vb{n}"
    _run(["ip", "link", "add", dev_a, "netns", a.name, "mtu", str(mtu), "type", "veth",
          "peer", "name", dev_b, "netns", b.name, "mtu", str(mtu)])
    for ns, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
        ns.run("ip", "addr", "add", f"{addr}/{prefix}", "dev", dev)
        ns.run("ip", "link", "set", dev, "up")
        # IPv6 off: router solicitations and neighbour discovery are noise in captures.
        ns.run("sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1")
    return dev_a, dev_b


def offloads(ns: Namespace, dev: str, *, on: bool) -> None:
    """Switch TSO, GSO, GRO and checksum offload of ``dev`` (off where captures are checked)."""
    state = "on" if on else "off"
    ns.run("ethtool", "-K", dev, "tso", state, "gso", state, "gro", state, "tx", state, "rx", state)


def tbf(ns: Namespace, dev: str, rate_bit: int, *, burst: int = 32_000,
        latency: float = 0.1) -> None:
    """Limit ``dev``'s egress to ``rate_bit`` bit/s with a token bucket (``tc-tbf``)."""
    ns.run("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_bit}bit",
           "burst", str(burst), "latency", f"{int(latency * 1000)}ms")


def egress_loss(ns: Namespace, dev: str, probability: float, *, table: str = "tsloss") -> None:
    """Drop ``probability`` of the TCP packets ``dev`` sends (nftables ``numgen random``).

    Put it on a device whose sender is *not* the TCP under test, e.g. a router namespace's egress
    toward the receiver: a drop on a kernel sender's own egress is local (the qdisc layer reports
    it to TCP, which resends at once without a loss episode; a raw-socket sender sees ENOBUFS),
    so it does not emulate loss on the path. For a TUN endpoint the device is the network, and
    there it does.
    """
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"loss probability must be in [0, 1), got {probability}")
    per_mille = round(probability * 1000)
    ns.nft(
        f"table netdev {table} {{\n"
        f"  chain egress_{dev} {{\n"
        f'    type filter hook egress device "{dev}" priority 0; policy accept;\n'
        f"    meta protocol ip ip protocol tcp numgen random mod 1000 < {per_mille} counter drop\n"
        "  }\n}\n"
    )


def egress_dropped(ns: Namespace, *, table: str = "tsloss") -> int:
    """Packets the :func:`egress_loss` rule has dropped so far."""
    out = ns.run("nft", "list", "table", "netdev", table)
    for line in out.splitlines():
        if "counter packets" in line:
            return int(line.split("counter packets")[1].split()[0])
    return 0


@attrs.define
class Testnet:
    """Two hosts, ``client`` and ``server``, joined by one veth pair on 198.18.<n>.0/24.

    ``with Testnet.create() as net:`` builds it; leaving the block deletes both namespaces (and
    with them the veths, qdiscs and nftables tables inside).
    """

    client: Namespace
    server: Namespace
    client_dev: str
    server_dev: str
    client_addr: str
    server_addr: str

    @classmethod
    def create(cls, *, subnet: int | None = None, mtu: int = 1500) -> Testnet:
        n = (os.getpid() + next(_counter)) % 250 + 2 if subnet is None else subnet
        client = Namespace.create("c")
        try:
            server = Namespace.create("s")
        except BaseException:
            client.delete()
            raise
        try:
            caddr, saddr = f"198.18.{n}.1", f"198.18.{n}.2"
            cdev, sdev = veth(client, server, caddr, saddr, mtu=mtu)
        except BaseException:
            client.delete()
            server.delete()
            raise
        return cls(client, server, cdev, sdev, caddr, saddr)

    def close(self) -> None:
        self.client.delete()
        self.server.delete()

    def __enter__(self) -> Testnet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
