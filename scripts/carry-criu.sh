#!/bin/sh
# Copy this machine's CRIU prefix (scripts/install-criu.sh) into .carry/criu (git-ignored), for a device
# machine that has no CRIU and no network: bench/gpu_device.sh installs it there. About 17 MB.
set -eu
cd "$(dirname "$0")/.."
SRC=${BEAMCTL_CRIU_PREFIX:-/opt/beamctl/criu}
[ -x "$SRC/usr/sbin/criu" ] || { echo "carry-criu: no CRIU in $SRC: run scripts/setup.sh first" >&2; exit 2; }
rm -rf .carry/criu
mkdir -p .carry
cp -a "$SRC" .carry/criu
rm -rf .carry/criu/usr/share/doc .carry/criu/usr/share/man .carry/criu/usr/lib/x86_64-linux-gnu/gconv
du -sh .carry/criu
