"""Shared test configuration.

Hypothesis runs derandomised (the same examples on every run, so CI is deterministic). Set
``TCPSTACK_HYPOTHESIS=thorough`` to run long property tests with ten times the examples.
"""

from __future__ import annotations

import os
import random

import pytest
import trio
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("thorough" if os.environ.get("TCPSTACK_HYPOTHESIS") == "thorough" else "ci")


@pytest.fixture(autouse=True)
def _deterministic_trio_scheduling() -> None:
    """trio shuffles each batch of runnable tasks with a module-level, unseeded RNG (to flush out
    code that depends on scheduling order). Seed it per test so that a failure replays exactly;
    different tests still see different interleavings."""
    rng = getattr(getattr(trio._core, "_run", None), "_r", None)
    if isinstance(rng, random.Random):
        rng.seed(0)
