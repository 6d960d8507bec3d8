"""The network subcommands answer --help and fail in one line on bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tcpstack.cli import main


@pytest.mark.parametrize("command", ["get", "serve", "ss", "capture"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"tcpstack {command}" in capsys.readouterr().out


def test_get_with_https_url_is_one_clear_line() -> None:
    done = subprocess.run([sys.executable, "-m", "tcpstack", "get", "https://198.18.0.1/"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "tcpstack get: unsupported scheme 'https': only http:// (no TLS on this stack)"
    ]


def test_bad_port_range_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["get", "http://198.18.0.1/", "--ports", "5-1"])
    assert exit_info.value.code == 2
    assert "LOW <= HIGH" in capsys.readouterr().err


def test_ss_with_no_stacks_prints_only_the_header(tmp_path: object,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ss", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("State")


def test_capture_with_no_stack_is_one_clear_line(tmp_path: object,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "-o", "x.pcap", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        "tcpstack capture: no running stack matches (see `tcpstack ss`)")
