"""A seeded virtual-time run of the emulated testbed replays exactly, in any process.

Each run goes through :func:`testbeds.emulated.seed_trio_scheduler` and ``trio.run`` with a
MockClock, as ``testbed run --virtual``, the overlay demo and the measured tests do. The scenario
runs in fresh interpreters (``replay_probe.py``), because under pytest Hypothesis is imported
and its trio plugin already switches trio to the deterministic scheduling that
``seed_trio_scheduler`` must turn on by itself. Before it did, two runs in one process gave
different records (the order of tasks woken by timers due at the same instant followed their
cancel scopes' memory addresses), and issue 6's item 3 scored 6 of 10 in one process and 8 of
10 for the same seeds one per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("replay_probe.py")


def test_a_seeded_virtual_time_run_replays_exactly_in_one_process_and_under_another_hash_seed() -> None:
    runs = {"1": 2, "2": 1}  # PYTHONHASHSEED -> runs of the scenario in that process
    procs = {
        hash_seed: subprocess.Popen(
            [sys.executable, str(PROBE), "3", str(count)],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for hash_seed, count in runs.items()
    }
    lines = []
    for hash_seed, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        got = out.splitlines()
        assert len(got) == runs[hash_seed], out
        lines += got
    # Something happened (records written, messages delivered), and the same every time.
    digest, records, *flows = lines[0].split()
    assert int(records) > 100 and all(int(f.split("/")[0]) > 0 for f in flows), lines[0]
    assert lines == [lines[0]] * len(lines), "\n".join(lines)
