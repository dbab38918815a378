#!/usr/bin/env bash
# Builds the `base` sandbox template: a Debian bookworm rootfs made with debootstrap, shaped like
# E2B's templates (users root and `user` uid 1000 with /home/user, passwordless sudo, umask 022).
#
#   deploy/build-template.sh [TEMPLATES_DIR]     (default: .sandgate/templates)
#
# Result: TEMPLATES_DIR/base/rootfs. Cached: an existing complete template (marked by
# TEMPLATES_DIR/base/.complete) is reused; a half-built one is removed and rebuilt, so an
# interrupted run never leaves a broken template behind.
set -euo pipefail

dir=${1:-.sandgate/templates}
name=base
dest="$dir/$name"
if [[ -f $dest/.complete ]]; then
  echo "template $name: cached at $dest" >&2
  exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "build-template: must run as root (debootstrap)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-template: debootstrap missing (run deploy/install-deps.sh)" >&2; exit 1; }

# The machine's configured Debian mirror (deb822 or one-line format).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[[ -n $mirror ]] || mirror=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[[ -n $mirror ]] || mirror=http://deb.debian.org/debian

tmp="$dir/.$name.building"
rm -rf "$tmp"
mkdir -p "$tmp"
echo "template $name: debootstrap from $mirror (about a minute)" >&2
debootstrap --variant=minbase \
  --include=bash,coreutils,python3,procps,sudo,git,curl,ca-certificates,iproute2,locales \
  bookworm "$tmp/rootfs" "$mirror" >"$dir/.$name.log" 2>&1 || {
  echo "build-template: debootstrap failed; log in $dir/.$name.log" >&2; exit 1; }

r="$tmp/rootfs"
chroot "$r" /usr/sbin/useradd --create-home --home-dir /home/user --uid 1000 --shell /bin/bash user
echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' >"$r/etc/sudoers.d/user"
chmod 0440 "$r/etc/sudoers.d/user"
echo 'umask 022' >"$r/etc/profile.d/umask.sh"
echo "sandbox" >"$r/etc/hostname"
printf 'nameserver 127.0.0.1\n' >"$r/etc/resolv.conf"
# Shrink: package caches and docs are of no use inside a sandbox.
rm -rf "$r/var/cache/apt/archives/"*.deb "$r/var/lib/apt/lists/"* "$r/usr/share/doc" "$r/usr/share/man"
# Mount points the runtime fills.
mkdir -p "$r/opt/sandgate" "$r/run/sandgate"

touch "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "template $name: built at $dest ($(du -sh "$dest/rootfs" | cut -f1))" >&2
