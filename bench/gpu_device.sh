#!/bin/sh
# The one device check for issues 6 and 20, run on a lent H200 machine by the `run` tool (not by CI):
#   prepare here, once:  scripts/carry-criu.sh            (copies this machine's CRIU prefix into .carry/criu)
#   then:                run(command="sh bench/gpu_device.sh [--thp-ab N]", carry=[".carry"], timeout_s=560)
# It installs the carried CRIU (17 MB, no network there) behind a wrapper, checks that CRIU can work on
# that machine's kernel (a gVisor machine cannot: it says so and stops), then runs bench/gpu_snapshot.py
# with the machine's own python3 (torch and safetensors are there), then bench/gpu_driver_probe.py (what the
# real driver answers where the fake in tests/agent/test_cuda_ckpt.py assumes) and the GPU unit tests (no
# conftest: that machine lacks docker, jsonschema, paramiko), and leaves the JSONs and the log in $OUT.
# Each step has its own timeout, so a hang in one still leaves the others' results.
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
    echo "== a container engine and the NVIDIA container runtime (issue 20 part 2 item 2)"
    for b in docker dockerd containerd runc nvidia-container-runtime nvidia-container-cli nvidia-ctk; do
        echo "$b: $(command -v $b || echo missing)"
    done
    grep -w overlay /proc/filesystems || echo "overlay: not in /proc/filesystems"
    echo "cgroup: $(stat -fc %T /sys/fs/cgroup)"; python3 --version; free -g | head -2; df -h /var/tmp | tail -1
} 2>&1 | tee "$OUT/device.log"
export PYTHONUNBUFFERED=1
timeout 330 python3 bench/gpu_snapshot.py --out "$OUT/gpu_snapshot.json" --budget-s 300 "$@" 2>&1 | tee -a "$OUT/device.log"
echo "== driver probe" | tee -a "$OUT/device.log"
timeout 120 python3 bench/gpu_driver_probe.py --out "$OUT/driver_probe.json" 2>&1 | tee -a "$OUT/device.log"
echo "== GPU unit tests" | tee -a "$OUT/device.log"
timeout 60 python3 -m pytest -q -p no:cacheprovider --noconftest tests/agent/test_cuda_ckpt.py \
    tests/agent/test_gpu_snapshots.py 2>&1 | tail -15 | tee -a "$OUT/device.log"
