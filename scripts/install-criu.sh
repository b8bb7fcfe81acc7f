#!/usr/bin/env bash
# Install CRIU >= 4.2 into a private prefix plus a `criu` wrapper on PATH. Idempotent; run as root.
#
# Why not `apt-get install criu`: Debian bookworm's criu 3.17 fails `criu check` on the 6.x kernels we
# run on ("vdso: Unexpected rt vDSO area bounds"). Why >= 4.2: Linux 6.16 limited SO_PASSCRED/SO_PASSSEC
# to AF_UNIX and netlink sockets, and CRIU 4.1.x then fails to dump any process holding a TCP socket
# ("sockets: Can't get 1:16 opt: Operation not supported"; upstream criu #2705/#2718, fixed in 4.2), so
# it cannot checkpoint an app container (the runtime listens on :8000). Debian forky has 4.2.1 (trixie
# only 4.1.1). Its criu needs forky's libc6, so we unpack criu and every library it depends on (libc6
# included) into PREFIX with `dpkg -x` and run it through PREFIX's own dynamic loader. Nothing from
# forky is installed into the system, and apt is pointed at the suite only through command-line options:
# the machine's own bookworm package lists, caches and dpkg database stay untouched.
# An existing prefix older than 4.2 (e.g. trixie's 4.1.1) is replaced. BEAMCTL_CRIU_SUITE picks another
# suite; the script fails, saying what it found, if that suite's criu is older than 4.2 or does not run.
set -euo pipefail

