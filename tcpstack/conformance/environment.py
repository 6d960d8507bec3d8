"""The host a script believes it runs on: sysctl settings and the shell lines scripts use.

A script's ``sysctl`` lines (FreeBSD ``net.inet.tcp.*``/``kern.ipc.*``, Linux ``net.ipv4.tcp_*``
and google's ``common/defaults.sh``) become the stack's :class:`ConnectionOptions` or, for the
knobs that live in a behaviour :class:`~tcpstack.tcp.config.Profile` (delayed-ACK time, SYN-ACK
retries, ...), a derived profile registered under a name that spells out the change. A setting
the engine cannot honour raises :class:`Unsupported`, and an unknown one too: the runner then
skips the script with the reason, so no script passes on a setting it ignored. Settings that
describe machinery the engine does not have (host cache, TSO, fast-open keys, pacing) and whose
value leaves TCP's packets as the script expects are accepted and listed as notes.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from tcpstack.tcp.config import PROFILES, ConnectionOptions, Profile, SynFinPolicy, get_profile

__all__ = ["Unsupported", "HostConfig", "GOOGLE_DEFAULTS", "split_sysctls"]


class Unsupported(Exception):
    """A setting or shell command the runner cannot reproduce: the script is skipped."""


# google/common/defaults.sh, as name -> value. tcp_rmem's maximum (15 MiB) is what makes Linux
# choose window scale 8: it becomes the profile's receive_buffer_max, from which the engine
# derives the scale as Linux does.
GOOGLE_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("net.ipv4.tcp_rmem", f"4096 540000 {15 * 1024 * 1024}"),
    ("net.ipv4.tcp_wmem", f"4096 {256 * 1024} 4194304"),
    ("net.ipv4.tcp_timestamps", "1"),
    ("net.ipv4.tcp_syn_retries", "5"),
    ("net.ipv4.tcp_synack_retries", "5"),
    ("net.ipv4.tcp_frto", "2"),
    ("net.ipv4.tcp_sack", "1"),
    ("net.ipv4.tcp_dsack", "1"),
    ("net.ipv4.tcp_fack", "0"),
    ("net.ipv4.tcp_reordering", "3"),
    ("net.ipv4.tcp_congestion_control", "cubic"),
    ("net.ipv4.tcp_slow_start_after_idle", "0"),
    ("net.ipv4.tcp_early_retrans", "4"),
    ("net.ipv4.tcp_recovery", "1"),
    ("net.ipv4.tcp_tso_win_divisor", "3"),
    ("net.ipv4.tcp_ecn", "0"),
    ("net.ipv4.tcp_ecn_option", "2"),
    ("net.ipv4.tcp_pacing_ss_ratio", "200"),
    ("net.ipv4.tcp_pacing_ca_ratio", "120"),
    ("net.ipv4.tcp_notsent_lowat", "4294967295"),
    ("net.ipv4.tcp_fastopen", "0x70403"),
    ("net.ipv4.tcp_fastopen_key", "a1a1a1a1-b2b2b2b2-c3c3c3c3-d4d4d4d4"),
    ("net.ipv4.tcp_syncookies", "1"),
)

# Settings that change nothing the scripts can observe on the wire here: name -> why.
_NOT_MODELLED = {
    "net.ipv4.tcp_frto": "F-RTO (RFC 5682) is not modelled",
    "net.ipv4.tcp_dsack": "D-SACK is always on",
    "net.ipv4.tcp_fack": "FACK is off",
    "net.ipv4.tcp_early_retrans": "RACK/TLP are not modelled",
    "net.ipv4.tcp_recovery": "RACK is not modelled",
    "net.ipv4.tcp_tso_win_divisor": "no TSO",
    "net.ipv4.tcp_min_tso_segs": "no TSO",
    "net.ipv4.tcp_ecn_option": "no AccECN",
    "net.ipv4.tcp_pacing_ss_ratio": "no pacing",
    "net.ipv4.tcp_pacing_ca_ratio": "no pacing",
    "net.ipv4.tcp_notsent_lowat": "no notsent_lowat",
    "net.ipv4.tcp_fastopen": "no TCP fast open",
    "net.ipv4.tcp_fastopen_key": "no TCP fast open",
    "net.ipv4.tcp_syncookies": "SYN cookies are the stack's business",
    "net.inet.tcp.hostcache.purgenow": "no host cache",
}

# Values that are what the engine always does: name -> accepted values.
_FIXED = {
    "net.ipv4.tcp_reordering": {"3"},
    "net.inet.tcp.blackhole": {"0"},
    "net.inet.tcp.icmp_may_rst": {"1"},
    "net.inet.tcp.rexmit_drop_options": {"0"},
}

_PROFILE_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    # sysctl -> (Profile field, converter from the sysctl's text)
    "net.ipv4.tcp_synack_retries": ("synack_retries", int),
    "net.ipv4.tcp_slow_start_after_idle": ("cwnd_validation", lambda v: int(v) != 0),
    "net.inet.tcp.delacktime": ("delayed_ack_timeout", lambda v: int(v) / 1000.0),
    "net.inet.tcp.rexmit_slop": ("rto_slop", lambda v: int(v) / 1000.0),
    "net.inet.tcp.keepinit": ("connect_timeout", lambda v: int(v) / 1000.0),
    "net.inet.tcp.ecn.maxretries": ("ecn_syn_retries", int),
}

_SYSCTL_ASSIGN = re.compile(r"^([A-Za-z0-9_.]+)=(.*)$")


def split_sysctls(command: str) -> list[tuple[str, str]] | None:
    """``sysctl [-w|-q] a=b c=d`` -> [(a, b), (c, d)]; None if ``command`` is no sysctl call."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or words[0] != "sysctl":
        return None
    pairs = []
    for word in words[1:]:
        if word.startswith("-"):
            continue
        m = _SYSCTL_ASSIGN.match(word)
        if m is None:
            return None
        pairs.append((m.group(1), m.group(2)))
    return pairs


