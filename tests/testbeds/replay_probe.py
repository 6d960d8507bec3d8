"""Run one small seeded emulated scenario in virtual time and print a digest of each run.

A helper for ``test_replay.py``, run as a script in a fresh interpreter (so neither pytest nor
Hypothesis, whose import switches trio into its deterministic scheduling mode, is loaded):
``python replay_probe.py SEED RUNS``. It prints one line per run: a SHA-256 over every record the run
wrote (path changes, link samples with the overlay's metrics, flow deliveries) and the flows'
delivery counts and mean latencies.
"""

from __future__ import annotations

import hashlib
import json
import sys

import attrs
import trio
import trio.testing

from testbeds.emulated import Recorder, seed_trio_scheduler
from testbeds.scenario import run_scenario
from testbeds.topology import Event, Flow, Topology


def scenario(seed: int) -> Topology:
    """Six nodes, lossy links (0-3 %), three flows that compete for links under the latency,
    loss and throughput policies, and a link that goes down and comes back."""
    topo = Topology.random(6, degree=2.5, seed=seed, loss=(0.0, 0.03))
    first = topo.links[0]
    return attrs.evolve(
        topo,
        flows=[
            Flow("n0", "n5", interval=0.02, size=2000, policy="throughput"),
            Flow("n1", "n4", interval=0.03, size=1000, policy="loss"),
            Flow("n3", "n2", interval=0.05, size=500, policy="latency"),
        ],
        events=[Event(1.5, "down", first.a, first.b), Event(2.5, "up", first.a, first.b)],
        duration=4.0,
    )


def run_once(seed: int) -> str:
    recorder = Recorder()

    async def main() -> str:
        result = await run_scenario(scenario(seed), seed=seed, recorder=recorder,
                                    sample_interval=0.25)
        flows = " ".join(
            f"{f.delivered}/{f.sent}:{f.median_latency!r}:{f.longest_gap!r}" for f in result.flows
        )
        digest = hashlib.sha256(
            json.dumps(recorder.records(), sort_keys=True, default=repr).encode()
        ).hexdigest()
        return f"{digest} {len(recorder.records())} {flows}"

    seed_trio_scheduler(seed)
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


if __name__ == "__main__":
    assert "hypothesis" not in sys.modules
    for _ in range(int(sys.argv[2])):
        print(run_once(int(sys.argv[1])), flush=True)
