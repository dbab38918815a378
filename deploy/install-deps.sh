#!/usr/bin/env bash
# Installs every Debian package that the build, the tests and the local cluster need.
# Idempotent and non-interactive: packages already present are skipped without touching apt.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git ca-certificates curl
  libh2o-dev libuv1-dev libssl-dev libwslay-dev libhiredis-dev libpq-dev libmbedtls-dev
  libyaml-dev libjansson-dev libcmocka-dev zlib1g-dev libnftables-dev
  postgresql redis-server
  runc iproute2 nftables debootstrap util-linux procps psmisc
  nodejs npm wrk nginx-light openssl
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    # nodejs/npm may come from elsewhere on the machine: a working node + npm is enough.
    if [[ $p == nodejs || $p == npm ]] && command -v "${p/nodejs/node}" >/dev/null; then continue; fi
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages start system-wide servers; sandgate runs its own under .sandgate/.
  for svc in postgresql redis-server nginx; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi
