#!/usr/bin/env bash
# Installs lbd for systemd on a Debian machine (run as root):
#   /opt/lbd/venv                 lbd and its dependencies (not under /root: ProtectHome= hides it)
#   /usr/local/bin/lbd            -> /opt/lbd/venv/bin/lbd (the path systemd/lbd.service runs)
#   the `lbd` system user         /etc/sysusers.d/lbd.conf, created by systemd-sysusers
#   /etc/systemd/system/lbd.service
#   /etc/sysctl.d/60-lbd.conf     arp_ignore/arp_announce for every interface, applied now
#   /etc/lbd/lbd.yaml             config/example.yaml, only if there is no config yet
# Idempotent: a second run changes nothing; after a `git pull` it installs the new lbd. It never
# starts or restarts lbd: edit the config first (the example announces 198.18.100.240-250 on eth0:
# a benchmarking range, RFC 2544, that no real network routes; put your own pool there).
#
#   bash scripts/install.sh              # this machine
#   bash scripts/install.sh --root DIR   # into a staging tree (an image, a package, a test); nothing
#                                        # outside DIR is touched, and nothing is applied or reloaded
# Environment: PYTHON (default /usr/bin/python3); LBD_PIP_ARGS, extra pip options (e.g. an offline install:
# "--no-index --find-links /srv/wheels").
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
root=""
while (($#)); do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$root" ]; then
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=""
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install: run as root (or stage with --root DIR)" >&2
  exit 1
fi

VENV=/opt/lbd/venv
BIN=/usr/local/bin/lbd
UNIT=/etc/systemd/system/lbd.service
SYSCTL=/etc/sysctl.d/60-lbd.conf
SYSUSERS=/etc/sysusers.d/lbd.conf
CONFIG=/etc/lbd/lbd.yaml
PY=${PYTHON:-/usr/bin/python3}  # not a python under /root or /home: ProtectHome= hides it

say() { echo "install: $*"; }
wrote=no

# put FROM TO MODE: install FROM as $root/TO unless it is there already, same content and mode.
put() {
  local from=$1 to=$root$2 mode=$3
  wrote=no
  if [ -f "$to" ] && cmp -s "$from" "$to" && [ "$(stat -c %a "$to")" = "${mode#0}" ]; then
    return 0
  fi
  install -D -m "$mode" "$from" "$to"
  wrote=yes
  say "wrote $2"
}

# 1. What the venv needs on this machine (staging uses the build host's python as it is).
if [ -z "$root" ]; then
  missing=()
  for p in python3 python3-venv nftables; do  # nftables: the cluster-mode ARP fence
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# 2. The system user, from a sysusers.d file (systemd-sysusers creates only what is missing).
put "$src/systemd/lbd.sysusers" "$SYSUSERS" 0644
if [ -n "$root" ]; then
  mkdir -p "$root/etc"
  systemd-sysusers --root="$root" "$root$SYSUSERS" >/dev/null
else
  systemd-sysusers "$SYSUSERS" >/dev/null
fi
gid=$(awk -F: '$1 == "lbd" { print $3 }' "$root/etc/group")

# 3. The venv, and lbd in it when its source changed (a hash of what pip would build).
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
(cd "$src" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md lbd) | tar -C "$build" -xf -
stamp=$(cd "$build" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if ! "$root$VENV/bin/python" -c '' 2>/dev/null; then
  rm -rf "$root$VENV"  # absent, or left half-made by an interrupted run
  "$PY" -m venv "$root$VENV" || { echo "install: cannot create a venv: apt-get install python3-venv" >&2; exit 1; }
  say "created $VENV"
fi
if [ "$(cat "$root/opt/lbd/source.sha256" 2>/dev/null)" != "$stamp" ]; then
  # shellcheck disable=SC2086  # LBD_PIP_ARGS is a list of options
  "$root$VENV/bin/python" -m pip install -q --disable-pip-version-check ${LBD_PIP_ARGS:-} "$build"
  if [ -n "$root" ]; then
    # Scripts name the interpreter by absolute path: the one they will have once the tree is /.
    grep -lIF "$root$VENV" "$root$VENV"/bin/* "$root$VENV/pyvenv.cfg" | xargs -r sed -i "s#$root$VENV#$VENV#g"
  fi
  echo "$stamp" > "$root/opt/lbd/source.sha256"
  say "installed lbd into $VENV"
fi
if [ "$(readlink "$root$BIN" 2>/dev/null)" != "$VENV/bin/lbd" ]; then
  mkdir -p "$root$(dirname "$BIN")"
  ln -sfn "$VENV/bin/lbd" "$root$BIN"
  say "linked $BIN -> $VENV/bin/lbd"
fi

# 4. The unit and the ARP settings it relies on (its /proc/sys is read-only).
put "$src/systemd/lbd.service" "$UNIT" 0644
unit_changed=$wrote
put "$src/systemd/60-lbd.conf" "$SYSCTL" 0644
if [ -z "$root" ] && [ "$wrote" = yes ]; then
  sysctl -q -p "$SYSCTL"
  say "applied $SYSCTL"
fi

# 5. A config to start from, never over an existing one; readable by lbd, by nobody else.
if [ ! -d "$root/etc/lbd" ]; then
  install -d -m 0750 "$root/etc/lbd"
fi
if [ ! -e "$root$CONFIG" ]; then
  install -m 0640 "$src/config/example.yaml" "$root$CONFIG"
  say "wrote $CONFIG from config/example.yaml: edit it (interfaces, pools, services) before starting lbd"
fi
if [ "$(id -u)" -eq 0 ]; then
  [ "$(stat -c %g "$root/etc/lbd")" = "$gid" ] || chgrp "$gid" "$root/etc/lbd"
  [ "$(stat -c %g "$root$CONFIG")" = "$gid" ] || chgrp "$gid" "$root$CONFIG"
fi

# 6. Tell a running systemd; never start or restart lbd from here.
if [ -z "$root" ] && [ -d /run/systemd/system ] && [ "$unit_changed" = yes ]; then
  systemctl daemon-reload
  say "systemctl daemon-reload"
fi
if [ -z "$root" ]; then
  say "done. Next: lbd check $CONFIG && systemctl enable --now lbd  (after an upgrade: systemctl restart lbd)"
else
  say "done: staged in $root"
fi
