#!/usr/bin/env bash
# The stand-ins' base image, jewel-standin/debian:bookworm: a `debootstrap --variant=minbase`
# Debian imported with `docker import`, carrying this host's CA bundle (package downloads inside
# builds go through a TLS proxy whose certificate only the host's bundle has) and pip/npm pointed
# at it. Cached by tag: built once per engine.
set -euo pipefail
TAG=jewel-standin/debian:bookworm
if docker image inspect "$TAG" >/dev/null 2>&1; then exit 0; fi
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$(mktemp -d /var/tmp/standin-root.XXXXXX)"
# `|| true`: debootstrap unmounts them itself, and under `set -e` a failed umount (64) in the trap
# would become the script's exit status.
trap 'umount "$root/proc" "$root/sys" 2>/dev/null || true; rm -rf --one-file-system "$root"' EXIT
echo "standins: debootstrap bookworm (minbase) from $MIRROR" >&2
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$MIRROR" >/dev/null
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# Kept by any later update-ca-certificates (an apt-get install of a package that triggers it).
cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host-bundle.crt"
mkdir -p "$root/etc/xdg/pip"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndisable-pip-version-check = true\ntimeout = 180\n' > "$root/etc/pip.conf"
printf 'cafile=/etc/ssl/certs/ca-certificates.crt\nfund=false\naudit=false\nupdate-notifier=false\n' > "$root/etc/npmrc"
# Smaller layers: no apt caches, docs or locales (as Debian's own docker images).
printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
  > "$root/etc/dpkg/dpkg.cfg.d/01-nodoc"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
  -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  -c 'CMD ["bash"]' - "$TAG" >/dev/null
echo "standins: built $TAG" >&2