PREFIX=${BEAMCTL_CRIU_PREFIX:-/opt/beamctl/criu}
WRAPPER=${BEAMCTL_CRIU_WRAPPER:-/usr/local/bin/criu}
MIRROR=${BEAMCTL_CRIU_MIRROR:-${BEAMCTL_TRIXIE_MIRROR:-http://deb.debian.org/debian}}
SUITE=${BEAMCTL_CRIU_SUITE:-forky}
MIN_VERSION=4.2   # major.minor; see above
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg   # bookworm's keyring holds trixie's and forky's keys
LIBDIR=$PREFIX/usr/lib/x86_64-linux-gnu

say() { printf '[setup] criu: %s\n' "$*"; }
die() { printf '[setup] criu: ERROR: %s\n' "$*" >&2; exit 1; }

# "Version: 4.2.1" -> "4.2" (major.minor); nothing when the text has no version.
major_minor() { sed -n 's/^Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1; }

criu_version() {  # prints major.minor of the criu on PATH, or nothing
    command -v criu >/dev/null 2>&1 || return 0
    criu --version 2>/dev/null | major_minor
}

version_ok() {  # version_ok 4.10 -> true when >= MIN_VERSION (numeric per part, so 4.10 > 4.2)
    [[ -n $1 ]] || return 1
    local a=${1%%.*} b=${1#*.} ma=${MIN_VERSION%%.*} mb=${MIN_VERSION#*.}
    ((a > ma || (a == ma && b >= mb)))
}

# `criu check` must say "Looks good". It also prints "rlimit: Can't setup RLIMIT_NOFILE" on every run
# in these VMs; that line is harmless.
check_criu() {
    local out
    out=$(criu check 2>&1) || true
    grep -q 'Looks good' <<<"$out" || die "'criu check' failed:"$'\n'"$out"
}

install_criu() {
    local work apt_opts pkgs
    work=$(mktemp -d /tmp/beamctl-criu.XXXXXX)
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$work/empty" "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
    echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$work/sources.list"
    : >"$work/status"
    # Private sources, lists, cache and an empty dpkg status: candidates are computed as if nothing were
    # installed, so the host's bookworm packages never shadow a trixie library we need in the prefix.
    apt_opts=(-q -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::status=$work/status"
        -o "Dir::Etc::preferences=/dev/null" -o "Dir::Etc::preferencesparts=$work/empty"
        -o "APT::Sandbox::User=root")
    apt-get "${apt_opts[@]}" update >"$work/update.log" 2>&1 \
        || die "apt-get update for $SUITE failed:"$'\n'"$(tail -n 20 "$work/update.log")"
    # criu plus the closure of its hard dependencies (Depends/Pre-Depends only). For forky's criu 4.2.1
    # (2026-11) that is criu, libcompel1, libc6, libc-gconv-modules-extra, libgcc-s1, gcc-16-base, libbsd0,
    # libmd0, libuuid1, libnet9, libnl-3-200, libprotobuf-c1, libnftables1, libnftnl11, libmnl0,
    # libjansson4, libxtables12, libgnutls30t64, libhogweed6t64, libnettle8t64, libgmp10, libidn2-0,
    # libunistring5, libp11-kit0, libffi8, libtasn1-6 (26 packages; the list lands in PREFIX/PACKAGES).
    mapfile -t pkgs < <(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances criu | grep -E '^[a-z0-9]' | sort -u)
    [[ " ${pkgs[*]} " == *" libc6 "* && " ${pkgs[*]} " == *" criu "* ]] \
        || die "unexpected dependency list from $SUITE: ${pkgs[*]:-<empty>}"
    # Refuse before downloading anything when the suite's criu is too old (e.g. forky moved on and
    # dropped it, or BEAMCTL_CRIU_SUITE names an older suite).
    local candidate
    candidate=$(apt-cache "${apt_opts[@]}" show --no-all-versions criu 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
    version_ok "$(printf 'Version: %s\n' "${candidate#*:}" | major_minor)" \
        || die "Debian $SUITE offers criu ${candidate:-<none>}, need >= $MIN_VERSION" \
            "(set BEAMCTL_CRIU_SUITE to a suite that has it)"
    (cd "$work/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]}" >"$work/download.log" 2>&1) \
        || die "apt-get download failed:"$'\n'"$(tail -n 20 "$work/download.log")"
    local deb
    for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done
    # Documentation and glibc's iconv modules (gconv) are not needed: ~17 MB instead of ~30 MB.
    rm -rf "$work/root/usr/share/doc" "$work/root/usr/share/man" "$work/root/usr/share/locale" \
        "$work/root/usr/share/lintian" "$work/root/usr/lib/x86_64-linux-gnu/gconv"
    [[ -x $work/root/usr/sbin/criu && -e $work/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ]] \
        || die "unpacked packages lack usr/sbin/criu or the dynamic loader"
    # Run the unpacked criu before it replaces anything: a suite whose criu does not start here (or is
    # too old) must not replace a working prefix.
    local lib=$work/root/usr/lib/x86_64-linux-gnu got
    got=$("$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$work/root/usr/sbin/criu" --version 2>&1) || true
    version_ok "$(major_minor <<<"$got")" \
        || die "criu $candidate from Debian $SUITE does not run as >= $MIN_VERSION here; it printed:"$'\n'"$got"
    # Swap the new prefix in whole, so an interrupted run never leaves a half-written one behind.
    mkdir -p "$(dirname "$PREFIX")"
    rm -rf "$PREFIX.old"
    [[ -e $PREFIX ]] && mv "$PREFIX" "$PREFIX.old"
    mv "$work/root" "$PREFIX"
    rm -rf "$PREFIX.old"
    chmod 755 "$PREFIX"
    printf '%s\n' "${pkgs[@]}" >"$PREFIX/PACKAGES"
    # Run criu through the prefix's own loader with --library-path (not LD_LIBRARY_PATH): programs criu
    # itself starts (ip, iptables-restore, ...) then use the host's libraries as usual. runc and dockerd
    # find this wrapper by looking up `criu` on PATH; exec keeps the fds runc passes to `criu swrk`.
    cat >"$WRAPPER" <<EOF
#!/bin/sh
# Generated by beamctl scripts/install-criu.sh: CRIU $candidate from Debian $SUITE in a private prefix.
exec "$LIBDIR/ld-linux-x86-64.so.2" --library-path "$LIBDIR" "$PREFIX/usr/sbin/criu" "\$@"
EOF
    chmod 755 "$WRAPPER"
}

# Bind mounts that config.json does not list (an OCI prestart hook's, as NVIDIA's mounts libcuda and
# /dev/nvidia*) fail runc's dump ("doesn't have a proper root mount"): CRIU takes them as external mounts and
# binds them from the same host paths on restore (beamctl/agent/mountpoints.py makes their mountpoints).
external_mounts() {
    local conf=${BEAMCTL_CRIU_RUNC_CONF:-/etc/criu/runc.conf}
    mkdir -p "$(dirname "$conf")"
    if grep -qE '^[[:space:]]*external[[:space:]]+mnt\[\]' "$conf" 2>/dev/null; then return; fi
    printf '# Added by beamctl scripts/install-criu.sh: mounts outside config.json (an OCI hook'"'"'s) are external\nexternal mnt[]\n' >>"$conf"
    say "$conf: external mnt[] (an OCI hook's mounts)"
}

# runc hands CRIU the options in /etc/criu/runc.conf. CRIU's default network lock (iptables) runs
# iptables-restore around every checkpoint and restore of a container: 70-85 ms of a 0.3-0.6 s capture or
# restore here (docs/BENCHMARKS.md). `network-lock nftables` locks the same way through libnftables, in
# process. Written only when the file chooses no lock method yet, and only if a trial dump of a process
# in its own network namespace works with it (a kernel without nf_tables keeps CRIU's default).
# No CRIU plugins for runc's dumps and restores: with NVIDIA's CUDA plugin CRIU would restore and unlock a
# GPU container's processes itself; the agent drives those steps (beamctl/agent/gpu_snapshots.py).
no_plugins() {
    local conf=${BEAMCTL_CRIU_RUNC_CONF:-/etc/criu/runc.conf} dir
    dir=$(dirname "$PREFIX")/criu-no-plugins
    mkdir -p "$dir" "$(dirname "$conf")"
    if grep -qE '^[[:space:]]*libdir' "$conf" 2>/dev/null; then return; fi
    printf '# Added by beamctl scripts/install-criu.sh: no CRIU plugins (the agent drives the CUDA steps)\nlibdir %s\n' "$dir" >>"$conf"
    say "$conf: libdir $dir (no plugins)"
}

configure_runc_conf() {
    local conf=${BEAMCTL_CRIU_RUNC_CONF:-/etc/criu/runc.conf} work pid ok=""
    if [[ -f $conf ]] && grep -qE '^[[:space:]]*network-lock' "$conf"; then
        say "$conf already chooses: $(grep -E '^[[:space:]]*network-lock' "$conf" | head -n1)"
        return 0
    fi
    work=$(mktemp -d /tmp/beamctl-criu-lock.XXXXXX)
    setsid unshare --net sleep 30 </dev/null >/dev/null 2>&1 &
    pid=$!
    sleep 0.2
    if criu dump -t "$pid" -D "$work" --leave-running --network-lock nftables -o dump.log >/dev/null 2>&1; then
        ok=1
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [[ -z $ok ]]; then
        say "nftables network lock failed a trial dump here; CRIU keeps its default (iptables):"
        tail -n 3 "$work/dump.log" 2>/dev/null | sed 's/^/[setup] criu:   /' || true
        rm -rf "$work"
        return 0
    fi
    rm -rf "$work"
    mkdir -p "$(dirname "$conf")"
    printf '# Added by beamctl scripts/install-criu.sh: lock container networks through nftables (faster)\nnetwork-lock nftables\n' >>"$conf"
    say "$conf: network-lock nftables"
}

found=$(criu_version)
if version_ok "$found"; then
    say "already there ($(criu --version | head -n1), >= $MIN_VERSION)"
else
    say "installing CRIU >= $MIN_VERSION from Debian $SUITE into $PREFIX (found: ${found:-none})"
    install_criu
    hash -r
    found=$(criu_version)
    version_ok "$found" || die "criu on PATH is still not >= $MIN_VERSION (found ${found:-none} at" \
        "$(command -v criu || echo none)); is $(dirname "$WRAPPER") early enough on PATH?"
fi
check_criu
say "criu check: Looks good"
configure_runc_conf
no_plugins
external_mounts
