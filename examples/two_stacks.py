"""Two user-level stacks in one process, one bulk transfer over an impaired network.

The same program as ``tcpstack demo`` (see :mod:`tcpstack.demo`); run it with ``--help`` for the
knobs, e.g. ``python examples/two_stacks.py --virtual --loss 0.5 --plot out/demo.png``.
"""

from __future__ import annotations

import sys

from tcpstack.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
