"""Congestion control against models, in virtual time: the figures behind tests/tcp/test_engine_models.py.

Prints, for the engine alone over a rate-limited drop-tail bottleneck (the harness in
tests/tcp/tcp_helpers.py):
- NewReno goodput on 10 Mbit/s, 50 ms RTT, 1% random loss, against Mathis et al.
  (MSS/RTT * 1.22/sqrt(p));
- CUBIC link utilisation on 100 Mbit/s, 100 ms RTT, one-BDP buffer, no loss, after 10 s;
- the Jain fairness index of two CUBIC flows sharing 10 Mbit/s, 50 ms RTT.

    python bench/engine_models.py
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "tcp"))

from tcp_helpers import jain, run_bulk_flows  # noqa: E402

MSS = 1448  # 1500 MTU less IPv4, TCP and the timestamps option


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}, {time.strftime('%Y-%m-%d')}")

    t0 = time.perf_counter()
    duration, warmup = 60.0, 5.0
    got = run_bulk_flows(flows=1, rate=10e6 / 8, rtt=0.05, queue_bytes=62_500, duration=duration,
                         loss=0.01, congestion="newreno", seed=5, measure_from=warmup)
    goodput = got[0] / (duration - warmup)
    mathis = MSS / 0.05 * 1.22 / math.sqrt(0.01)
    print(f"newreno 10 Mbit/s 50 ms 1% loss: goodput {goodput:,.0f} B/s, Mathis {mathis:,.0f} B/s, "
          f"ratio {goodput / mathis:.3f} (bar 0.65..1.35)  [{time.perf_counter() - t0:.1f} s wall]")

    t0 = time.perf_counter()
    rate = 100e6 / 8
    got = run_bulk_flows(flows=1, rate=rate, rtt=0.1, queue_bytes=1_250_000, duration=12.0,
                         congestion="cubic", measure_from=10.0)
    print(f"cubic 100 Mbit/s 100 ms one-BDP buffer: utilisation over 10-12 s "
          f"{got[0] / 2.0 / rate:.1%} (bar >= 80%)  [{time.perf_counter() - t0:.1f} s wall]")

    t0 = time.perf_counter()
    got = run_bulk_flows(flows=2, rate=10e6 / 8, rtt=0.05, queue_bytes=62_500, duration=30.0,
                         congestion="cubic", measure_from=10.0)
    print(f"two cubic flows 10 Mbit/s 50 ms: bytes {got}, Jain index {jain(got):.3f} (bar >= 0.9)"
          f"  [{time.perf_counter() - t0:.1f} s wall]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
