#!/usr/bin/env bash
# beamctl development/CI set-up for a Debian 12 (bookworm) machine, run as root:
#   apt packages, Docker Engine (experimental, for checkpoints), CRIU >= 4.2, sshd binary, .venv.
# Idempotent: a re-run with everything present takes a few seconds and changes nothing.
# Needs network access to the Debian mirror and PyPI only (no container registry).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKERD_LOG=/var/log/beamctl-dockerd.log
DOCKERD_PIDFILE=/var/run/docker.pid   # dockerd's default pidfile
APT_PKGS=(docker.io openssh-server openssh-client debootstrap zstd iproute2 procps ca-certificates curl haproxy chromium chromium-driver)
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # sbin dirs may be missing in CI

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root"

# --- 1. apt packages ---------------------------------------------------------------------------------
step_apt() {
    local p missing=()
    for p in "${APT_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then say "apt: all packages already there"; return; fi
    say "apt: installing ${missing[*]}"
    # Keep maintainer scripts from starting services: without this, openssh-server's postinst would start
    # a system sshd on port 22 and docker.io's would start dockerd without --experimental. Debian's
    # policy-rc.d convention (exit 101 = "action forbidden"); only added if the machine has none.
    local added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local rc=0
    # dpkg --configure -a: finish a previously interrupted install, else apt-get refuses to do anything.
    { dpkg --configure -a && apt-get -q update && apt-get -q install -y --no-install-recommends "${missing[@]}"; } \
        >/var/log/beamctl-apt.log 2>&1 || rc=$?
    ((added_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "apt-get failed (rc=$rc):"$'\n'"$(tail -n 20 /var/log/beamctl-apt.log)"
}

# --- 2. Docker Engine ----------------------------------------------------------------------------------
# Docker clients: /usr/local/bin/docker (28.x, preinstalled on these machines) comes before Debian's
# /usr/bin/docker (20.10) on PATH. Measured: the 28.x client negotiates the API version down to the 20.10
# engine's 1.41 by itself (docker version/info/import/run work), so no DOCKER_API_VERSION is needed.
# We verify that with whichever `docker` is first on PATH below.
docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

ensure_daemon_json() {  # checkpoint/restore is an experimental feature in Engine 20.10
    local f=/etc/docker/daemon.json
    mkdir -p /etc/docker
    if [[ ! -s $f ]]; then echo '{"experimental": true}' >"$f"; return; fi
    grep -Eq '"experimental"[[:space:]]*:[[:space:]]*true' "$f" && return
    python3 - "$f" <<'EOF'
import json, sys
p = sys.argv[1]; cfg = json.load(open(p)); cfg["experimental"] = True
json.dump(cfg, open(p, "w"), indent=2)
EOF
}

step_docker() {
    # experimental is set in daemon.json for both paths, so dockerd is started *without* --experimental:
    # dockerd refuses to start when an option is given both as a flag and in daemon.json.
    ensure_daemon_json
    if docker_ok; then
        say "docker: engine already running"
    elif [[ -d /run/systemd/system ]]; then
        say "docker: starting docker.service (systemd)"
        systemctl enable docker >/dev/null 2>&1 || true
        systemctl restart docker
    else
        # No systemd on these VMs (PID 1 is the VM's own init): run dockerd in the background, detached.
        local pid
        pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)
        if [[ -n $pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
            say "docker: dockerd (pid $pid) is starting, waiting for it"
        else
            rm -f "$DOCKERD_PIDFILE"   # stale pidfile from a dead dockerd would make it refuse to start
            say "docker: starting dockerd in the background (log: $DOCKERD_LOG)"
            # Redirect the whole subshell: a process left holding our stdout would make callers that
            # read it through a pipe (CI log capture, `| tee`) wait until dockerd exits.
            (cd / && exec setsid nohup dockerd) </dev/null >>"$DOCKERD_LOG" 2>&1 &
        fi
    fi
    local i
    for ((i = 0; i < 30; i++)); do docker_ok && break; sleep 1; done
    docker_ok || die "Docker Engine did not answer within 30 s. Last lines of $DOCKERD_LOG:"$'\n'"$(tail -n 20 "$DOCKERD_LOG" 2>/dev/null)"
    [[ $(docker info -f '{{.ExperimentalBuild}}') == true ]] \
        || die "the running Docker Engine is not in experimental mode; restart it (daemon.json has experimental: true)"
    local driver
    driver=$(docker info -f '{{.Driver}}')
    [[ $driver == overlay2 ]] || say "docker: WARNING: storage driver is '$driver', not overlay2 (slow)"
    # Exercise the storage driver for real: import an empty image and remove it again.
    local probe=beamctl-setup-probe:latest empty
    empty=$(mktemp -d /tmp/beamctl-empty.XXXXXX)
    if ! tar -C "$empty" -c . | docker import - "$probe" >/dev/null; then
        docker image rm -f "$probe" >/dev/null 2>&1 || true
        die "docker import failed (storage driver $driver)"
    fi
    docker image rm "$probe" >/dev/null
    rmdir "$empty"
}

# --- 3. CRIU -------------------------------------------------------------------------------------------
step_criu() { "$REPO/scripts/install-criu.sh"; }

# --- 4. sshd -------------------------------------------------------------------------------------------
# Tests start their own sshd processes (loopback, own config and host keys); we start no system sshd and
# leave /etc/ssh alone. sshd insists on its privilege-separation directory /run/sshd (lost on reboot).
step_sshd() {
    [[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd missing"
    install -d -m 755 /run/sshd
    local t
    t=$(mktemp -d /tmp/beamctl-sshd.XXXXXX)
    ssh-keygen -q -t ed25519 -N '' -f "$t/host_key"
    printf 'ListenAddress 127.0.0.1:2222\nHostKey %s/host_key\nPidFile %s/sshd.pid\n' "$t" "$t" >"$t/sshd_config"
    if ! /usr/sbin/sshd -t -f "$t/sshd_config" 2>"$t/err"; then
        local err; err=$(cat "$t/err"); rm -rf "$t"; die "sshd -t failed: $err"
    fi
    rm -rf "$t"
    say "sshd: $(/usr/sbin/sshd -V 2>&1 | head -n1) ok (not started)"
}

# --- 5. Python virtual environment ---------------------------------------------------------------------
find_python() {  # the project targets Python 3.11; pyenv's shim or Debian's /usr/bin/python3.11 both do
    local c
    for c in "${BEAMCTL_PYTHON:-}" python3.11 /usr/bin/python3.11; do
        [[ -n $c ]] && command -v "$c" >/dev/null 2>&1 && "$c" -c 'import venv' 2>/dev/null && { echo "$c"; return; }
    done
    die "python3.11 (with the venv module) not found; set BEAMCTL_PYTHON"
}

step_venv() {
    local venv=$REPO/.venv stamp=$REPO/.venv/.beamctl-pyproject.sha256 py
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        py=$(find_python)
        say "venv: creating $venv with $py ($("$py" --version 2>&1))"
        rm -rf "$venv"
        "$py" -m venv "$venv"
        echo '*' >"$venv/.gitignore"   # keep the venv out of git without touching the repo's .gitignore
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    fi
    if [[ ! -f $REPO/pyproject.toml ]]; then
        say "venv: no pyproject.toml yet, skipping 'pip install -e .[test]'"
        return
    fi
    local want
    want=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        say "venv: beamctl[test] already installed (pyproject.toml unchanged)"
        return
    fi
    say "venv: pip install -e '.[test]'"
    rm -f "$stamp"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "${REPO}[test]" \
        || die "pip install -e '${REPO}[test]' failed"
    echo "$want" >"$stamp"
}

# --- 6. summary ----------------------------------------------------------------------------------------
summary() {
    say "summary:"
    say "  docker: client $(docker version -f '{{.Client.Version}}') ($(command -v docker)), server $(docker version -f '{{.Server.Version}}') (API $(docker version -f '{{.Server.APIVersion}}'), $(docker info -f '{{.Driver}}'))"
    say "  criu:   $(criu --version | head -n1) ($(command -v criu)); runc $(runc --version | head -n1 | awk '{print $3}')"
    say "  sshd:   /usr/sbin/sshd"
    say "  venv:   $REPO/.venv/bin/python ($("$REPO/.venv/bin/python" --version 2>&1))"
}

step_apt
step_docker
step_criu
step_sshd
step_venv
summary
