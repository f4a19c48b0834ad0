#!/usr/bin/env bash
# Installs what lbd needs on a fresh Debian machine (run as root): system packages, then a venv
# in .venv with lbd and its test extra. Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-setuptools and python3-wheel: the staged-install test builds lbd with them, offline.
# nftables: libnftables, the kernel fence of cluster mode (lbd.net.fence).
packages=(python3 python3-venv iproute2 curl netcat-openbsd procps python3-setuptools python3-wheel nftables)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv  # absent, or left half-made by an interrupted run
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' >&2 || true
.venv/bin/python -c 'import lbd, uvloop, pyroute2, yaml, structlog, prometheus_client, aiohttp, pytest, hypothesis, scapy' \
  || { echo "setup: the venv is incomplete" >&2; exit 1; }

# etcd for the cluster tests: Debian's etcd-server unpacked into .venv/etcd (after the venv, which
# a fresh setup recreates), not installed, so no etcd service is started or left enabled on this
# machine. Tests run their own members.
if [ ! -x .venv/etcd/usr/bin/etcd ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq etcd-server >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$tmp" && apt-get download -qq etcd-server >/dev/null); }
  mkdir -p .venv/etcd
  dpkg-deb -x "$tmp"/etcd-server_*.deb .venv/etcd
  rm -rf "$tmp"
fi
