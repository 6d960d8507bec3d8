"""The console scripts exist and answer --help and --version."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import overlay
import tcpstack
import testbeds

SCRIPTS = {"tcpstack": tcpstack, "overlay": overlay, "testbed": testbeds}


def _script(name: str) -> str:
    # Prefer the script installed beside this interpreter (the project's .venv).
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name!r} is not installed; run ./setup.sh")
    return found


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_version(name: str) -> None:
    out = subprocess.run([_script(name), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{name} {SCRIPTS[name].__version__}"
    assert SCRIPTS[name].__version__ != "0.0.0+unknown"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help(name: str) -> None:
    out = subprocess.run([_script(name), "--help"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"usage: {name}")


def test_unknown_option_is_a_clear_error() -> None:
    out = subprocess.run([_script("tcpstack"), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "unrecognized arguments: --bogus" in out.stderr