@attrs.define
class HostConfig:
    """The stack-wide settings a script has made so far."""

    profile: str
    options: dict[str, Any] = attrs.field(factory=dict)  # ConnectionOptions fields
    profile_changes: dict[str, Any] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)
    max_sockbuf: int | None = None
    _base: Profile | None = None

    def connection_options(self) -> ConnectionOptions:
        options = ConnectionOptions(profile=self.profile, **self.options)
        options.resolve()
        return options

    @contextlib.contextmanager
    def installed_profile(self) -> Iterator[None]:
        """While the block runs, the profile's name stands for the base profile with this
        script's profile-level settings (the engine looks a profile up by name for each new
        connection); the registry is restored afterwards."""
        self._base = get_profile(self.profile)
        self._install()
        try:
            yield
        finally:
            PROFILES[self.profile] = self._base
            self._base = None

    def _install(self) -> None:
        if self._base is not None:
            PROFILES[self.profile] = attrs.evolve(self._base, **self.profile_changes)

    def sysctl(self, name: str, value: str) -> None:
        """Apply one setting; :class:`Unsupported` if the engine cannot reproduce it."""
        value = value.strip().strip('"')
        if name in _NOT_MODELLED:
            self.notes.append(f"{name}={value} not applied ({_NOT_MODELLED[name]})")
            return
        if name in _FIXED:
            if value not in _FIXED[name]:
                raise Unsupported(f"sysctl {name}={value} is not supported by the engine")
            return
        if name in _PROFILE_FIELDS:
            field, convert = _PROFILE_FIELDS[name]
            try:
                new = convert(value)
            except ValueError:
                raise Unsupported(f"sysctl {name}={value}: bad value") from None
            self._profile_field(field, new)
            return
        try:
            self._option(name, value)
        except ValueError:
            raise Unsupported(f"sysctl {name}={value}: bad value") from None

    def _profile_field(self, field: str, value: object) -> None:
        base = self._base or get_profile(self.profile)
        if getattr(base, field) != value:
            self.profile_changes[field] = value
        else:
            self.profile_changes.pop(field, None)
        self._install()

    def _option(self, name: str, value: str) -> None:
        opts = self.options
        if name == "net.ipv4.tcp_rmem":
            _low, default, high = (int(v) for v in value.split())
            # System defaults are the profile's; ConnectionOptions buffers mean SO_RCVBUF/SNDBUF.
            self._profile_field("receive_buffer", default)
            self._profile_field("receive_buffer_max", high)
        elif name == "net.ipv4.tcp_wmem":
            self._profile_field("send_buffer", int(value.split()[1]))
        elif name == "net.ipv4.tcp_timestamps":
            opts["timestamps"] = int(value) != 0
        elif name == "net.ipv4.tcp_window_scaling":
            opts["window_scaling"] = int(value) != 0
        elif name in ("net.ipv4.tcp_sack", "net.inet.tcp.sack.enable"):
            opts["sack"] = int(value) != 0
        elif name == "net.ipv4.tcp_syn_retries":
            opts["syn_retries"] = int(value)
        elif name == "net.ipv4.tcp_congestion_control":
            opts["congestion"] = value
        elif name == "net.ipv4.tcp_ecn":
            self._ecn(int(value), name)
        elif name == "net.inet.tcp.ecn.enable":
            self._ecn(int(value), name)
        elif name == "net.inet.tcp.rfc1323":
            on = int(value) != 0
            opts["timestamps"] = on
            opts["window_scaling"] = on
        elif name == "net.inet.tcp.recvspace":
            self._profile_field("receive_buffer", self._capped(int(value)))
        elif name == "net.inet.tcp.sendspace":
            self._profile_field("send_buffer", self._capped(int(value)))
        elif name == "kern.ipc.maxsockbuf":
            self.max_sockbuf = int(value)
            self._profile_field("receive_buffer_max", int(value))
        elif name == "net.inet.tcp.rexmit_initial":
            opts["initial_rto"] = int(value) / 1000.0
        elif name == "net.inet.tcp.insecure_rst":
            opts["insecure_rst"] = int(value) != 0
        elif name == "net.inet.tcp.insecure_syn":
            opts["insecure_syn"] = int(value) != 0
        elif name == "net.inet.tcp.drop_synfin":
            policy = SynFinPolicy.DROP if int(value) != 0 else SynFinPolicy.IGNORE_FIN
            self._profile_field("synfin_policy", policy)
        else:
            raise Unsupported(f"unknown sysctl {name}")

    def _ecn(self, mode: int, name: str) -> None:
        if mode == 1:
            self.options["ecn"] = True
        elif mode == 0:
            self.options["ecn"] = False
        elif mode == 2:
            # Linux/FreeBSD 2: answer ECN-setup SYNs, never ask. The engine has one switch, so
            # ECN stays off, which is right for every connection a script does not start with an
            # ECN-setup SYN.
            self.options["ecn"] = False
            self.notes.append(f"{name}=2 treated as 0 (no server-only ECN mode)")
        else:
            raise Unsupported(f"sysctl {name}={mode} is not supported")

    def _capped(self, size: int) -> int:
        if self.max_sockbuf is not None and size > self.max_sockbuf:
            raise Unsupported(f"buffer {size} beyond kern.ipc.maxsockbuf {self.max_sockbuf}")
        return size
