#!/usr/bin/env bash
# The README's demo command: installs what is needed, then runs `lbd demo` (needs root: it builds
# a throwaway network of namespaces and removes it again).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lbd demo "$@"
