"""Shared test configuration.

Hypothesis runs derandomised (the same examples on every run, so CI is deterministic). Set
``TCPSTACK_HYPOTHESIS=thorough`` to run long property tests with ten times the examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("thorough" if os.environ.get("TCPSTACK_HYPOTHESIS") == "thorough" else "ci")


def scaled_examples(n: int) -> int:
    """Example count for a property test: ``n`` in CI, ten times that when thorough."""
    return n * 10 if os.environ.get("TCPSTACK_HYPOTHESIS") == "thorough" else n
