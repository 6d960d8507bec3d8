"""NewReno's window rules: RFC 5681 slow start and congestion avoidance, RFC 6582 ssthresh.

The NewReno part proper (``recover``, partial ACKs, one reduction per window) is recovery
bookkeeping that lives in the engine; this class only decides how cwnd grows and where ssthresh
goes.
"""

from __future__ import annotations

from typing import ClassVar

from tcpstack.tcp.congestion import CongestionControl, _check_size, _check_time, _register_builtin

__all__ = ["NewReno"]


class NewReno(CongestionControl):
    name: ClassVar[str] = "newreno"

    __slots__ = ()

    def on_ack(
        self,
        acked_bytes: int,
        bytes_in_flight: int,
        now: float,
        *,
        rtt: float | None,
        cwnd_limited: bool,
    ) -> None:
        self._note_progress(acked_bytes, bytes_in_flight, now)
        if not cwnd_limited or acked_bytes == 0:
            return
        if self.in_slow_start:
            acked_bytes = self._slow_start(acked_bytes)
            if acked_bytes == 0:
                return
        self._reno_congestion_avoidance(acked_bytes)

    def on_congestion_event(self, bytes_in_flight: int, now: float) -> None:
        # RFC 5681 eq. (4), kept by RFC 6582 section 3.2 step 2.
        _check_size("bytes_in_flight", bytes_in_flight, minimum=0)
        _check_time("now", now)
        self.ssthresh = max(bytes_in_flight // 2, 2 * self.mss)
        self._bytes_acked = 0
        self._rto_without_progress = False


_register_builtin(NewReno.name, NewReno)
