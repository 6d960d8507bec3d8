#!/usr/bin/env bash
# One-time, idempotent set-up: Debian packages (when root), .venv, editable install with test extras.
# Usage: ./setup.sh [--no-system]   (--no-system skips the Debian package step)
set -euo pipefail
cd "$(dirname "$0")"

DEBIAN_PACKAGES=(libpcap-dev nftables iptables iproute2 ethtool tcpdump tshark curl nginx)
want_system=1
for arg in "$@"; do
  case "$arg" in
    --no-system) want_system=0 ;;
    -h|--help) sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi

if [ "$want_system" = 1 ] && [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer it up front.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    # Packages with daemons (nginx) must not start them: tests start their own servers in
    # network namespaces. policy-rc.d exit code 101 means "action not allowed".
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  else
    echo "setup: not root, so these Debian packages were not installed: ${missing[*]}" >&2
    echo "setup: ask an administrator to run: apt-get install ${missing[*]}" >&2
    if printf '%s\n' "${missing[@]}" | grep -qx libpcap-dev; then
      echo "setup: libpcap-dev is required to build pypcap; stopping." >&2
      exit 1
    fi
    echo "setup: continuing; tests that need the missing tools will skip." >&2
  fi
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "setup: Python >= 3.11 is required ($("$PY" --version 2>&1) found)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml .ci/constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project (editable) with test extras, versions from .ci/constraints.txt"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c .ci/constraints.txt -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "setup: ready (.venv)"
