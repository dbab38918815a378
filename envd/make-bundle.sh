#!/usr/bin/env bash
# Packs the envd bundle: make-bundle.sh HOST_BINARY BUNDLED_BINARY OUT_DIR
#
# OUT_DIR/sandgate-envd        the executable whose interpreter is /opt/sandgate/lib/ld-linux-*.so
#                              and whose rpath is /opt/sandgate/lib
# OUT_DIR/lib/                 every shared library it loads (from ldd of the host-linked twin,
#                              which has the same dependencies) plus the dynamic loader
# OUT_DIR/run-local.sh         runs the bundle from where it lies (outside a sandbox, for tests)
# The folder is meant to be bind-mounted read-only at /opt/sandgate inside a sandbox rootfs.
set -euo pipefail
host_bin=$1 bundled_bin=$2 out=$3
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/lib"
loader=""
while read -r line; do
  # "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
  if [[ $line == *"=>"* ]]; then
    path=$(awk '{print $3}' <<<"$line")
    [[ $path == /* ]] || continue
    cp -L "$path" "$tmp/lib/$(basename "$path")"
  elif [[ $line == /* ]]; then
    loader=$(awk '{print $1}' <<<"$line")
  fi
done < <(ldd "$host_bin")
[[ -n $loader ]] || { echo "make-bundle: no dynamic loader found in ldd output" >&2; exit 1; }
cp -L "$loader" "$tmp/lib/ld-linux-x86-64.so.2"
cp "$bundled_bin" "$tmp/sandgate-envd"
chmod 0755 "$tmp/sandgate-envd" "$tmp/lib/"*
cat >"$tmp/run-local.sh" <<'SH'
#!/bin/sh
# Runs this bundle outside a sandbox: the bundled loader with the bundled libraries.
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/lib/ld-linux-x86-64.so.2" --library-path "$here/lib" "$here/sandgate-envd" "$@"
SH
chmod 0755 "$tmp/run-local.sh"
touch "$tmp/.stamp"
rm -rf "$out"
mv "$tmp" "$out"
