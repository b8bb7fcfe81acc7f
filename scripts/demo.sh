#!/usr/bin/env bash
# The main job on this machine, as far as beamctl goes today: set up, check the example app, build
# its image and run the image's check. Deploy, call and profile join this script with the agent (issue 4).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BEAMCTL=.venv/bin/beamctl
echo "== beamctl validate -f examples/hello"
"$BEAMCTL" validate -f examples/hello
echo "== beamctl build -f examples/hello (the first build may make a base image: about a minute)"
image=$("$BEAMCTL" build -f examples/hello --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["image"])')
echo "== docker run --rm $image   (the image's check mode)"
docker run --rm "$image"
