#!/usr/bin/env bash
# Builds the Debian package dist/interceptor_<version>_amd64.deb with
# Debian's own tools (python3 -m venv, pip, dpkg-deb), on Debian 12 as root:
#
#   /opt/interceptor/                 private virtual environment: the package
#                                     and its Python dependencies (pyproject.toml);
#                                     Debian's Python and python3-bpfcc underneath
#   /usr/bin/interceptor              -> /opt/interceptor/bin/interceptor
#   /lib/systemd/system/              interceptor-node.service, interceptor-backend.service
#   /usr/lib/interceptor/node-stop-post
#   /usr/share/doc/interceptor/       README, example configs (examples/*.toml)
#
# BCC and kernel headers are Recommends (apt installs them by default): the
# eBPF datapath needs them, an nft-only node does not (the node imports BCC
# only for datapath = "ebpf").
#
# Maintainer scripts: postinst creates the system user `interceptor` (the
# backend runs as it), copies the example configs to /etc/interceptor/
# (mode 0600) only when absent, so an upgrade never overwrites them, and
# restarts running services on upgrade (the node hands its listeners over);
# nothing is enabled or started on a fresh install. prerm on removal stops
# both services and removes the node's kernel state; postrm purge removes
# the configs, the state directory and the user.
#
#   bash scripts/build-deb.sh [OUTDIR]      (default: dist/)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/dist}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/pyproject.toml" | head -n 1)
arch=$(dpkg --print-architecture)
prefix=/opt/interceptor
log=$(mktemp /tmp/interceptor-build-deb.XXXXXX.log)
stage=$(mktemp -d /tmp/interceptor-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

echo "build-deb: [1/4] virtual environment $prefix (staged in $stage)"
/usr/bin/python3 -m venv --system-site-packages "$stage$prefix" >>"$log" 2>&1
echo "build-deb: [2/4] the package and its runtime dependencies (pip; log: $log)"
# --ignore-installed: every dependency goes into the environment, even one
# this build machine happens to have as a Debian package (the target may not).
"$stage$prefix/bin/python" -m pip --disable-pip-version-check --no-input install -q \
    --no-cache-dir --no-compile --ignore-installed "$here" >>"$log" 2>&1 \
  || { tail -n 30 "$log" >&2; exit 1; }
# Installers are not needed at run time.
"$stage$prefix/bin/python" -m pip --disable-pip-version-check uninstall -q -y pip setuptools \
    >>"$log" 2>&1
# The environment was built under $stage: point it at where it is installed.
grep -rlI --null "$stage" "$stage$prefix" | xargs -0 -r sed -i "s|$stage||g"
if grep -rqI "$stage" "$stage$prefix"; then
  echo "build-deb: $stage still referenced in the environment" >&2
  exit 1
fi
find "$stage$prefix" -name __pycache__ -prune -exec rm -rf {} +

echo "build-deb: [3/4] units, helper, docs, maintainer scripts"
install -d "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/usr/lib/interceptor" \
    "$stage/usr/share/doc/interceptor/examples" "$stage/DEBIAN"
ln -s "$prefix/bin/interceptor" "$stage/usr/bin/interceptor"
install -m 0644 "$here"/deploy/systemd/*.service "$stage/lib/systemd/system/"
install -m 0755 "$here/deploy/systemd/node-stop-post" "$stage/usr/lib/interceptor/"
install -m 0644 "$here/README.md" "$stage/usr/share/doc/interceptor/"
install -m 0644 "$here"/deploy/config/*.toml "$stage/usr/share/doc/interceptor/examples/"
installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)

cat > "$stage/DEBIAN/control" <<EOF
Package: interceptor
Version: $version
Architecture: $arch
Maintainer: interceptor developers <interceptor@localhost>
Installed-Size: $installed_kb
Depends: python3 (>= 3.11), python3 (<< 3.12), nftables, iproute2, systemd, adduser
Recommends: python3-bpfcc, linux-headers-amd64
Section: net
Priority: optional
Description: link-local metadata service (169.254.169.254) for virtual machines
 A node daemon per compute node (nftables or eBPF datapath, per-tap identity,
 per-VM cache) and a central backend (REST API, SQLite or PostgreSQL, change
 feed). Guests read EC2, OpenStack and NoCloud metadata at 169.254.169.254.
 Nothing runs until configured: edit /etc/interceptor/*.toml, then
 systemctl enable --now interceptor-backend interceptor-node.
EOF

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd interceptor >/dev/null; then
    adduser --system --group --home /nonexistent --no-create-home \
      --gecos "interceptor backend" interceptor >/dev/null
  fi
  install -d -m 0755 /etc/interceptor
  for name in node backend; do
    # Examples only where there is no config yet: an upgrade keeps the operator's.
    if [ ! -e "/etc/interceptor/$name.toml" ]; then
      install -m 0600 -o root -g root "/usr/share/doc/interceptor/examples/$name.toml" \
        "/etc/interceptor/$name.toml"
    fi
  done
  /opt/interceptor/bin/python -m compileall -q /opt/interceptor/lib >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    # Upgrade: restart what runs (the node hands its listeners over); a
    # fresh install starts nothing before the operator has configured it.
    if [ -n "${2:-}" ]; then
      systemctl try-restart interceptor-backend.service interceptor-node.service || true
    fi
  fi
fi
exit 0
EOF

cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ]; then
  if [ -d /run/systemd/system ]; then
    systemctl disable --now interceptor-node.service interceptor-backend.service \
      >/dev/null 2>&1 || true
  fi
  # Whatever the node left in the kernel (idempotent; both datapaths).
  /opt/interceptor/bin/interceptor node --config /etc/interceptor/node.toml --cleanup \
    --no-keep-datapath-on-exit >/dev/null 2>&1 \
  || /opt/interceptor/bin/interceptor node --cleanup --no-keep-datapath-on-exit >/dev/null 2>&1 \
  || true
fi
find /opt/interceptor -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
EOF

cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -f /etc/interceptor/node.toml /etc/interceptor/backend.toml
  rmdir /etc/interceptor 2>/dev/null || true
  rm -rf /var/lib/interceptor /var/lib/interceptor-node
  if getent passwd interceptor >/dev/null; then
    deluser --system interceptor >/dev/null 2>&1 || true
  fi
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
EOF
chmod 0755 "$stage"/DEBIAN/postinst "$stage"/DEBIAN/prerm "$stage"/DEBIAN/postrm

echo "build-deb: [4/4] dpkg-deb"
mkdir -p "$out"
deb="$out/interceptor_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >>"$log" 2>&1 \
  || { tail -n 30 "$log" >&2; exit 1; }
echo "build-deb: done: $deb ($(du -h "$deb" | cut -f1))"
