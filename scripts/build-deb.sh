#!/usr/bin/env bash
# Builds the Debian package of rtmpq (gateway, edge, certs; amd64) with dpkg-deb:
#   /usr/bin/rtmpq                                  the release build, without debug info
#   /lib/systemd/system/rtmpq-{gateway,edge}.service the units of deploy/systemd
#   /etc/rtmpq/{gateway,edge}.toml                  examples/, kept on remove (conffiles)
#   /usr/share/doc/rtmpq/                           README, copyright
# Installing creates the system user `rtmpq`, its state directory /var/lib/rtmpq (0700) and,
# unless there are some, certificates in /etc/rtmpq for this host's name (keys owner-only);
# it enables nothing (set the origin first). `dpkg -r` keeps configs, certificates and state;
# `dpkg -P` removes them.
#
#   scripts/build-deb.sh                    # -> target/deb/rtmpq_VERSION_amd64.deb (path printed)
#   scripts/build-deb.sh --binary PATH      # package an rtmpq binary built already (the test;
#                                           # compressed fast: a debug build is large)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

binary=""
compress=(-Zxz)
if [ "${1:-}" = "--binary" ]; then
  binary=$2
  compress=(-Zgzip -z1)
else
  cargo build --locked --profile dist --bin rtmpq >&2
  binary=target/dist/rtmpq
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
out="$root/target/deb"
pkg="$out/rtmpq_${version}_amd64"
rm -rf "$pkg"
# Stripped: the package carries no debug info whichever build it is given.
install -D -s -m 755 "$binary" "$pkg/usr/bin/rtmpq"
for unit in rtmpq-gateway rtmpq-edge; do
  # The units' install comments are for a hand install; the package does that.
  sed -e 's#/usr/local/bin/rtmpq#/usr/bin/rtmpq#' -e '/^# .*Install:/,/^# *systemctl enable/d' \
    "deploy/systemd/$unit.service" > "$out/$unit.service"
  install -D -m 644 "$out/$unit.service" "$pkg/lib/systemd/system/$unit.service"
done
install -D -m 640 examples/gateway.toml "$pkg/etc/rtmpq/gateway.toml"
install -D -m 640 examples/edge.toml "$pkg/etc/rtmpq/edge.toml"
install -D -m 644 README.md "$pkg/usr/share/doc/rtmpq/README.md"
cat > "$pkg/usr/share/doc/rtmpq/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: rtmpq
License: MIT or Apache-2.0
EOF

mkdir -p "$pkg/DEBIAN"
cat > "$pkg/DEBIAN/control" <<EOF
Package: rtmpq
Version: $version
Architecture: amd64
Maintainer: rtmpq <rtmpq@localhost>
Depends: adduser, libc6
Section: net
Priority: optional
Description: RTMP over QUIC: an edge beside the pusher, a gateway in front of the origin
 The gateway takes edges' QUIC (or TLS over TCP) connections and hands plain RTMP to
 any origin (nginx-rtmp, SRS, a CDN ingest); the edge takes plain RTMP from a pusher
 on loopback. Live streams keep a latency budget and survive loss, blackouts, network
 changes and restarts.
EOF
printf '/etc/rtmpq/gateway.toml\n/etc/rtmpq/edge.toml\n' > "$pkg/DEBIAN/conffiles"
cat > "$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd rtmpq >/dev/null; then
    adduser --system --group --home /var/lib/rtmpq --no-create-home --quiet rtmpq
  fi
  install -d -o rtmpq -g rtmpq -m 0700 /var/lib/rtmpq
  chgrp rtmpq /etc/rtmpq/gateway.toml /etc/rtmpq/edge.toml
  if [ ! -e /etc/rtmpq/gateway.pem ]; then
    name=$(hostname -f 2>/dev/null || hostname)
    pin=$(/usr/bin/rtmpq certs init --dir /etc/rtmpq --san "$name" --san localhost 2>/dev/null)
    echo "rtmpq: made a CA and gateway certificate for $name in /etc/rtmpq; edges trust it with --ca /etc/rtmpq/ca.pem or --pin $pin"
  fi
  chown rtmpq:rtmpq /etc/rtmpq/ca.key /etc/rtmpq/gateway.key
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
  fi
  echo "rtmpq: set origin in /etc/rtmpq/gateway.toml, then: systemctl enable --now rtmpq-gateway"
fi
EOF
cat > "$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -rf /var/lib/rtmpq
  rm -f /etc/rtmpq/ca.pem /etc/rtmpq/ca.key /etc/rtmpq/gateway.pem /etc/rtmpq/gateway.key
  rmdir /etc/rtmpq 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
EOF
chmod 755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"
dpkg-deb --root-owner-group "${compress[@]}" --build "$pkg" "$pkg.deb" >&2
echo "$pkg.deb"
