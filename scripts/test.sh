#!/usr/bin/env bash
# The README's test command: installs what is needed, then runs every test (unit + netns
# integration; the integration tests need root and skip themselves otherwise).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
