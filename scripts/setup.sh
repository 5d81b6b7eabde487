#!/usr/bin/env bash
# Installs everything the project needs on Debian 12 (as root): system
# packages, kernel headers for BCC, and a virtual environment with the
# package and its development tools. Idempotent: safe to run again.
#
# Prints one line per step; the tools' own output goes to a log
# ($INTERCEPTOR_SETUP_LOG, default /tmp/interceptor-setup.log), shown only
# when a step fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${INTERCEPTOR_VENV:-$here/.venv}
log=${INTERCEPTOR_SETUP_LOG:-/tmp/interceptor-setup.log}
: > "$log"

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and programs the kernel)" >&2
  exit 2
fi

n=0
step() { n=$((n + 1)); echo "setup: [$n/4] $*"; }
fail() {
  echo "setup: FAILED: $1 (last lines of $log below)" >&2
  tail -n 40 "$log" >&2
  exit 1
}

apt_packages=(
  nftables iproute2 tcpdump procps kmod curl ca-certificates
  python3 python3-venv python3-dev gcc
  python3-bpfcc bpfcc-tools linux-headers-amd64
  qemu-system-x86 linux-image-amd64 busybox-static cpio
  cloud-init postgresql prometheus wrk nginx-light systemd
  dpkg-dev fakeroot debootstrap qemu-utils  # scripts/build-deb.sh and the Debian VM test
  ruby vagrant  # tests only: check the Vagrantfile (ruby -c, vagrant validate)
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "Debian packages: installing ${#missing[@]} (${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >>"$log" 2>&1 || fail "apt-get update"
  # Nothing may start at install time (no init system on CI machines).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  # APT's status lines become one progress line per 10 % (download, then unpack).
  apt-get install -y -q --no-install-recommends -o APT::Status-Fd=3 "${missing[@]}" \
      3>&1 1>>"$log" 2>&1 | awk -F: '
        /^dlstatus/ { p = int($3 / 10) * 10; if (p > d) { d = p; printf "setup:       downloading %d%%\n", p; fflush() } }
        /^pmstatus/ { p = int($3 / 10) * 10; if (p > i) { i = p; printf "setup:       installing %d%%\n", p; fflush() } }' \
      || true
  rm -f /usr/sbin/policy-rc.d
  for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || fail "apt-get install ($p is not installed)"
  done
else
  step "Debian packages: all ${#apt_packages[@]} present"
fi

# BCC compiles at run time against /lib/modules/$(uname -r)/build. This kernel
# ships no headers; Debian's generic headers are sound for programs that use
# UAPI types only (ours do). See README "eBPF datapath".
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$hdr" ]; then
    step "kernel headers for BCC: linking $hdr for $kver"
    common=${hdr%-amd64}-common
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$hdr" "/lib/modules/$kver/build"
    [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$kver/source"
  else
    step "kernel headers for BCC: none found (the eBPF datapath will not compile)"
  fi
else
  step "kernel headers for BCC: present for $kver"
fi
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true

# The virtual environment uses Debian's Python so BCC (system package) and
# cloud-init's modules are importable; pip packages take precedence.
if [ ! -x "$venv/bin/python" ]; then
  step "virtual environment: creating $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv" >>"$log" 2>&1 || fail "python3 -m venv"
else
  step "virtual environment: $venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
step "Python packages: pip, setuptools, then the project with its dev tools (pyproject.toml)"
"${pip[@]}" install -q --upgrade pip "setuptools>=77" >>"$log" 2>&1 || fail "pip upgrade"
"${pip[@]}" install -q -e "$here[dev]" >>"$log" 2>&1 || fail "pip install -e .[dev]"
echo "setup: done (venv: $venv, log: $log)"
