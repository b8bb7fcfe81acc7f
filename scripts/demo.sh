#!/usr/bin/env bash
# The main job on this machine, as far as beamctl goes today: set up, then check the example app.
# Deploy, call and profile join this script as they land (issues 3 and 4).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BEAMCTL=.venv/bin/beamctl
echo "== beamctl validate -f examples/hello/beam.yaml"
"$BEAMCTL" validate -f examples/hello/beam.yaml
demo=$(mktemp -d /tmp/beamctl-demo.XXXXXX)
echo "== beamctl init $demo/demo && beamctl validate -f $demo/demo/beam.yaml"
"$BEAMCTL" init "$demo/demo"
"$BEAMCTL" validate -f "$demo/demo/beam.yaml"
