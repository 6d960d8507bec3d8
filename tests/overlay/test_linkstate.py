"""The link-state database: sequence numbers, ageing, bounds, origination rate limit, graph."""

from __future__ import annotations

import math
import random
from typing import cast

import networkx as nx
import pytest

from overlay import linkstate, messages
from overlay.config import RoutingSettings
from overlay.linkstate import (
    DEFAULT_MAX_LINKS,
    LinkStateDatabase,
    Received,
    Rejection,
    significant_change,
    validate_lsa,
)
from overlay.messages import FrameReader, FrameWriter, LinkAdvert, Lsa

S = RoutingSettings(lsa_interval=1.0, lsa_refresh=10.0, lsa_max_age=40.0, change_threshold=0.1)


def adv(
    nbr: str, latency: float = 0.010, loss: float = 0.0, tp: float = 1e6, up: bool = True
) -> LinkAdvert:
    return LinkAdvert(neighbour=nbr, latency=latency, loss=loss, throughput=tp, up=up)


def lsa(origin: str, seq: int, *links: LinkAdvert) -> Lsa:
    return Lsa(origin=origin, seq=seq, links=tuple(links))


# -- sequence numbers -----------------------------------------------------------------------


def test_originate_increments_seq_installs_own_and_bumps_version() -> None:
    db = LinkStateDatabase("a", S)
    v0 = db.version
    first = db.originate([adv("b")], 0.0)
    second = db.originate([adv("b"), adv("c")], 1.0)
    assert (first.origin, first.seq) == ("a", 1)
    assert second.seq == 2 and db.own == second and db.get("a") == second
    assert db.version == v0 + 2
    assert db.stats.originated == 2


def test_seq_start_is_where_numbering_continues() -> None:
    db = LinkStateDatabase("a", S, seq_start=1000)
    assert db.originate([], 0.0).seq == 1001


def test_newer_installs_equal_is_duplicate_older_is_stale() -> None:
    db = LinkStateDatabase("a", S)
    assert db.receive_lsa(lsa("b", 5, adv("a")), 0.0) is Received.INSTALLED
    v = db.version
    assert db.receive_lsa(lsa("b", 5, adv("a", latency=0.5)), 1.0) is Received.DUPLICATE
    assert db.receive_lsa(lsa("b", 4, adv("a", latency=0.5)), 1.0) is Received.STALE
    assert db.version == v  # neither changed anything
    assert db.get("b") == lsa("b", 5, adv("a"))  # what the caller answers a stale sender with
    assert db.receive(lsa("b", 6, adv("a", latency=0.02)), 2.0) is True
    assert db.get("b") == lsa("b", 6, adv("a", latency=0.02))
    assert db.receive(lsa("b", 6, adv("a", latency=0.02)), 2.0) is False
    assert (db.stats.installed, db.stats.duplicates, db.stats.stale) == (2, 2, 1)


def test_own_lsa_from_a_previous_life_makes_us_jump_past_it() -> None:
    db = LinkStateDatabase("a", S)
    db.originate([adv("b")], 0.0)  # seq 1
    # The network still holds seq 57 from before our restart.
    assert db.receive_lsa(lsa("a", 57, adv("z")), 1.0) is Received.SELF_NEWER
    assert db.own is not None and db.own.seq == 1  # not installed: it is not our state
    assert db.origination_due([adv("b")], 1.0) == 1.0  # re-originate at once
    assert db.originate([adv("b")], 1.0).seq == 58


def test_own_lsa_same_seq_other_contents_also_forces_a_jump() -> None:
    db = LinkStateDatabase("a", S)
    mine = db.originate([adv("b")], 0.0)
    assert db.receive_lsa(mine, 0.5) is Received.DUPLICATE
    assert db.receive_lsa(lsa("a", 1, adv("c")), 0.5) is Received.SELF_NEWER
    assert db.originate([adv("b")], 0.5).seq == 2
    assert db.receive_lsa(lsa("a", 1, adv("c")), 0.6) is Received.STALE


