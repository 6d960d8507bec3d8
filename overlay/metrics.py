r"""Link quality from the TCP state of a peer link.

A :class:`LinkEstimator` per neighbour is fed :class:`~tcpstack.tcp.info.TCPInfo` snapshots of
the link's stream (``on_info``), RTTs of overlay probes on idle links (``on_probe_rtt``), frame
arrivals (``on_frame``) and connection up/down events (``set_up``); ``quality(now)`` turns them
into a :class:`LinkQuality` and ``advert(now)`` into the :class:`~overlay.messages.LinkAdvert`
flooded in our LSA. Nothing here reads a clock: every call takes ``now`` (s).
TCPInfo is in Linux units; below, ``rtt``, ``min_rtt`` and ``rto`` are converted from us to s,
``last_*_recv`` from ms to s; ``snd_mss`` and ``snd_wnd`` are bytes, ``delivery_rate`` B/s.

Latency (s)
    Two estimators of the link's RTT, and a rule for which one a link advertises:

    * ``srtt_tcp``: TCP's smoothed RTT (``tcpi_rtt``, RFC 6298).
    * ``srtt_probe``: overlay probe RTTs ``r`` (a Probe out, its ProbeReply back, answered at
      once by the peer), smoothed the same way, ``srtt_probe <- 7/8 srtt_probe + 1/8 r``
      (first sample: ``srtt_probe = r``).

    Rule: a link is *busy* while it carried application traffic (Data or DataAck, either way,
    reported with :meth:`LinkEstimator.on_app`) within the last ``idle_after`` s; otherwise it
    is *idle*. ::

        latency = srtt_tcp      if busy and srtt_tcp is known
                  srtt_probe    else, if a probe RTT is known
                  srtt_tcp      else, if known
                  inf           otherwise

    Why not TCP's srtt on an idle link: there the only segments are the probes, one at a time,
    and the peer acknowledges a lone segment with a delayed ACK (RFC 1122 4.2.3.2, RFC 9293
    3.8.6.3) unless a reply carries the ACK first. TCP's RTT samples then include a delay that
    depends on the two ends' timer phases, not on the path: an idle 20 ms link swings between
    about 0.02 and 0.05 s, and every swing would be flooded in an LSA. A probe RTT is timed by
    the overlay from Probe to ProbeReply, which the peer sends as soon as it reads the Probe, so
    it contains no ACK delay. On a busy link the data keeps ACKs flowing (every second segment
    is acknowledged at once) and TCP's srtt is the latency the data actually sees, queueing
    included; probes are not sent there.
    ``min_rtt = min(tcpi_min_rtt, min probe r)`` (a lower bound either way; ``inf`` unknown).
    Unknown: ``inf``.

Loss (fraction)
    Each TCPInfo sample ``i`` contributes, over the previous sample of the same connection,
    ``retrans_i = max(0, d total_retrans - d dsack_dups)`` (retransmissions the receiver reported
    as duplicates with DSACK, RFC 2883, were spurious, not losses) and
    ``sent_i = d data_segs_out`` (every data segment put on the wire, retransmissions included,
    as Linux counts it in ``__tcp_transmit_skb`` and tcpstack does too).
    The sliding window holds the most recent ``loss_window`` sent segments (the oldest sample is
    cut proportionally when it straddles the edge) sent within the last ``loss_horizon`` seconds
    (older samples leave it whole, so a link that carried a loss episode and then went quiet
    forgets it in time, not after ``loss_window`` probe segments), and each sample with
    ``sent_i > 0`` updates

        raw    = sum(retrans) / sum(sent)                      over the window
        ewma  <- raw                       (first sample)
        ewma  <- ewma + loss_alpha * (raw - ewma)            (later ones)
        loss   = max(ewma, loss_floor)                         (loss_floor before any sample)

    A link that retransmits with nothing new to send (an RTO series on a dead path) has
    ``sent_i = retrans_i`` and drives the loss toward 1.

Throughput (bytes/s)
    ``throughput = min(D, B_pftk)``, the terms that are known (``0.0`` if neither is):

    * ``D``, delivery rate: the latest ``tcpi_delivery_rate`` sample that was not
      application-limited. An app-limited sample only measures how much the application offered,
      so it is ignored, except that one *above* ``D`` raises it (it is a lower bound on what the
      path can carry: draft-cheng-iccrg-delivery-rate-estimation; Linux BBR's bandwidth filter
      takes app-limited samples only when they reach its current maximum, the same rule). Kept across reconnects: it describes the path, not the connection.
    * ``B_pftk``, the TCP throughput the path's loss and RTT allow, Padhye, Firoiu, Towsley and
      Kurose, "Modeling TCP Throughput: A Simple Model and its Empirical Validation", SIGCOMM
      1998, the paper's approximate closed form, in packets/s, times the MSS::

        B(p) = min( Wmax / RTT,
                    1 / ( RTT * sqrt(2*b*p/3)
                          + T0 * min(1, 3*sqrt(3*b*p/8)) * p * (1 + 32*p**2) ) )

      with ``p = loss`` (floored), ``RTT = latency``, ``T0 = tcpi_rto``, ``b = 2`` packets
      acknowledged per ACK (delayed ACKs), ``Wmax = snd_wnd / snd_mss`` (the peer's window) and
      ``MSS = snd_mss``. With ``p = 0`` only the window term remains (``inf`` without one).

Availability
    ``up`` is true between ``set_up(True)`` and ``set_up(False)`` (or a snapshot in state CLOSED),
    and only while the peer was heard from within ``down_after`` s. Heard means: a frame
    (``on_frame``), a probe reply (``on_probe_rtt``), or, in a snapshot, the most recent ACK or
    data segment received, ``now - min(last_ack_recv, last_data_recv)`` (each only once
    ``bytes_acked`` resp. ``data_segs_in`` show one arrived). Taking the snapshot is no sign of
    life: reading our own TCP state says nothing about the peer.

Sample count and age
    ``samples``: TCPInfo snapshots plus probe RTTs taken in; ``age``: s since the most recent
    (``inf`` before any).

Advertisement
    :meth:`LinkEstimator.advert` carries finite numbers only (what
    :func:`overlay.linkstate.validate_lsa` accepts): a link whose latency or throughput is not
    finite (no RTT sample yet, or no bound on the throughput known) cannot be costed by any
    policy, so it is advertised *down*, with ``0.0`` in the unknown fields. Up in an advert means
    up by the availability rule above *and* measurable.

Counter resets
    Every reconnect gives a new connection whose counters restart at zero. A new one is
    recognised by a change of the ``epoch`` passed to :meth:`LinkEstimator.on_info` (the node's
    connection number: always pass it when known), or failing that by any of ``data_segs_out``,
    ``total_retrans``, ``dsack_dups``, ``bytes_acked`` going backwards. The first snapshot of a
    connection is then measured from zero, as its counters are; the loss window, the EWMA and
    the delivery rate carry over, being properties of the path.
"""

