"""Behaviour profiles and connection options.

The SYN option layouts are checked against the option lists of outbound SYN/SYN-ACK lines in the
conformance corpus (the outside judge) when it is present, and against literal lines from it.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import attrs
import pytest

from tcpstack.tcp.config import (
    FREEBSD,
    LINUX,
    PROFILES,
    ConnectionOptions,
    KeepaliveOptions,
    OptionWriter,
    Profile,
    ResolvedOptions,
    get_profile,
)

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"

_KIND = {"mss": 2, "nop": 1, "eol": 0, "wscale": 3, "sackOK": 4, "TS": 8, "sack": 5}


def layout_of(options: str) -> tuple[int, ...]:
    """Option kinds of a packetdrill option list such as ``mss 1460,nop,wscale 6,sackOK``."""
    return tuple(_KIND[item.split()[0]] for item in options.split(","))


def syn_layout_for(profile: Profile, layout: tuple[int, ...]) -> tuple[int, ...]:
    """What ``profile`` sends with the options present in ``layout``."""
    return profile.syn_layout(mss=2 in layout, sack=4 in layout, ts=8 in layout, wscale=3 in layout)


# Outbound SYN / SYN-ACK lines quoted from the corpus (folder, file, option list).
FREEBSD_LINES = [
    ("snd-syn/snd-syn-rtx-max-number-ipv4", "mss 1460,nop,wscale 6,sackOK,TS val 100 ecr 0"),
    ("snd-syn/snd-syn-without-sack-ipv4", "mss 1460,nop,wscale 6,nop,nop,TS val 100 ecr 0"),
    ("snd-syn/snd-syn-without-ws-and-ts-ipv4", "mss 1460,sackOK,eol,eol"),
    ("rcv-data-segments/reordering-12345 SYN-ACK", "mss 1460,sackOK,eol,eol"),
    ("snd-syn/snd-syn-rtx-drop-options-ipv4", "mss 1460"),
]
LINUX_LINES = [
    ("blocking/blocking-connect", "mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 8"),
    ("fast_retransmit/fr-4pkt-sack", "mss 1460,nop,nop,sackOK,nop,wscale 8"),
    ("fast_retransmit/fr-4pkt", "mss 1460,nop,wscale 8"),
    ("ts_recent/fin_tsval", "mss 1460,sackOK,TS val 100 ecr 100"),
    ("validate/validate-established-no-flags", "mss 1460,nop,nop,sackOK"),
    ("user_timeout/user-timeout-probe", "mss 1460"),
]


@pytest.mark.parametrize(("what", "options"), FREEBSD_LINES)
def test_freebsd_syn_layout_matches_corpus_lines(what: str, options: str) -> None:
    layout = layout_of(options)
    assert syn_layout_for(FREEBSD, layout) == layout, what


@pytest.mark.parametrize(("what", "options"), LINUX_LINES)
def test_linux_syn_layout_matches_corpus_lines(what: str, options: str) -> None:
    layout = layout_of(options)
    assert syn_layout_for(LINUX, layout) == layout, what


def test_full_syn_layouts() -> None:
    assert LINUX.syn_option_layout == (2, 4, 8, 1, 3)
    assert FREEBSD.syn_option_layout == (2, 1, 3, 4, 8)


def _outbound_syn_layouts(folder: Path) -> set[tuple[int, ...]]:
    layouts: set[tuple[int, ...]] = set()
    pattern = re.compile(r"^\s*[-+0-9.*~]*\s*>\s*S\S*\s.*<([^>]*)>")
    for path in folder.rglob("*.pkt"):
        for line in path.read_text(errors="replace").splitlines():
            m = pattern.match(line)
            if m and m.group(1) != "...":
                layouts.add(layout_of(m.group(1)))
    return layouts


@pytest.mark.parametrize(("folder", "profile"), [("freebsd", FREEBSD), ("google", LINUX)])
def test_every_outbound_syn_in_the_corpus(folder: str, profile: Profile) -> None:
    if not (CORPUS / folder).is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS / folder}")
    layouts = _outbound_syn_layouts(CORPUS / folder)
    assert len(layouts) >= 3
    for layout in layouts:
        assert syn_layout_for(profile, layout) == layout


@pytest.mark.parametrize("profile", [LINUX, FREEBSD], ids=lambda p: p.name)
def test_every_syn_layout_is_aligned_and_complete(profile: Profile) -> None:
    lengths = {0: 1, 1: 1, 2: 4, 3: 3, 4: 2, 8: 10}
    for mss, sack, ts, wscale in itertools.product((False, True), repeat=4):
        layout = profile.syn_layout(mss=mss, sack=sack, ts=ts, wscale=wscale)
        assert sum(lengths[k] for k in layout) % 4 == 0  # the data offset counts 32-bit words
        assert sum(lengths[k] for k in layout) <= 40
        present = {k for k in layout if k not in (0, 1)}
        assert present == {k for k, on in ((2, mss), (4, sack), (8, ts), (3, wscale)) if on}


def test_data_layouts_and_sack_capacity() -> None:
    for profile in (LINUX, FREEBSD):
        assert profile.data_layout(ts=True, sack=False) == (1, 1, 8)
        assert profile.data_layout(ts=True, sack=True) == (1, 1, 8, 1, 1, 5)
        assert profile.data_layout(ts=False, sack=True) == (1, 1, 5)
        assert profile.data_layout(ts=False, sack=False) == ()
        assert profile.max_sack_blocks(ts=True) == 3  # RFC 2018 section 3
        assert profile.max_sack_blocks(ts=False) == 4


def test_profile_defaults() -> None:
    assert (LINUX.initial_window_segments, FREEBSD.initial_window_segments) == (10, 10)
    assert (LINUX.min_rto, FREEBSD.min_rto) == (0.2, 0.03)
    assert LINUX.initial_rto == FREEBSD.initial_rto == 1.0
    assert (LINUX.max_rto, FREEBSD.max_rto) == (120.0, 64.0)
    assert (LINUX.delayed_ack_timeout, FREEBSD.delayed_ack_timeout) == (0.04, 0.1)
    assert (LINUX.quickack_segments, FREEBSD.quickack_segments) == (16, 0)
    assert (LINUX.receive_buffer, FREEBSD.receive_buffer) == (131072, 65536)
    assert (LINUX.send_buffer, FREEBSD.send_buffer) == (16384, 32768)
    assert LINUX.time_wait == FREEBSD.time_wait == 60.0
    assert (LINUX.syn_retries, LINUX.synack_retries, LINUX.data_retries) == (6, 5, 15)
    assert (FREEBSD.syn_retries, FREEBSD.synack_retries, FREEBSD.data_retries) == (12, 3, 12)
    assert LINUX.rst_on_close_with_unread_data and not FREEBSD.rst_on_close_with_unread_data
    assert (LINUX.rto_slop, FREEBSD.rto_slop) == (0.0, 0.2)
    assert LINUX.dup_ack_threshold == FREEBSD.dup_ack_threshold == 3


def test_profiles_are_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        LINUX.min_rto = 1.0  # type: ignore[misc]


def test_profile_rejects_inconsistent_layout() -> None:
    with pytest.raises(ValueError, match="disagrees"):
        attrs.evolve(LINUX, syn_option_layout=(2, 1, 3, 4, 8))
    with pytest.raises(ValueError, match="min_rto"):
        attrs.evolve(LINUX, min_rto=200.0)
    with pytest.raises(ValueError, match="initial_rto must be > 0"):
        attrs.evolve(LINUX, initial_rto=0.0)
    custom = attrs.evolve(LINUX, name="linux-slow", option_writer=OptionWriter.FREEBSD,
                          syn_option_layout=(2, 1, 3, 4, 8))
    assert custom.syn_layout(mss=True, sack=True, ts=False, wscale=False) == (2, 4, 0, 0)


def test_get_profile() -> None:
    assert get_profile("linux") is LINUX
    assert get_profile("freebsd") is FREEBSD
    assert set(PROFILES) == {"linux", "freebsd"}
    with pytest.raises(ValueError, match="unknown TCP profile 'windows'.*freebsd, linux"):
        get_profile("windows")


def test_resolve_defaults_from_linux() -> None:
    r = ConnectionOptions().resolve()
    assert isinstance(r, ResolvedOptions)
    assert r.profile == "linux" and r.profile_obj is LINUX
    assert r.mss == 1460 and r.mtu == 1500
    assert (r.send_buffer, r.receive_buffer, r.max_ooo_bytes) == (16384, 131072, 131072)
    assert (r.time_wait, r.syn_retries, r.initial_rto, r.min_rto) == (60.0, 6, 1.0, 0.2)
    assert r.max_rto == 120.0
    assert r.user_timeout is None and r.keepalive == KeepaliveOptions()
    assert r.syn_layout() == (2, 4, 8, 1, 3)


def test_resolve_freebsd_and_overrides() -> None:
    r = ConnectionOptions(
        profile="freebsd", mtu=9000, receive_buffer=4096, time_wait=0, syn_retries=2,
        min_rto=0.5, initial_rto=3, user_timeout=30, timestamps=False,
    ).resolve()
    assert r.profile_obj is FREEBSD
    assert r.mss == 8960
    assert (r.send_buffer, r.receive_buffer, r.max_ooo_bytes) == (32768, 4096, 4096)
    assert (r.time_wait, r.syn_retries, r.min_rto, r.initial_rto) == (0.0, 2, 0.5, 3.0)
    assert isinstance(r.initial_rto, float) and r.user_timeout == 30.0
    assert r.syn_layout() == (2, 1, 3, 4, 0, 0)  # mss,nop,wscale,sackOK,eol,eol


def test_mss_follows_mtu_and_user_mss_only_lowers_it() -> None:
    assert ConnectionOptions(mtu=72).resolve().mss == 32  # snd-syn-mss-inherited-from-mtu-72
    assert ConnectionOptions(mtu=65535).resolve().mss == 65495
    assert ConnectionOptions(mss=1000).resolve().mss == 1000
    assert ConnectionOptions(mss=9000, mtu=1500).resolve().mss == 1460


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ConnectionOptions(profile="solaris"), "unknown TCP profile 'solaris'"),
        (ConnectionOptions(mss=87), "mss must be in 88..65495"),
        (ConnectionOptions(mss=65496), "mss must be in 88..65495"),
        (ConnectionOptions(mtu=67), "mtu must be in 68..65535"),
        (ConnectionOptions(mtu=70000), "mtu must be in 68..65535"),
        (ConnectionOptions(send_buffer=0), "send_buffer must be in 1.."),
        (ConnectionOptions(receive_buffer=-5), "receive_buffer must be in 1.."),
        (ConnectionOptions(receive_buffer=1 << 31), "receive_buffer must be in 1.."),
        (ConnectionOptions(congestion=""), "congestion must name"),
        (ConnectionOptions(user_timeout=0), "user_timeout must be > 0"),
        (ConnectionOptions(time_wait=-1), "time_wait must be in"),
        (ConnectionOptions(syn_retries=0), "syn_retries must be in 1..127"),
        (ConnectionOptions(syn_retries=128), "syn_retries must be in 1..127"),
        (ConnectionOptions(max_ooo_bytes=0), "max_ooo_bytes must be in"),
        (ConnectionOptions(max_ooo_ranges=0), "max_ooo_ranges must be in"),
        (ConnectionOptions(min_rto=0), "min_rto must be in"),
        (ConnectionOptions(initial_rto=121), r"initial_rto must be in \(0, 120\]"),
        (ConnectionOptions(profile="freebsd", initial_rto=100), r"initial_rto must be in \(0, 64\]"),
        (ConnectionOptions(keepalive=KeepaliveOptions(idle=0)), "keepalive.idle must be in"),
        (ConnectionOptions(keepalive=KeepaliveOptions(interval=40000)), "keepalive.interval"),
        (ConnectionOptions(keepalive=KeepaliveOptions(count=0)), "keepalive.count must be in 1..127"),
    ],
)
def test_resolve_rejects_out_of_range(options: ConnectionOptions, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options.resolve()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mss": "1460"},
        {"mss": 1460.0},
        {"mtu": True},
        {"nodelay": 1},
        {"profile": None},
        {"keepalive": True},
        {"time_wait": "60"},
        {"congestion": 3},
    ],
)
def test_wrong_types_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        ConnectionOptions(**kwargs)  # type: ignore[arg-type]


def test_keepalive_defaults_are_rfc_1122() -> None:
    k = KeepaliveOptions()
    assert (k.enabled, k.idle, k.interval, k.count) == (False, 7200.0, 75.0, 9)
    with pytest.raises(TypeError):
        KeepaliveOptions(count=1.5)  # type: ignore[arg-type]