# -- validation and bounds ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        lsa("", 1),
        lsa("b", -1),
        lsa("b", 1 << 64),
        lsa("b", 1, adv("b")),  # link to itself
        lsa("b", 1, adv("c"), adv("c")),  # duplicate neighbour
        lsa("b", 1, adv("")),
        lsa("b", 1, adv("c", latency=math.nan)),
        lsa("b", 1, adv("c", latency=-0.001)),
        lsa("b", 1, adv("c", latency=math.inf)),
        lsa("b", 1, adv("c", loss=1.5)),
        lsa("b", 1, adv("c", loss=-0.1)),
        lsa("b", 1, adv("c", tp=-1.0)),
        lsa("b", 1, adv("c", tp=math.nan)),
        lsa("x" * 65, 1),
    ],
)
def test_invalid_lsa_is_rejected_counted_and_changes_nothing(bad: Lsa) -> None:
    db = LinkStateDatabase("a", S)
    v = db.version
    assert db.receive_lsa(bad, 0.0) is Received.REJECTED
    assert len(db) == 0 and db.version == v
    assert db.stats.rejected == {Rejection.INVALID: 1}


def test_at_most_max_links_per_lsa() -> None:
    db = LinkStateDatabase("a", S, max_links=2)
    assert not db.receive(lsa("b", 1, adv("c"), adv("d"), adv("e")), 0.0)
    assert db.stats.rejected == {Rejection.TOO_MANY_LINKS: 1}
    assert db.receive(lsa("b", 1, adv("c"), adv("d")), 0.0)
    with pytest.raises(ValueError, match="too_many_links"):
        db.originate([adv("b"), adv("c"), adv("d")], 0.0)
    assert db.own is None and db.seq == 0


def test_at_most_max_lsas_origins_but_known_ones_still_update() -> None:
    db = LinkStateDatabase("a", S, max_lsas=3)
    db.originate([], 0.0)
    assert db.receive(lsa("b", 1), 0.0) and db.receive(lsa("c", 1), 0.0)
    assert not db.receive(lsa("d", 1), 0.0)
    assert db.stats.rejected == {Rejection.DATABASE_FULL: 1} and "d" not in db
    assert db.receive(lsa("c", 2), 1.0)  # an update needs no new slot
    assert len(db) == 3


def test_validate_lsa_accepts_a_sane_lsa() -> None:
    assert validate_lsa(lsa("b", 0, adv("c", latency=0.0, loss=1.0, tp=0.0, up=False))) is None


def test_constructor_rejects_bad_arguments() -> None:
    for kwargs in ({"max_lsas": 0}, {"max_links": 0}, {"seq_start": -1}):
        with pytest.raises(ValueError):
            LinkStateDatabase("a", S, **kwargs)
    with pytest.raises(ValueError):
        LinkStateDatabase("", S)


# -- ageing -----------------------------------------------------------------------------------


def test_expire_purges_by_local_age_but_never_our_own() -> None:
    db = LinkStateDatabase("a", S)
    db.originate([adv("b")], 0.0)
    db.receive(lsa("b", 1, adv("a")), 0.0)
    db.receive(lsa("c", 1), 5.0)
    assert db.expire(40.0) == []  # age 40 is not older than lsa_max_age
    v = db.version
    assert db.expire(40.5) == ["b"]
    assert db.version == v + 1 and "b" not in db and "a" in db and "c" in db
    assert db.age("c", 40.5) == pytest.approx(35.5)
    assert db.expire(45.5) == ["c"]
    assert db.expire(1000.0) == []  # our own LSA stays: we refresh it, nobody else does
    assert db.stats.purged == 2


def test_refreshed_lsa_does_not_age_out() -> None:
    db = LinkStateDatabase("a", S)
    for seq, t in enumerate(range(0, 100, 10), start=1):  # the origin refreshes every 10 s
        db.receive(lsa("b", seq), float(t))
        assert db.expire(float(t) + 9.9) == []
    assert "b" in db


def test_purged_lsa_cannot_be_resurrected_by_an_old_copy() -> None:
    db = LinkStateDatabase("a", S)
    db.receive(lsa("b", 7), 0.0)
    assert db.expire(41.0) == ["b"]
    # A neighbour that installed seq 7 later still floods it to us: refused.
    assert db.receive_lsa(lsa("b", 7), 42.0) is Received.REJECTED
    assert db.receive_lsa(lsa("b", 6), 42.0) is Received.REJECTED
    assert db.stats.rejected == {Rejection.PURGED: 2}
    # The origin itself, alive again, sends a newer one: accepted.
    assert db.receive_lsa(lsa("b", 8), 43.0) is Received.INSTALLED
    # Tombstones age out too: after another lsa_max_age any seq is welcome again.
    db2 = LinkStateDatabase("a", S)
    db2.receive(lsa("b", 7), 0.0)
    db2.expire(41.0)
    db2.expire(82.0)
    assert db2.receive(lsa("b", 1), 82.0)