from __future__ import annotations

import math
from collections import deque

import attrs

from overlay.config import MetricSettings
from overlay.messages import LinkAdvert
from tcpstack.tcp.info import TCPInfo

__all__ = [
    "LinkEstimator",
    "LinkQuality",
    "pftk_throughput",
]

_U32_MAX = 0xFFFF_FFFF
_TCP_CLOSED = 7  # Linux TCP_CLOSE (include/net/tcp_states.h): reset or timed out
_PROBE_GAIN = 1 / 8  # RFC 6298 alpha


def pftk_throughput(
    mss: float,
    rtt: float,
    rto: float,
    loss: float,
    b: int = 2,
    wmax: float | None = None,
) -> float:
    """PFTK steady-state TCP throughput in bytes/s (formula in the module docstring).

    ``mss`` bytes, ``rtt`` and ``rto`` s, ``loss`` the loss event probability 0..1, ``b`` packets
    per ACK, ``wmax`` the receiver window in packets (None: no window limit). ``loss == 0``
    gives ``wmax * mss / rtt``, or ``inf`` without a window."""
    if not (mss > 0 and rtt > 0 and rto >= 0 and 0.0 <= loss <= 1.0 and b >= 1):
        raise ValueError(
            f"pftk_throughput needs mss > 0, rtt > 0, rto >= 0, 0 <= loss <= 1, b >= 1; "
            f"got mss={mss}, rtt={rtt}, rto={rto}, loss={loss}, b={b}"
        )
    window_limit = math.inf if wmax is None else wmax / rtt
    if loss == 0.0:
        return window_limit * mss
    p = loss
    denominator = rtt * math.sqrt(2 * b * p / 3) + rto * min(
        1.0, 3 * math.sqrt(3 * b * p / 8)
    ) * p * (1 + 32 * p * p)
    return min(window_limit, 1.0 / denominator) * mss


@attrs.frozen(slots=True)
class LinkQuality:
    """What we know about the link to ``peer``; units s, s, fraction, bytes/s."""

    peer: str
    up: bool
    latency: float
    min_rtt: float
    loss: float
    throughput: float
    samples: int
    age: float
    info: TCPInfo | None = attrs.field(default=None, repr=False)


