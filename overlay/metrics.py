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
    ``throughput = min(D, B)``, the terms that are known (``0.0`` if neither is):

    * ``D``, delivery rate: the latest ``tcpi_delivery_rate`` sample that was not
      application-limited, taken once the connection delivered data (``tcpi_delivered > 1``).
      An app-limited sample only measures how much the application offered, a lower bound on
      what the path can carry, so it never caps the figure: it is ignored, except that one
      *above* ``D`` raises it (draft-cheng-iccrg-delivery-rate-estimation; Linux BBR's bandwidth
      filter takes app-limited samples only when they reach its current maximum, the same
      rule). Before any data is delivered (``tcpi_delivered <= 1``, the SYN alone) the sample is
      the handshake's, one sequence number over a round trip, ~50 B/s on a 20 ms link: it times
      the RTT, not the path, and Linux flags it app-limited (``tcp_init_sock`` starts every
      socket with ``app_limited = ~0U``), so it is ignored whatever its flag says. Until a
      non-app-limited data sample exists, ``D`` is unknown and the throughput is ``B`` alone.
      Kept across reconnects: it describes the path, not the connection.
    * ``B``, the throughput the link's congestion control sustains at the measured loss and RTT:
      the closed form of Padhye, Firoiu, Towsley and Kurose, "Modeling TCP Throughput: A Simple
      Model and its Empirical Validation", SIGCOMM 1998 (PFTK), in packets/s times the MSS,
      with its congestion-avoidance term written for the link's actual congestion control::

        B = min( Wmax / RTT,
                 1 / ( RTT / W  +  T0 * min(1, 3 / Wpeak) * p * (1 + 32*p**2) ) )

      ``W`` is the congestion control's average window (packets) at loss event rate ``p``,
      ``Wpeak = 2 W / (1 + beta)`` the window at a loss (the top of a sawtooth that falls to
      ``beta * Wpeak``; exact for an AIMD's linear sawtooth, close for CUBIC's curve), and
      ``min(1, 3 / Wpeak)`` PFTK's probability that a loss ends in a timeout (fewer than three
      segments behind it to raise duplicate ACKs). Per algorithm:

      - ``newreno`` (AIMD 1, 1/2): ``W = sqrt(3 / (2 b p))``; then ``RTT / W = RTT sqrt(2bp/3)``
        and ``3 / Wpeak = 3 sqrt(3bp/8)``: exactly the paper's formula
        (:func:`pftk_throughput`).
      - ``cubic`` (RFC 9438, ``C = 0.4``, ``beta = 0.7``; tcpstack's and Linux's default): as
        RFC 9438 section 5.1 and Linux do, the larger of CUBIC's own average window,
        ``W_cubic = (C (3 + beta) / (4 (1 - beta)))**(1/4) * (RTT / p)**(3/4)`` (RTT in s;
        window growth is a function of time, so ACK frequency does not enter), and the
        Reno-friendly estimate of section 4.3, an AIMD with ``alpha = 3 (1 - beta) / (1 + beta)``
        per RTT whose average window is ``W_est = sqrt(alpha (1 + beta) / (2 (1 - beta) b p))
        = sqrt(3 / (2 b p))``.

      with ``p = loss`` (floored), ``RTT = latency``, ``T0 = tcpi_rto``, ``b`` (below),
      ``Wmax = snd_wnd / snd_mss`` (the peer's window) and
      ``MSS = snd_mss``. With ``p = 0`` only the window term remains (``inf`` without one).
      The algorithm is the one the snapshot names (``TCPInfo.congestion``; Linux's ``reno`` is
      ``newreno``); before a snapshot names a known one, the estimator's ``congestion`` (default
      ``cubic``, the stack's default). ``b`` is the estimator's ``segments_per_ack``, default 1:
      the paper's ``b`` is how many segments one window increment of ``1/W`` takes, ``2`` for
      a receiver with delayed ACKs and a sender that grows per ACK. Overlay peer links keep
      ``TCP_QUICKACK`` on at both ends, so every segment is acknowledged, and tcpstack (like
      Linux) grows the window by acknowledged bytes in congestion avoidance (RFC 3465 section
      2.1), not per ACK; either alone makes ``b = 1``. ``b = 2`` would under-state such a link
      by ``sqrt(2)`` in the window term.

      ``B`` is a long-run figure, the rate of a bulk transfer in congestion avoidance. A short
      transfer on a lossy link can go several times faster: it starts in slow start and may
      see no loss at all (what ``D`` measures then), so for short transfers the throughput
      under-states such a link.

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
    "CONGESTION_CONTROLS",
    "LinkEstimator",
    "LinkQuality",
    "average_window",
    "pftk_throughput",
    "tcp_throughput",
]

_U32_MAX = 0xFFFF_FFFF
_TCP_CLOSED = 7  # Linux TCP_CLOSE (include/net/tcp_states.h): reset or timed out
_PROBE_GAIN = 1 / 8  # RFC 6298 alpha
CUBIC_C = 0.4  # RFC 9438's C (segments/s^3), as Linux
CUBIC_BETA = 0.7  # RFC 9438's beta_cubic, as Linux
RENO_BETA = 0.5  # RFC 5681 section 3.1 (ssthresh = FlightSize / 2)
#: congestion controls whose response function :func:`average_window` knows.
CONGESTION_CONTROLS = ("cubic", "newreno")
_CONGESTION_ALIASES = {"cubic": "cubic", "newreno": "newreno", "reno": "newreno"}  # Linux: reno