# -- origination rate limit -------------------------------------------------------------------


def test_first_lsa_goes_out_at_once_then_unchanged_waits_for_refresh() -> None:
    db = LinkStateDatabase("a", S)
    links = [adv("b"), adv("c")]
    assert db.maybe_originate(links, 0.0) is not None
    assert db.maybe_originate(links, 0.5) is None
    assert db.origination_due(links, 0.5) == pytest.approx(10.0)  # lsa_refresh
    assert db.maybe_originate(links, 9.99) is None
    refreshed = db.maybe_originate(links, 10.0)
    assert refreshed is not None and refreshed.seq == 2


def test_the_first_refresh_comes_refresh_advance_early_then_every_lsa_refresh() -> None:
    """Nodes started together get different refresh phases (from their refresh_advance), so
    their refreshes do not all flood at once; the period stays lsa_refresh."""
    db = LinkStateDatabase("a", S, refresh_advance=3.0)
    links = [adv("b")]
    db.maybe_originate(links, 0.0)
    db.maybe_originate([adv("b"), adv("c")], 1.0)  # news: the timer restarts, still advanced
    assert db.origination_due([adv("b"), adv("c")], 1.5) == pytest.approx(8.0)
    assert db.maybe_originate([adv("b"), adv("c")], 7.99) is None
    assert db.maybe_originate([adv("b"), adv("c")], 8.0) is not None  # the first refresh
    assert db.origination_due([adv("b"), adv("c")], 8.5) == pytest.approx(18.0)
    assert db.maybe_originate([adv("b"), adv("c")], 18.0) is not None
    assert db.origination_due([adv("b"), adv("c")], 18.5) == pytest.approx(28.0)
    for bad in (-1.0, 10.0):
        with pytest.raises(ValueError, match="refresh_advance"):
            LinkStateDatabase("a", S, refresh_advance=bad)


def test_metric_change_below_threshold_is_not_originated() -> None:
    db = LinkStateDatabase("a", S)
    db.maybe_originate([adv("b", latency=0.100, loss=0.05, tp=1e6)], 0.0)
    for t in (1.0, 2.0, 5.0):
        # 9 % moves on every metric: below change_threshold (10 %).
        assert db.maybe_originate([adv("b", latency=0.109, loss=0.0545, tp=1.09e6)], t) is None


@pytest.mark.parametrize(
    "changed",
    [adv("b", latency=0.115), adv("b", loss=0.05), adv("b", tp=0.8e6)],
    ids=["latency", "loss", "throughput"],
)
def test_significant_change_waits_for_lsa_interval(changed: LinkAdvert) -> None:
    db = LinkStateDatabase("a", S)
    db.maybe_originate([adv("b", latency=0.100, loss=0.0, tp=1e6)], 0.0)
    assert db.maybe_originate([changed], 0.4) is None
    assert db.origination_due([changed], 0.4) == pytest.approx(1.0)  # lsa_interval after 0.0
    out = db.maybe_originate([changed], 1.0)
    assert out is not None and out.links == (changed,)


def test_tiny_absolute_moves_are_noise_even_if_relatively_large() -> None:
    db = LinkStateDatabase("a", S)
    db.maybe_originate([adv("b", latency=0.005, loss=0.001, tp=20_000.0)], 0.0)
    # +38 % latency (1.9 ms), +390 % loss (0.0039), +45 % throughput (9 kB/s): every move is
    # relatively large but below its absolute floor (2 ms, 0.005, 10 kB/s).
    assert db.maybe_originate([adv("b", latency=0.0069, loss=0.0049, tp=29_000.0)], 2.0) is None
    # Just past each floor it is significant.
    for changed in (adv("b", latency=0.0071, loss=0.001, tp=20_000.0),
                    adv("b", latency=0.005, loss=0.0061, tp=20_000.0),
                    adv("b", latency=0.005, loss=0.001, tp=30_100.0)):
        db_floor = LinkStateDatabase("a", S)
        db_floor.maybe_originate([adv("b", latency=0.005, loss=0.001, tp=20_000.0)], 0.0)
        assert db_floor.maybe_originate([changed], 2.0) is not None, changed
    # Above the floors the relative threshold rules: 10 % of 100 ms is 10 ms.
    db2 = LinkStateDatabase("a", S)
    db2.maybe_originate([adv("b", latency=0.100)], 0.0)
    assert db2.maybe_originate([adv("b", latency=0.109)], 2.0) is None
    assert db2.maybe_originate([adv("b", latency=0.111)], 2.0) is not None


