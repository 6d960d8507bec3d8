"""How many hypothesis examples a property test runs (imported as ``example_budget``).

Kept out of ``conftest.py``: several test folders have a conftest of their own, so ``from
conftest import ...`` would be ambiguous.
"""

from __future__ import annotations

import os


def scaled_examples(n: int) -> int:
    """Example count for a property test: ``n`` in CI, ten times that when thorough."""
    return n * 10 if os.environ.get("TCPSTACK_HYPOTHESIS") == "thorough" else n