def average_window(loss: float, rtt: float, congestion: str = "cubic", b: int = 1) -> float:
    """Average congestion window (packets) at loss event rate ``loss`` (0 < loss <= 1) and
    round-trip time ``rtt`` (s), ``b`` segments per ACK (see "Throughput" in the module
    docstring)."""
    if not (0.0 < loss <= 1.0 and rtt > 0 and b >= 1):
        raise ValueError(f"average_window needs 0 < loss <= 1, rtt > 0, b >= 1; got {loss}, {rtt}, {b}")
    # AIMD average window: sqrt(alpha (1 + beta) / (2 (1 - beta) b p)); both NewReno (1, 1/2)
    # and CUBIC's Reno-friendly region (3 (1 - beta) / (1 + beta), beta) reduce to this.
    w_reno = math.sqrt(3.0 / (2.0 * b * loss))
    if congestion == "newreno":
        return w_reno
    if congestion == "cubic":
        # RFC 9438 section 5.1: Linux runs whichever of the two windows is larger.
        scale = (CUBIC_C * (3 + CUBIC_BETA) / (4 * (1 - CUBIC_BETA))) ** 0.25
        return max(w_reno, scale * (rtt / loss) ** 0.75)
    raise ValueError(f"unknown congestion control {congestion!r}; known: {CONGESTION_CONTROLS}")


def tcp_throughput(
    mss: float,
    rtt: float,
    rto: float,
    loss: float,
    *,
    congestion: str = "cubic",
    b: int = 1,
    wmax: float | None = None,
) -> float:
    """Steady-state throughput (bytes/s) of a TCP running ``congestion`` over a path of loss
    event rate ``loss``: PFTK's closed form with the algorithm's average window (module
    docstring, "Throughput"). ``mss`` bytes, ``rtt`` and ``rto`` s, ``b`` segments per ACK,
    ``wmax`` the receiver window in packets (None: no window limit). ``loss == 0`` gives
    ``wmax * mss / rtt``, or ``inf`` without a window."""
    if not (mss > 0 and rtt > 0 and rto >= 0 and 0.0 <= loss <= 1.0 and b >= 1):
        raise ValueError(
            f"throughput needs mss > 0, rtt > 0, rto >= 0, 0 <= loss <= 1, b >= 1; "
            f"got mss={mss}, rtt={rtt}, rto={rto}, loss={loss}, b={b}"
        )
    window_limit = math.inf if wmax is None else wmax / rtt
    if loss == 0.0:
        if congestion not in CONGESTION_CONTROLS:
            raise ValueError(f"unknown congestion control {congestion!r}; known: {CONGESTION_CONTROLS}")
        return window_limit * mss
    p = loss
    window = average_window(p, rtt, congestion, b)
    beta = RENO_BETA if congestion == "newreno" else CUBIC_BETA
    peak = 2.0 * window / (1.0 + beta)
    denominator = rtt / window + rto * min(1.0, 3.0 / peak) * p * (1 + 32 * p * p)
    return min(window_limit, 1.0 / denominator) * mss


def pftk_throughput(
    mss: float,
    rtt: float,
    rto: float,
    loss: float,
    b: int = 2,
    wmax: float | None = None,
) -> float:
    """The PFTK paper's formula as published (NewReno, ``b = 2`` by default) in bytes/s: the
    ``newreno`` case of :func:`tcp_throughput`."""
    return tcp_throughput(mss, rtt, rto, loss, congestion="newreno", b=b, wmax=wmax)


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

    def __init__(
        self,
        peer: str,
        settings: MetricSettings,
        *,
        congestion: str = "cubic",
        segments_per_ack: int = 1,
    ) -> None:
        if congestion not in CONGESTION_CONTROLS:
            raise ValueError(
                f"unknown congestion control {congestion!r}; known: {CONGESTION_CONTROLS}"
            )
        if segments_per_ack < 1:
            raise ValueError(f"segments_per_ack must be >= 1, got {segments_per_ack}")
        self.peer = peer
        self.settings = settings
        #: the link's congestion control and ACK ratio (see "Throughput" in the module docstring)
        self.congestion = congestion
        self.segments_per_ack = segments_per_ack
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

        # Throughput inputs. Until a data segment is delivered the only sample is the
        # handshake's, one sequence number (the SYN) over a round trip: it times the RTT, not
        # the path. Linux flags it app-limited (tcp_init_sock starts every socket with
        # app_limited = ~0U); a sampler that does not must not make it the estimate.
        rate = float(info.delivery_rate)
        if rate > 0 and info.delivered > 1:
            if not info.delivery_rate_app_limited:
                self._delivery_rate = rate
            elif self._delivery_rate is not None and rate > self._delivery_rate:
                self._delivery_rate = rate
        if info.rto > 0:
            self._rto = info.rto / 1e6
        self.congestion = _CONGESTION_ALIASES.get(info.congestion, self.congestion)
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
            terms.append(
                tcp_throughput(
                    self._mss, rtt, self._rto, self.loss(),
                    congestion=self.congestion, b=self.segments_per_ack, wmax=wmax,
                )
            )
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