def test_bad_news_is_originated_at_once_good_news_is_rate_limited() -> None:
    db = LinkStateDatabase("a", S)
    db.maybe_originate([adv("b"), adv("c")], 0.0)
    db.maybe_originate([adv("b", latency=0.5), adv("c")], 1.0)  # a change, at lsa_interval
    down = db.maybe_originate([adv("b", latency=0.5, up=False), adv("c")], 1.1)
    assert down is not None and down.seq == 3  # 0.1 s after the last one: not rate-limited
    gone = db.maybe_originate([adv("b", latency=0.5, up=False)], 1.2)
    assert gone is not None and [a.neighbour for a in gone.links] == ["b"]  # c vanished
    # Coming back up is good news: it waits for lsa_interval since the last origination.
    back = [adv("b", latency=0.5), adv("c")]
    assert db.maybe_originate(back, 1.5) is None
    assert db.origination_due(back, 1.5) == pytest.approx(2.2)
    assert db.maybe_originate(back, 2.2) is not None


def test_a_flapping_link_is_bounded_to_two_lsas_per_interval() -> None:
    db = LinkStateDatabase("a", S)
    sent = 0
    for i in range(1000):  # 100 s of a link flapping every 0.1 s, checked every 0.1 s
        t = i * 0.1
        if db.maybe_originate([adv("b", up=i % 2 == 0), adv("c")], t) is not None:
            sent += 1
    assert sent <= 2 * 100 / S.lsa_interval + 1
    assert sent >= 100 / S.lsa_interval - 1  # and it is not simply silenced


# -- graph ------------------------------------------------------------------------------------


def test_graph_has_only_two_way_up_edges_with_the_senders_attributes() -> None:
    db = LinkStateDatabase("a", S)
    db.originate([adv("b", latency=0.010, loss=0.01, tp=5e6), adv("c"), adv("d")], 0.0)
    db.receive(lsa("b", 1, adv("a", latency=0.012, loss=0.02, tp=4e6), adv("d", up=False)), 0.0)
    db.receive(lsa("c", 1, adv("d")), 0.0)  # c does not list a: a-c is one-way
    db.receive(lsa("d", 1, adv("c"), adv("b"), adv("a", up=False)), 0.0)
    g = db.graph()
    assert set(g.nodes) == {"a", "b", "c", "d"}
    assert set(g.edges) == {("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")}
    assert g.edges["a", "b"] == {"latency": 0.010, "loss": 0.01, "throughput": 5e6, "up": True}
    assert g.edges["b", "a"] == {"latency": 0.012, "loss": 0.02, "throughput": 4e6, "up": True}
    assert g.graph["version"] == db.version


def _rebuilt(db: LinkStateDatabase) -> nx.DiGraph:
    """What a from-scratch build gives for the database's current contents."""
    fresh = LinkStateDatabase(db.self_id, S)
    for x in db.lsas():
        if x.origin != db.self_id:
            fresh.receive(x, 0.0)
    if db.own is not None:
        fresh.originate(db.own.links, 0.0)
    return fresh.graph()


def test_graph_is_kept_up_to_date_in_place_and_matches_a_rebuild() -> None:
    db = LinkStateDatabase("a", S)
    db.originate([adv("b"), adv("c")], 0.0)
    g = db.graph()
    assert db.graph() is g and g.number_of_edges() == 0
    db.receive(lsa("b", 1, adv("a", latency=0.02), adv("c")), 0.0)
    assert g.graph["version"] == db.version
    assert set(g.edges) == {("a", "b"), ("b", "a")}
    assert g.edges["b", "a"]["latency"] == 0.02
    db.receive(lsa("c", 1, adv("a"), adv("b")), 1.0)
    assert set(g.edges) == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")}
    db.receive(lsa("b", 2, adv("a", latency=0.03), adv("c", up=False)), 2.0)  # b-c half down
    assert set(g.edges) == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
    assert g.edges["b", "a"]["latency"] == 0.03
    db.originate([adv("c")], 3.0)  # we drop b
    assert set(g.edges) == {("a", "c"), ("c", "a")} and "b" in g
    assert db.expire(42.5) == ["b", "c"]  # installed at 2.0 and 1.0
    assert set(g.nodes) == {"a"} and g.number_of_edges() == 0
    assert g.graph["version"] == db.version


