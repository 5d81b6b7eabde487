#!/usr/bin/env bash
# Installs everything the project needs on Debian 12 (as root): system
# packages, kernel headers for BCC, and a virtual environment with the
# package and its development tools. Idempotent: safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${INTERCEPTOR_VENV:-$here/.venv}

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and programs the kernel)" >&2
  exit 2
fi

apt_packages=(
  nftables iproute2 tcpdump procps kmod curl ca-certificates
  python3 python3-venv python3-dev gcc
  python3-bpfcc bpfcc-tools linux-headers-amd64
  qemu-system-x86 linux-image-amd64 busybox-static cpio
  cloud-init postgresql prometheus wrk nginx-light systemd
  libarchive-tools openssl  # tests: unpack ISO images (bsdtar), make a private CA
  ruby vagrant  # tests only: check the Vagrantfile (ruby -c, vagrant validate)
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # Nothing may start at install time (no init system on CI machines).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

# BCC compiles at run time against /lib/modules/$(uname -r)/build. This kernel
# ships no headers; Debian's generic headers are sound for programs that use
# UAPI types only (ours do). See README "eBPF datapath".
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$hdr" ]; then
    common=${hdr%-amd64}-common
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$hdr" "/lib/modules/$kver/build"
    [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$kver/source"
  fi
fi
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true

# The virtual environment uses Debian's Python so BCC (system package) and
# cloud-init's modules are importable; pip packages take precedence.
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e "$here[dev]"
echo "setup: done (venv: $venv)"
