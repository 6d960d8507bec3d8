"""Fixtures shared by the interop tests: test hosts as network namespaces (root only).

``testnet`` is a :class:`testbeds.netns.Testnet` (client and server namespaces joined by a veth
pair on 198.18.<n>.0/24) deleted after the test, veth offloads as the kernel sets them; tests that
judge captures or use a packet tap turn them off with :func:`testbeds.netns.offloads`. Without root
(or without ip/nft/tc/ethtool) every test using it is skipped with the one-line reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbeds.netns import Testnet, root_skip_reason


@pytest.fixture
def testnet() -> Iterator[Testnet]:
    reason = root_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with Testnet.create() as net:
        yield net