def test_incremental_graph_equals_full_rebuild_under_random_churn() -> None:
    rng = random.Random(7)
    names = [f"n{i}" for i in range(12)]
    db = LinkStateDatabase("n0", S)
    db.graph()  # built now, so everything after is applied incrementally
    seqs = dict.fromkeys(names, 0)
    for step in range(300):
        origin = rng.choice(names)
        links = [
            adv(n, latency=rng.choice([0.01, 0.02]), up=rng.random() < 0.8)
            for n in rng.sample([n for n in names if n != origin], rng.randint(0, 4))
        ]
        if origin == "n0":
            db.originate(links, float(step))
        else:
            seqs[origin] += 1
            db.receive(lsa(origin, seqs[origin], *links), float(step))
        db.expire(float(step))
        g, ref = db.graph(), _rebuilt(db)
        assert set(g.nodes) == set(ref.nodes)
        assert {e: g.edges[e] for e in g.edges} == {e: ref.edges[e] for e in ref.edges}


def test_lsas_lists_every_stored_lsa_for_database_sync() -> None:
    db = LinkStateDatabase("a", S)
    mine = db.originate([adv("b")], 0.0)
    theirs = lsa("b", 3, adv("a"))
    db.receive(theirs, 0.0)
    assert sorted(db.lsas(), key=lambda x: x.origin) == [mine, theirs]


def test_significant_change_per_link() -> None:
    base = adv("b", latency=0.020, loss=0.001, tp=1e6)
    assert significant_change(None, base, 0.1)  # a new link
    assert significant_change(base, adv("b", latency=0.020, up=False), 0.1)  # went down
    assert significant_change(adv("b", up=False), base, 0.1)  # came up
    assert not significant_change(adv("b", latency=0.5, up=False), adv("b", up=False), 0.1)
    # 20 ms: 10 % is 2 ms, the floor is 2 ms: a 2.5 ms move counts, 1.9 ms does not.
    assert significant_change(base, adv("b", latency=0.0225, loss=0.001, tp=1e6), 0.1)
    assert not significant_change(base, adv("b", latency=0.0219, loss=0.001, tp=1e6), 0.1)


def test_flooded_copies_decode_to_one_object_that_is_a_duplicate_without_revalidation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every neighbour forwards the same LSA body: it decodes once, and the copies after the
    first are recognised as the installed object itself, without validating it again."""
    key = b"k" * 32
    original = lsa("b", 3, adv("a"), adv("c", latency=0.02))
    reader = FrameReader(key)
    copies = [
        cast(Lsa, reader.feed(FrameWriter(key, sender).encode(original))[0][1])
        for sender in ("c", "d", "e")
    ]
    assert all(copy == original for copy in copies)
    assert copies[1] is copies[0] and copies[2] is copies[0]
    other = reader.feed(FrameWriter(key, "c").encode(lsa("b", 4, adv("a"))))[0][1]
    assert other == lsa("b", 4, adv("a")) and other is not copies[0]

    validated: list[Lsa] = []

    def counting(lsa: Lsa, max_links: int = DEFAULT_MAX_LINKS) -> Rejection | None:
        validated.append(lsa)
        return validate_lsa(lsa, max_links)

    monkeypatch.setattr(linkstate, "validate_lsa", counting)
    db = LinkStateDatabase("a", S)
    assert db.receive_lsa(copies[0], 0.0) is Received.INSTALLED
    assert db.receive_lsa(copies[1], 0.1) is Received.DUPLICATE
    assert validated == [copies[0]]
    # An equal copy that is another object (not from the same body) is checked as before.
    assert db.receive_lsa(lsa("b", 3, adv("a"), adv("c", latency=0.02)), 0.2) is (
        Received.DUPLICATE
    )
    assert len(validated) == 2
    assert db.stats.duplicates == 2


def test_sending_an_lsa_many_times_encodes_its_body_once() -> None:
    key = b"k" * 32
    msg = lsa("b", 3, adv("a"))
    first = FrameWriter(key, "a").encode(msg)
    again = FrameWriter(key, "z").encode(msg)
    head = len(first) - messages.MAC_SIZE
    body = first[7 + 1 + 8 : head]
    assert again[7 + 1 + 8 : len(again) - messages.MAC_SIZE] == body
    assert messages._LSA_BODIES[id(msg)] == (msg, body)
    # The cached body is the one a fresh encoding gives.
    assert messages._encode_body(lsa("b", 3, adv("a"))) == (messages.MsgType.LSA, body)
