#!/bin/sh
# The one device check for issue 6, run on a lent H200 machine by the `run` tool (not by CI):
#   prepare here, once:  scripts/carry-criu.sh            (copies this machine's CRIU prefix into .carry/criu)
#   then:                run(command="sh bench/gpu_device.sh", carry=[".carry"], timeout_s=540)
# It installs the carried CRIU (17 MB, no network there) behind a wrapper, checks that CRIU can work on
# that machine's kernel (a gVisor machine cannot: it says so and stops), then runs bench/gpu_snapshot.py
# with the machine's own python3 (torch and safetensors are there) and leaves the JSON and the log in $OUT.
set -eu
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PREFIX=$PWD/.carry/criu
if [ ! -x "$PREFIX/usr/sbin/criu" ]; then
    echo "gpu_device: no carried CRIU in .carry/criu: run scripts/carry-criu.sh here first" >&2
    exit 2
fi
LIB=$PREFIX/usr/lib/x86_64-linux-gnu
cat > /usr/local/bin/criu <<WRAP
#!/bin/sh
exec "$LIB/ld-linux-x86-64.so.2" --library-path "$LIB" "$PREFIX/usr/sbin/criu" "\$@"
WRAP
chmod 755 /usr/local/bin/criu
{
    echo "== uname: $(uname -r)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    echo "== criu --version"; criu --version
    echo "== criu check"; criu check || echo "criu check FAILED (a gVisor machine cannot run CRIU)"
} 2>&1 | tee "$OUT/device.log"
PYTHONUNBUFFERED=1 python3 bench/gpu_snapshot.py --out "$OUT/gpu_snapshot.json" --budget-s 420 2>&1 \
    | tee -a "$OUT/device.log"
