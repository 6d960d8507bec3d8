"""The demo a new user runs: virtual time, small transfer, a real PNG with three panels."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

from tcpstack.activity import Activity
from tcpstack.demo import DemoConfig, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_virtual_writes_png_and_reports(tmp_path: Path) -> None:
    png = tmp_path / "sub" / "demo.png"
    out = io.StringIO()
    result = run_demo(DemoConfig(size=600_000, virtual=True, plot=png, seed=3), out)
    assert result.intact
    assert result.plot_axes == 3 and result.plot_path == png
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    # IHDR is the first chunk: width and height of a 9x9 inch figure at 100 dpi.
    assert data[12:16] == b"IHDR" and struct.unpack("!II", data[16:24]) == (900, 900)
    text = out.getvalue()
    assert "goodput" in text and "data intact" in text
    assert "TCPInfo" in text and "snd_cwnd" in text and "rx parse" in text
    # Not a tty: periodic live lines, no carriage returns.
    assert "\r" not in text and text.count("cwnd ") >= 2
    assert result.samples[-1].acked == 600_000
    assert result.sender.bytes_acked == 600_000 and result.receiver.bytes_received == 600_000
    assert result.activity[Activity.RX_PARSE].count > 0
    assert result.retransmissions and result.sender.total_retrans > 0  # 1% loss, seeded
    assert result.duration > 0.2  # at least a few 40 ms round trips of virtual time


def test_cli_demo_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tcpstack", "demo", "--help"], capture_output=True, text=True,
        check=True, timeout=60,
    )
    assert "--virtual" in proc.stdout and "--plot" in proc.stdout
