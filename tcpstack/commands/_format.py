"""Text forms of TCP state shared by ``tcpstack ss -i`` and ``tcpstack get --info``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_info", "format_rate"]

_OPT_TIMESTAMPS = 1
_OPT_SACK = 2
_OPT_WSCALE = 4
_OPT_ECN = 8


def format_rate(bytes_per_second: float) -> str:
    """A rate in bit/s with ss's units (``12.3Mbps``)."""
    bits = bytes_per_second * 8
    for unit, scale in (("Gbps", 1e9), ("Mbps", 1e6), ("Kbps", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.1f}{unit}"
    return f"{bits:.0f}bps"


def format_info(info: Mapping[str, Any]) -> str:
    """One ``ss -ti``-style line from a TCPInfo dict (``TCPInfo.to_dict()``; times in us)."""
    opts = int(info.get("options", 0))
    parts: list[str] = []
    if info.get("congestion"):
        parts.append(str(info["congestion"]))
    if opts & _OPT_WSCALE:
        parts.append(f"wscale:{info['snd_wscale']},{info['rcv_wscale']}")
    if opts & _OPT_SACK:
        parts.append("sack")
    if opts & _OPT_TIMESTAMPS:
        parts.append("ts")
    if opts & _OPT_ECN:
        parts.append("ecn")
    parts += [
        f"rto:{info['rto'] / 1000:g}",
        f"rtt:{info['rtt'] / 1000:g}/{info['rttvar'] / 1000:g}",
        f"mss:{info['snd_mss']}",
        f"pmtu:{info['pmtu']}",
        f"rcvmss:{info['rcv_mss']}",
        f"advmss:{info['advmss']}",
        f"cwnd:{info['snd_cwnd']}",
    ]
    if info["snd_ssthresh"] < 0x7FFFFFFF:
        parts.append(f"ssthresh:{info['snd_ssthresh']}")
    parts += [
        f"bytes_sent:{info['bytes_sent']}",
        f"bytes_retrans:{info['bytes_retrans']}",
        f"bytes_acked:{info['bytes_acked']}",
        f"bytes_received:{info['bytes_received']}",
        f"segs_out:{info['segs_out']}",
        f"segs_in:{info['segs_in']}",
        f"data_segs_out:{info['data_segs_out']}",
        f"data_segs_in:{info['data_segs_in']}",
    ]
    if info["delivery_rate"]:
        limited = " app_limited" if info["delivery_rate_app_limited"] else ""
        parts.append(f"delivery_rate {format_rate(info['delivery_rate'])}{limited}")
    parts.append(f"retrans:{info['retrans']}/{info['total_retrans']}")
    if info["lost"]:
        parts.append(f"lost:{info['lost']}")
    if info["sacked"]:
        parts.append(f"sacked:{info['sacked']}")
    if info["dsack_dups"]:
        parts.append(f"dsack_dups:{info['dsack_dups']}")
    if info["reord_seen"]:
        parts.append(f"reord_seen:{info['reord_seen']}")
    parts += [f"rcv_space:{info['rcv_space']}", f"rcv_ssthresh:{info['rcv_ssthresh']}"]
    if info["min_rtt"]:
        parts.append(f"minrtt:{info['min_rtt'] / 1000:g}")
    parts.append(f"snd_wnd:{info['snd_wnd']}")
    return " ".join(parts)
