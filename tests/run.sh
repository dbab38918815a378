#!/usr/bin/env bash
# Sets up and runs every test: packages, build (warnings are errors, assert() kept: h2o's inline
# assertions catch misuse of its lists and buffers), the base template (cached),
# the npm test dependencies, cmocka unit tests and fuzz-corpus replays (ctest), then the
# integration and end-to-end suites (node:test) against real PostgreSQL, Redis, node agents,
# envd and the official E2B SDK. Needs root (namespaces, cgroups, runc).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "tests/run.sh: run as root (sandboxes need namespaces and runc)" >&2; exit 1; }

deploy/install-deps.sh
cmake --preset ci >/dev/null
cmake --build build -j2

export SANDGATE_TEMPLATES=${SANDGATE_TEMPLATES:-/var/lib/sandgate-cache/templates}
export SG_TEMPLATES_DIR=$SANDGATE_TEMPLATES
deploy/build-template.sh "$SANDGATE_TEMPLATES"

(cd tests && npm ci --no-audit --no-fund --loglevel=error)

ctest --test-dir build --output-on-failure

cd tests
node --test --test-concurrency=1 integration/
