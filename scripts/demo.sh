#!/usr/bin/env bash
# The main job on this machine: set up, deploy the example app to the local agent (its deploy captures
# a memory checkpoint right after on_start), let it scale to zero, call it (a start restored from the
# checkpoint) and again (warm), and show both profiles and the app's status. The example is copied
# with keep_warm_seconds: 2 so that the demo sees a scale-to-zero without waiting a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BEAMCTL=$PWD/.venv/bin/beamctl
task_id() { "$PWD/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["task_id"])'; }
app=$(mktemp -d /tmp/beamctl-demo.XXXXXX)
cp examples/hello/app.py examples/hello/beam.yaml "$app/"
sed -i 's/^keep_warm_seconds: .*/keep_warm_seconds: 2/' "$app/beam.yaml"

echo "== beamctl deploy -f $app   (the first build may make a base image: about a minute)"
"$BEAMCTL" deploy -f "$app"
echo "== waiting 3 s: the idle container scales to zero"
sleep 3
echo "== beamctl call hello '{\"name\": \"Ada\"}'   (no container: restored from the checkpoint)"
cold=$("$BEAMCTL" call hello '{"name": "Ada"}' --json | task_id)
echo "== beamctl call hello '{\"name\": \"Bo\"}'    (warm)"
warm=$("$BEAMCTL" call hello '{"name": "Bo"}' --json | task_id)
echo "== beamctl profile $cold"
"$BEAMCTL" profile "$cold"
echo "== beamctl profile $warm"
"$BEAMCTL" profile "$warm"
echo "== beamctl status hello"
"$BEAMCTL" status hello
echo "== beamctl tasks hello"
"$BEAMCTL" tasks hello -n 5
