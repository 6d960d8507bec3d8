"""Shared test configuration.

Hypothesis runs derandomised (the same examples on every run, so CI is deterministic). Set
``TCPSTACK_HYPOTHESIS=thorough`` to run long property tests with ten times the examples.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from testbeds.emulated import seed_trio_scheduler

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("thorough" if os.environ.get("TCPSTACK_HYPOTHESIS") == "thorough" else "ci")


@pytest.fixture(autouse=True)
def _deterministic_trio_scheduling() -> None:
    """trio runs each batch of runnable tasks in an order drawn from a module-level RNG (to flush
    out code that depends on scheduling order). Seed it per test, with trio's deterministic mode
    on (batches sorted by task creation before the shuffle, see
    :func:`testbeds.emulated.seed_trio_scheduler`), so that a failure replays exactly; different
    tests still see different interleavings."""
    seed_trio_scheduler(0)
