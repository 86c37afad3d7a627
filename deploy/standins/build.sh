#!/usr/bin/env bash
# Builds the stand-ins for the public images the compose files name, under those names, from
# Debian packages (no public image registry answers here; the package registries do). Each image
# carries a label with the hash of its folder: a rerun rebuilds only what changed.
#   deploy/standins/build.sh            all of them
#   deploy/standins/build.sh postgres   one (folder names below)
# Only for the tests (make deploy-test): a user runs the compose files against the real images.
set -euo pipefail
cd "$(dirname "$0")"
declare -A NAMES=(
  [python]=python:3.11-slim
  [postgres]=postgres:16
  [redis]=redis:7
  [azurite]=mcr.microsoft.com/azure-storage/azurite:latest
  [nginx]=nginx:1.27
  [prometheus]=prom/prometheus:v2.53.0
)
./base.sh
base_id="$(docker image inspect -f '{{.Id}}' jewel-standin/debian:bookworm)"
for dir in "${@:-python postgres redis azurite nginx prometheus}"; do
  for one in $dir; do
    name="${NAMES[$one]}"
    digest="$( (echo "$base_id"; tar -c --sort=name --mtime=@0 --owner=0 --group=0 "$one") | sha256sum | cut -c1-16)"
    have="$(docker image inspect -f '{{index .Config.Labels "jewel.standin"}}' "$name" 2>/dev/null || true)"
    if [ "$have" = "$digest" ]; then continue; fi
    echo "standins: building $name" >&2
    start=$SECONDS
    docker build -q --label "jewel.standin=$digest" -t "$name" "$one" >/dev/null
    echo "standins: $name built in $((SECONDS - start)) s" >&2
  done
done
