"""Which Linux capabilities the process holds, and one clear error when one is missing.

Links onto a host's real network need privileges: a raw IPv4 socket and a packet capture need
``CAP_NET_RAW``; the firewall guard (nftables, ``net.ipv4.ip_local_reserved_ports``) needs
``CAP_NET_ADMIN``. Checking up front, from the effective set in ``/proc/self/status``, turns what
would be an ``EPERM`` halfway through setting up (a table installed, the capture refused) into one
line naming the capability, before anything is installed.

The firewall guard runs ``nft`` and ``sysctl`` as child processes. Root's children keep root's
capabilities; a non-root process's children keep only its *ambient* capabilities, so a non-root
process that runs the guard needs ``CAP_NET_ADMIN`` in its ambient set as well.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable

__all__ = [
    "Capability",
    "PrivilegeError",
    "capability_sets",
    "missing_capabilities",
    "require",
]


class Capability(enum.IntEnum):
    """Capability numbers from ``linux/capability.h`` (the bit index in ``CapEff``)."""

    CAP_NET_ADMIN = 12
    CAP_NET_RAW = 13
    CAP_SYS_ADMIN = 21


class PrivilegeError(PermissionError):
    """A capability the operation needs is missing; the message names it and what needs it."""


def _parse_mask(value: str) -> int:
    try:
        return int(value.strip(), 16)
    except ValueError as exc:
        raise ValueError(f"not a capability mask: {value!r}") from exc


def capability_sets(status_text: str | None = None) -> dict[str, int]:
    """The ``CapInh``/``CapPrm``/``CapEff``/``CapBnd``/``CapAmb`` masks of this process.

    ``status_text`` is the content of a ``/proc/<pid>/status`` file (read from ``/proc/self``
    when None); a set the kernel does not report is absent from the result.
    """
    if status_text is None:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            status_text = f.read()
    sets: dict[str, int] = {}
    for line in status_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.startswith("Cap"):
            sets[key] = _parse_mask(value)
    if "CapEff" not in sets:
        raise ValueError("no CapEff line in the process status")
    return sets


def missing_capabilities(
    needed: Iterable[Capability], *, ambient: bool = False, status_text: str | None = None,
    euid: int | None = None,
) -> list[Capability]:
    """The capabilities of ``needed`` this process lacks in its effective set.

    With ``ambient`` a capability counts only if child processes inherit it too: root's children
    do (euid 0 gets the full set at execve); other processes need it in ``CapAmb``.
    """
    sets = capability_sets(status_text)
    effective = sets["CapEff"]
    inherited = sets.get("CapAmb", 0)
    is_root = (os.geteuid() if euid is None else euid) == 0
    missing = []
    for cap in needed:
        if not effective >> cap & 1:
            missing.append(cap)
        elif ambient and not is_root and not inherited >> cap & 1:
            missing.append(cap)
    return missing


def require(
    needs: dict[Capability, str], *, ambient: Iterable[Capability] = (),
    status_text: str | None = None, euid: int | None = None,
) -> None:
    """Raise :class:`PrivilegeError` naming the first missing capability and what needs it.

    ``needs`` maps each capability to what it is for (it reads "... needs CAP_NET_RAW for
    <purpose>"); capabilities in ``ambient`` must also reach child processes.
    """
    ambient_set = set(ambient)
    for cap, purpose in needs.items():
        if missing_capabilities([cap], status_text=status_text, euid=euid):
            raise PrivilegeError(
                f"missing capability {cap.name}: needed for {purpose}; run as root or grant it "
                f"(e.g. setpriv --ambient-caps +{cap.name.lower()[4:]} ...)"
            )
        if cap in ambient_set and missing_capabilities(
            [cap], ambient=True, status_text=status_text, euid=euid
        ):
            raise PrivilegeError(
                f"missing capability {cap.name} in the ambient set: needed by the child processes "
                f"for {purpose}; run as root or add it to the ambient set"
            )
