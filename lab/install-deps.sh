#!/usr/bin/env bash
# Idempotently install everything the libvirt lab and the browser tests need (Debian 12, root).
#   - Debian packages: libvirtd + QEMU driver, qemu-system-x86, virsh, iproute2,
#     libvirt headers + pkg-config (to build libvirt-python)
#   - libvirt-python into $VENV (default: <repo>/.venv)
# Fast path: does nothing (no apt-get update, no pip) when all is already present.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$(cd "$HERE/.." && pwd)/.venv}"
LIBVIRT_PYTHON_VERSION="${LIBVIRT_PYTHON_VERSION:-12.8.0}"

APT_PKGS=(
  libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86
  libvirt-clients iproute2 pkg-config
  # the store tests start their own PostgreSQL (initdb + pg_ctl)
  postgresql
  # needed to build libvirt-python from its sdist (no wheels on PyPI)
  gcc python3-dev
  # mount/unshare/nsenter
  util-linux
  # reaper.py (libvirtd subreaper)
  python3
  # headless browser for the dashboard tests (tests/browser.py; Playwright drives it)
  chromium
  # load generator for the bench harness smoke test (tests/test_bench.py)
  wrk
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: must run as root" >&2
  exit 1
fi

t0=$(date +%s%N)

missing=()
for p in "${APT_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only if the package lists are missing or install fails with them
  if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
    apt-get update -q
  fi
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
else
  echo "install-deps: apt packages already installed"
fi

# The Debian package postinst would normally start libvirtd via systemd/init;
# without systemd it may have started a system daemon (sysvinit script).  The
# lab runs its own daemons in namespaces and does not need it; leave it alone.

if [ ! -x "$VENV/bin/python" ]; then
  echo "install-deps: creating venv $VENV"
  python3 -m venv "$VENV"
fi

have="$("$VENV/bin/python" - <<'PY' 2>/dev/null || true
try:
    from importlib.metadata import version
    print(version("libvirt-python"))
except Exception:
    pass
PY
)"
if [ "$have" = "$LIBVIRT_PYTHON_VERSION" ] && "$VENV/bin/python" -c 'import libvirt' 2>/dev/null; then
  echo "install-deps: libvirt-python $have already in $VENV"
else
  echo "install-deps: pip install libvirt-python==$LIBVIRT_PYTHON_VERSION into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "libvirt-python==$LIBVIRT_PYTHON_VERSION"
fi

t1=$(date +%s%N)
ms=$(( (t1 - t0) / 1000000 ))
printf 'install-deps: done in %d.%03ds\n' $((ms / 1000)) $((ms % 1000))
