#!/usr/bin/env bash
# A local test fleet for multi-host experiments: containers that each run their own sshd and dockerd
# (tests/fleet/hosts.py; the integration tests start their own). As root, after ./scripts/setup.sh:
#   scripts/testfleet.sh up [N]    start testhost-1..N (default 3); the first run builds the image (~80 s)
#   scripts/testfleet.sh env       export lines for beamctl: eval "$(scripts/testfleet.sh env)"
#   scripts/testfleet.sh down      remove the hosts and their Docker data (the image stays)
#   scripts/testfleet.sh build     only build the host image
# --dir DIR (after the command) keeps the client files elsewhere than $TMPDIR/beamctl-testfleet.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -x $REPO/.venv/bin/python ]] || { echo "testfleet: no $REPO/.venv: run ./scripts/setup.sh" >&2; exit 1; }
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$REPO/.venv/bin/python" -m tests.fleet.hosts "${@:-up}"
