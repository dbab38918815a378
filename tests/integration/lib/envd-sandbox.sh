#!/usr/bin/env bash
# Test helper: runs the envd bundle as PID 1 of a throw-away sandbox made from a template rootfs.
#
#   envd-sandbox.sh ROOTFS BUNDLE SCRATCH PORT TOKEN_FILE [VAR=VALUE ...] [-- ENVD_ARGS ...]
#
# Run it under `unshare --mount --pid --fork` (the caller does): the mounts below live in that
# private mount namespace and vanish with it. The rootfs is never written: an overlay puts the
# sandbox's changes in SCRATCH/upper. The bundle is bind-mounted read-only at /opt/sandgate, as
# the node agent does; envd gets a fresh /proc, a minimal /dev with its own devpts instance, the
# token file at /run/sandgate/token (envd unlinks it) and exactly the VAR=VALUE environment.
# The network namespace is the caller's, so envd listens on 127.0.0.1:PORT of the host.
set -euo pipefail
chroot_bin=$(command -v chroot)
rootfs=$1 bundle=$2 scratch=$3 port=$4 token_file=$5
shift 5
vars=()
while (($#)) && [[ $1 != -- ]]; do vars+=("$1"); shift; done
(($#)) && shift
m="$scratch/merged"
mkdir -p "$scratch/upper" "$scratch/work" "$m"
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$scratch/upper,workdir=$scratch/work" "$m"
mkdir -p "$m/opt/sandgate" "$m/run/sandgate" "$m/proc" "$m/dev"
mount --bind "$bundle" "$m/opt/sandgate"
mount -o remount,bind,ro "$m/opt/sandgate"
mount -t proc proc "$m/proc"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$m/dev"
for d in null zero full random urandom tty; do
  touch "$m/dev/$d"
  mount --bind "/dev/$d" "$m/dev/$d"
done
mkdir -p "$m/dev/pts" "$m/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$m/dev/pts"
ln -s pts/ptmx "$m/dev/ptmx"
ln -s /proc/self/fd "$m/dev/fd"
mount -t tmpfs -o mode=1777 tmpfs "$m/dev/shm"
if [[ $token_file != - ]]; then
  cp "$token_file" "$m/run/sandgate/token"
  chmod 0600 "$m/run/sandgate/token"
  exec env -i "${vars[@]}" "$chroot_bin" "$m" /opt/sandgate/sandgate-envd --listen 127.0.0.1 \
    --port "$port" --token-file /run/sandgate/token "$@"
fi
exec env -i "${vars[@]}" "$chroot_bin" "$m" /opt/sandgate/sandgate-envd --listen 127.0.0.1 --port "$port" "$@"