class LinkEstimator:
    """Measures one peer link; see the module docstring for every formula."""

    def __init__(self, peer: str, settings: MetricSettings) -> None:
        self.peer = peer
        self.settings = settings
        self._up = False
        self.changed_at: float | None = None  # when up/down last changed
        self._last_heard: float | None = None
        self._info: TCPInfo | None = None
        self.samples = 0
        self._last_sample: float | None = None
        # Counter baseline of the current connection.
        self._epoch: int | None = None
        self._base: tuple[int, int, int, int] = (0, 0, 0, 0)
        # Loss: window of [sent, retrans] per sample (floats once the oldest is cut).
        self._window: deque[list[float]] = deque()  # [sent, retrans, time] per sample
        self._win_sent = 0.0
        self._win_retrans = 0.0
        self._loss_ewma: float | None = None
        # Latency.
        self._srtt_tcp: float | None = None
        self._last_app: float | None = None
        self._min_rtt_tcp: float | None = None
        self._srtt_probe: float | None = None
        self._min_rtt_probe: float | None = None
        # Throughput.
        self._delivery_rate: float | None = None
        self._rto: float | None = None
        self._mss: int = 0
        self._snd_wnd: int = 0

    # -- inputs --------------------------------------------------------------------------------

    def set_up(self, up: bool, now: float) -> None:
        """The peer link's connection is established (Hello exchanged) or gone."""
        if up != self._up:
            self.changed_at = now
        self._up = up
        if up:
            self._heard(now)

    def on_frame(self, now: float) -> None:
        """A frame arrived from the peer: it is alive."""
        self._heard(now)

    def on_app(self, now: float) -> None:
        """Application traffic (a Data or DataAck frame) crossed the link either way: for
        ``idle_after`` s the link counts as busy and TCP's srtt is its latency."""
        if self._last_app is None or now > self._last_app:
            self._last_app = now

    def on_probe_rtt(self, rtt: float, now: float) -> None:
        """A probe reply came back after ``rtt`` s."""
        if not (rtt >= 0 and math.isfinite(rtt)):
            raise ValueError(f"probe RTT must be a finite number >= 0, got {rtt!r}")
        if self._srtt_probe is None:
            self._srtt_probe = rtt
        else:
            self._srtt_probe += _PROBE_GAIN * (rtt - self._srtt_probe)
        self._min_rtt_probe = rtt if self._min_rtt_probe is None else min(self._min_rtt_probe, rtt)
        self._sample_taken(now)
        self._heard(now)

    def on_info(self, info: TCPInfo, now: float, *, epoch: int | None = None) -> None:
        """One snapshot of the link's stream. ``epoch`` identifies the connection (change it
        on every reconnect); without it a reset is recognised by counters going backwards."""
        counters = (info.data_segs_out, info.total_retrans, info.dsack_dups, info.bytes_acked)
        if (epoch is not None and epoch != self._epoch) or any(
            now_c < base_c for now_c, base_c in zip(counters, self._base, strict=True)
        ):
            # A new connection counts from zero. Its RTTs replace the old ones as they come;
            # until then the old connection's are the best estimate of the same path.
            self._base = (0, 0, 0, 0)
        if epoch is not None:
            self._epoch = epoch
        d_new, d_retrans, d_dsack, _d_acked = (
            c - b for c, b in zip(counters, self._base, strict=True)
        )
        self._base = counters
        self._info = info
        self._sample_taken(now)

        # Loss.
        sent = d_new
        if sent > 0:
            self._add_loss_sample(sent, min(max(d_retrans - d_dsack, 0), sent), now)

        # Latency: tcpi_rtt is 0 before the first RTT sample, min_rtt ~0U before one.
        if info.rtt > 0:
            self._srtt_tcp = info.rtt / 1e6
        if 0 < info.min_rtt < _U32_MAX:
            self._min_rtt_tcp = info.min_rtt / 1e6

        # Throughput inputs.
        rate = float(info.delivery_rate)
        if rate > 0:
            if not info.delivery_rate_app_limited:
                self._delivery_rate = rate
            elif self._delivery_rate is not None and rate > self._delivery_rate:
                self._delivery_rate = rate
        if info.rto > 0:
            self._rto = info.rto / 1e6
        self._mss = info.snd_mss
        self._snd_wnd = info.snd_wnd

        # Availability.
        if info.state == _TCP_CLOSED:
            self.set_up(False, now)
        else:
            # tcpstack reports 0 ms for "never" as well as "just now": a field counts only
            # once the counters show such a segment arrived.
            ages = []
            if info.data_segs_in > 0:
                ages.append(info.last_data_recv)
            if info.bytes_acked > 0:
                ages.append(info.last_ack_recv)
            if ages:
                self._heard(now - min(ages) / 1000)

    def _add_loss_sample(self, sent: int, retrans: int, now: float) -> None:
        window = self._window
        horizon = now - self.settings.loss_horizon
        while window and window[0][2] < horizon:
            sent_old, retrans_old, _ = window.popleft()
            self._win_sent -= sent_old
            self._win_retrans -= retrans_old
        window.append([float(sent), float(retrans), now])
        self._win_sent += sent
        self._win_retrans += retrans
        excess = self._win_sent - self.settings.loss_window
        while excess > 0:
            oldest = window[0]
            if oldest[0] <= excess:
                window.popleft()
                self._win_sent -= oldest[0]
                self._win_retrans -= oldest[1]
                excess -= oldest[0]
            else:
                keep = (oldest[0] - excess) / oldest[0]
                self._win_retrans -= oldest[1] * (1 - keep)
                oldest[1] *= keep
                oldest[0] -= excess
                self._win_sent -= excess
                excess = 0
        raw = min(max(self._win_retrans / self._win_sent, 0.0), 1.0)
        if self._loss_ewma is None:
            self._loss_ewma = raw
        else:
            self._loss_ewma += self.settings.loss_alpha * (raw - self._loss_ewma)

    def _sample_taken(self, now: float) -> None:
        self.samples += 1
        if self._last_sample is None or now > self._last_sample:
            self._last_sample = now

    def _heard(self, at: float) -> None:
        if self._last_heard is None or at > self._last_heard:
            self._last_heard = at

    # -- outputs -------------------------------------------------------------------------------

    def is_up(self, now: float) -> bool:
        return (
            self._up
            and self._last_heard is not None
            and now - self._last_heard <= self.settings.down_after
        )

    @property
    def last_heard(self) -> float | None:
        return self._last_heard

    @property
    def raw_loss(self) -> float | None:
        """Retransmitted over sent segments in the current window (before EWMA and floor)."""
        return self._win_retrans / self._win_sent if self._win_sent > 0 else None

    def busy(self, now: float) -> bool:
        """Application traffic within the last ``idle_after`` s (see "Latency")."""
        return self._last_app is not None and now - self._last_app < self.settings.idle_after

    def latency(self, now: float | None = None) -> float:
        """The latency rule of the module docstring; ``now`` None counts the link as idle."""
        tcp, probe = self._srtt_tcp, self._srtt_probe
        if tcp is not None and now is not None and self.busy(now):
            return tcp
        if probe is not None:
            return probe
        return math.inf if tcp is None else tcp

    def min_rtt(self) -> float:
        known = [r for r in (self._min_rtt_tcp, self._min_rtt_probe) if r is not None]
        return min(known) if known else math.inf

    def loss(self) -> float:
        floor = self.settings.loss_floor
        return floor if self._loss_ewma is None else max(self._loss_ewma, floor)

    def throughput(self, now: float | None = None) -> float:
        terms = []
        if self._delivery_rate is not None:
            terms.append(self._delivery_rate)
        rtt = self.latency(now)
        if self._mss > 0 and 0 < rtt < math.inf and self._rto is not None:
            wmax = self._snd_wnd / self._mss if self._snd_wnd > 0 else None
            terms.append(pftk_throughput(self._mss, rtt, self._rto, self.loss(), 2, wmax))
        return min(terms) if terms else 0.0

    def quality(self, now: float) -> LinkQuality:
        return LinkQuality(
            peer=self.peer,
            up=self.is_up(now),
            latency=self.latency(now),
            min_rtt=self.min_rtt(),
            loss=self.loss(),
            throughput=self.throughput(now),
            samples=self.samples,
            age=math.inf if self._last_sample is None else max(now - self._last_sample, 0.0),
            info=self._info,
        )

    def advert(self, now: float) -> LinkAdvert:
        """Our LSA's view of the link: finite numbers only (see "Advertisement")."""
        q = self.quality(now)
        if math.isfinite(q.latency) and math.isfinite(q.throughput):
            return LinkAdvert(q.peer, q.latency, q.loss, q.throughput, q.up)
        return LinkAdvert(
            q.peer,
            q.latency if math.isfinite(q.latency) else 0.0,
            q.loss,
            q.throughput if math.isfinite(q.throughput) else 0.0,
            False,
        )
