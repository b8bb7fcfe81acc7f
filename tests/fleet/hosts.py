"""A fleet of test hosts for multi-host tests (issue 5): containers that each run OpenSSH sshd and their
own dockerd, reached over SSH like real GPU hosts (but CPU-only). Test support code, not product code.

    python -m tests.fleet.hosts build        # the host image only (cached by the hash of its recipe)
    python -m tests.fleet.hosts up 3         # testhost-1..3, client files in $TMPDIR/beamctl-testfleet
    python -m tests.fleet.hosts env          # export lines for beamctl (eval them)
    python -m tests.fleet.hosts down         # removes them (containers and their Docker data volumes)
(scripts/testfleet.sh runs these from anywhere.) Tests use the `fleet` fixture (tests/fleet/conftest.py).

The image `beamctl-testhost:full-<recipe hash>` is Debian bookworm from debootstrap (minbase) with sshd,
python3 (+venv), docker.io, iproute2, iptables, procps, ca-certificates, zstd, and the build machine's
CRIU prefix (/opt/beamctl/criu, scripts/install-criu.sh) with its `criu` wrapper. Its entrypoint is
tini, then INIT below: remount /sys and the cgroup folders read-write, make /dev/net/tun, make the host
key (once per container), write root's authorized_keys, start sshd and dockerd (data root on an
anonymous volume, so overlay2 works), print "testhost: ready" once `docker info` answers.
A plain host (`beamctl-testhost:plain-<hash>`, `Fleet.start(plain=K)`) is a minimal Debian host: only
openssh-server, python3 and docker.io (no zstd, no python3-venv, no CRIU); everything else beamctl
needs there it must bring itself. Its dockerd has the same daemon.json (experimental, for restores).

Hosts run with RUN_OPTIONS (`--privileged` is refused on these machines; ../shared/FIELD-NOTES.md) on
the default bridge, and each is reached at its own port published on the bridge's gateway address,
`root@172.17.0.1:PORT`, the port picked once and kept over stop/start. Why not the others:
- the container's own address: a stopped host's address goes to the next container the engine starts
  (seen within 2 s on a shared engine), so a "host down" test could reach a stranger's sshd, and a
  restarted host comes back elsewhere;
- 127.0.0.1:PORT: that traffic goes through docker-proxy, a userspace copy that cost ~3 s of CPU per GB
  and ran 20-30% slower, in every shipping benchmark. Traffic to the gateway address is DNATed by the
  kernel straight to the container. The gateway is this machine's own: nothing outside reaches it.
A stopped host refuses connections at once; a paused one accepts TCP and never sends the SSH banner.

The client side lives in the fleet's folder: a key (id_ed25519), known_hosts holding each host's key
as read with `docker exec` (never learned over the network), an ssh config for both beamctl
(BEAMCTL_SSH_CONFIG) and OpenSSH (`ssh -F`), and an inventory (BEAMCTL_HOSTS_FILE) naming every host.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = "beamctl-testhost"
BASE_REPO = "beamctl-testhost-base"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("openssh-server", "python3", "python3-venv", "docker.io", "iproute2", "iptables", "procps",
            "ca-certificates", "zstd")
# A plain host, as a minimal Debian install with Docker and sshd is: no zstd, no python3-venv, no CRIU.
PLAIN_PACKAGES = ("openssh-server", "python3", "docker.io")
KINDS = {"full": PACKAGES, "plain": PLAIN_PACKAGES}
CRIU_PREFIX = Path(os.environ.get("BEAMCTL_CRIU_PREFIX", "/opt/beamctl/criu"))  # on this machine
HOST_CRIU_PREFIX = "/opt/beamctl/criu"  # in the hosts, as install-criu.sh puts it on real ones
LABEL = "dev.beamctl.testfleet"  # on every host container: the fleet's id
RECIPE_VERSION = 1  # bump to rerun debootstrap when something not in the recipe text changes
DEBOOTSTRAP_TIMEOUT_S = 900
READY_TIMEOUT_S = 90  # first start on a busy 2-core machine: dockerd takes a few seconds
CONNECT_TIMEOUT_S = 5  # ConnectTimeout in the fleet's ssh config: a paused host fails in ~5 s
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENTRYPOINT = ["/usr/bin/tini", "--", "/usr/local/sbin/testhost-init"]  # tini reaps orphaned shims

# `docker run` options that give a host nearly all privileges (plain --privileged fails here: no
# CAP_SYS_RESOURCE in this sandbox). /var/lib/docker is an anonymous volume: overlay2 on overlayfs fails.
RUN_OPTIONS = ("--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
               "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
               "--tmpfs", "/run:exec,mode=755", "-v", "/var/lib/docker")

INIT = r"""#!/bin/sh
# beamctl test host (tests/fleet/hosts.py): what a GPU host's boot does, in a container. Runs under tini.
set -u
say() { echo "testhost: $*"; }

# Without --privileged, Docker mounts /sys and the cgroup folders read-only; dockerd and CRIU need them
# writable. Each cgroup hierarchy is remounted as a bind (a plain remount of a cgroup v1 superblock that
# the machine's own engine uses fails with "mount point is busy").
mount -o remount,rw /sys || say "cannot remount /sys read-write"
for m in $(awk '$2 ~ "^/sys/fs/cgroup/" { print $2 }' /proc/self/mounts); do
    mount -o remount,rw,bind "$m" || say "cannot remount $m read-write"
done
mkdir -p /dev/net
[ -c /dev/net/tun ] || mknod -m 666 /dev/net/tun c 10 200  # `criu check` wants it

# sshd: the host key is made at a container's first start and kept over stop/start (like a reboot).
[ -s /etc/ssh/ssh_host_ed25519_key ] ||
    ssh-keygen -q -t ed25519 -N '' -C "root@$(hostname)" -f /etc/ssh/ssh_host_ed25519_key
install -d -m 700 /root/.ssh
if [ -n "${TESTHOST_AUTHORIZED_KEYS:-}" ]; then
    printf '%s\n' "$TESTHOST_AUTHORIZED_KEYS" >/root/.ssh/authorized_keys
elif [ -s /etc/testhost/authorized_keys ]; then
    cat /etc/testhost/authorized_keys >/root/.ssh/authorized_keys
fi
[ -e /root/.ssh/authorized_keys ] && chmod 600 /root/.ssh/authorized_keys
unset TESTHOST_AUTHORIZED_KEYS
install -d -m 755 /run/sshd
/usr/sbin/sshd -D -e 2>>/var/log/sshd.log &
sshd=$!

# dockerd (experimental: in /etc/docker/daemon.json), data root /var/lib/docker: an anonymous volume.
dockerd >>/var/log/dockerd.log 2>&1 &
dockerd=$!
trap 'kill -TERM $sshd $dockerd 2>/dev/null; wait $dockerd; exit 0' TERM INT
i=0
until docker info >/dev/null 2>&1; do
    if ! kill -0 $dockerd 2>/dev/null || [ $i -ge 900 ]; then
        say "dockerd did not come up:"; tail -n 20 /var/log/dockerd.log; exit 1
    fi
    i=$((i + 1)); sleep 0.1
done
kill -0 $sshd 2>/dev/null || { say "sshd exited:"; tail -n 20 /var/log/sshd.log; exit 1; }
say ready
wait
"""

SSHD_CONFIG = """\
# beamctl test host: keys only, root allowed (as on a GPU host reached by root@), no PAM, no DNS.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
MaxStartups 64:30:128
MaxSessions 64
"""

DAEMON_JSON = '{"experimental": true}\n'

# As scripts/install-criu.sh writes it: programs criu starts use the host's libraries, criu its own.
CRIU_WRAPPER = f"""#!/bin/sh
# CRIU >= 4.2 in a private prefix (copied by tests/fleet/hosts.py, as scripts/install-criu.sh).
exec "{HOST_CRIU_PREFIX}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path \
"{HOST_CRIU_PREFIX}/usr/lib/x86_64-linux-gnu" "{HOST_CRIU_PREFIX}/usr/sbin/criu" "$@"
"""
# As scripts/install-criu.sh writes it where CRIU's nftables lock works (the hosts share this kernel)
RUNC_CONF = "# runc's options for CRIU (scripts/install-criu.sh)\nnetwork-lock nftables\n"

DOCKERFILE = """\
FROM {base}
{copy_criu}COPY files /
ENV PATH={path}
VOLUME /var/lib/docker
LABEL {label}.recipe={recipe}
ENTRYPOINT {entrypoint}
"""

Progress = Callable[[str], None]


class FleetError(RuntimeError):
    """The fleet could not be built or started; the message says why (and what to run)."""


def _say(text: str) -> None:
    print(f"testfleet: {text}", file=sys.stderr, flush=True)


def docker(*args: str, input: bytes | str | None = None, check: bool = True, timeout: float = 120,
           text: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the engine's own (legacy) builder, as beamctl uses it
    try:
        done = subprocess.run(["docker", *args], input=input, capture_output=True, text=text, timeout=timeout,
                              env=env)
    except FileNotFoundError:
        raise FleetError("no docker client on PATH: run ./scripts/setup.sh") from None
    if check and done.returncode != 0:
        err = done.stderr if text else done.stderr.decode(errors="replace")
        raise FleetError(f"docker {' '.join(args[:3])}... failed (exit {done.returncode}): {err.strip()[-2000:]}")
    return done


# --- the image ---------------------------------------------------------------------------------------

def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if (Path(folder) / d).is_symlink()]):
            path = Path(folder) / name
            st = path.lstat()
            h.update(f"{path.relative_to(root)}\0{st.st_mode:o}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            else:
                with path.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def base_recipe_hash(kind: str = "full") -> str:
    """The slow part (debootstrap, ~1 minute): Debian and the packages, nothing of ours."""
    recipe = {"version": RECIPE_VERSION, "suite": SUITE, "packages": KINDS[kind]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def recipe_hash(kind: str = "full") -> str:
    """All the image is made of, hashed: a changed package list, script or CRIU prefix is a new image.
    A "full" host gets this machine's CRIU prefix; a "plain" one has none (`hosts install` brings it)."""
    recipe = {"base": base_recipe_hash(kind), "dockerfile": DOCKERFILE, "init": INIT, "sshd": SSHD_CONFIG,
              "daemon": DAEMON_JSON, "kind": kind}
    if kind == "full":
        if not (CRIU_PREFIX / "usr/sbin/criu").exists():
            raise FleetError(f"no CRIU prefix at {CRIU_PREFIX} to copy into the test hosts: run ./scripts/setup.sh")
        recipe.update(wrapper=CRIU_WRAPPER, runc_conf=RUNC_CONF, criu=_tree_hash(CRIU_PREFIX))
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", "--format", "{{.Id}}", ref, check=False).returncode == 0


def ensure_image(progress: Progress = _say, kind: str = "full") -> str:
    """The host image's reference, built first when no image of this recipe is here.

    Two steps, each cached by its own hash: the Debian base with the packages (debootstrap, ~1 minute),
    then our files on top (`docker build`, a few seconds), so changing INIT never reruns debootstrap.
    """
    ref = f"{REPO}:{kind}-{recipe_hash(kind)}"
    if image_exists(ref):
        return ref
    lock_path = Path(tempfile.gettempdir()) / "beamctl-testhost-build.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same image
        if image_exists(ref):
            return ref
        started = time.monotonic()
        base = f"{BASE_REPO}:{kind}-{base_recipe_hash(kind)}"
        if not image_exists(base):
            build_base(base, progress, KINDS[kind])
        build_image(ref, base, progress, with_criu=kind == "full")
        size = docker("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip()
        progress(f"built {ref} in {time.monotonic() - started:.0f} s ({int(size) / 1e6:.0f} MB)")
        _remove_other_images(BASE_REPO, base, kind)
        _remove_other_images(REPO, ref, kind)
    return ref


def build_base(ref: str, progress: Progress = _say, packages: tuple[str, ...] = PACKAGES) -> None:
    """debootstrap minbase + packages, trimmed, imported as `ref`."""
    from beamctl.image import rootfs  # trim() and remove_tree(), as the product's base image uses them

    if os.geteuid() != 0:
        raise FleetError("building the test host image runs debootstrap, which needs root")
    exe = shutil.which("debootstrap", path=f"{os.environ.get('PATH', '')}:{PATH}")
    if exe is None:
        raise FleetError("debootstrap is not installed (it builds the test host image): run ./scripts/setup.sh")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="beamctl-testhost.", dir="/var/tmp"))
    root, log = work / "root", work / "debootstrap.log"
    try:
        progress(f"building {ref}: debootstrap {SUITE} with {', '.join(packages)} (about a minute)")
        env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{PATH}", "LC_ALL": "C",
               "DEBIAN_FRONTEND": "noninteractive"}
        argv = [exe, "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(root), MIRROR]
        with log.open("wb") as out:
            try:
                rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    timeout=DEBOOTSTRAP_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise FleetError(f"debootstrap failed ({rc}); last lines:\n" + "\n".join(tail))
        progress(f"debootstrap done in {time.monotonic() - started:.0f} s; importing {ref}")
        rootfs.trim(root)  # no apt lists, docs, man pages; sources.list for apt-get update later
        for key in root.glob("etc/ssh/ssh_host_*"):
            key.unlink()  # each container makes its own at start
        (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(["docker", "import", "-", ref], stdin=tar.stdout, capture_output=True,
                                      text=True)
        finally:
            tar.stdout.close()
            tar_rc = tar.wait()
        if imported.returncode != 0 or tar_rc != 0:
            raise FleetError(f"docker import failed (tar exit {tar_rc}): {imported.stderr.strip()}")
    finally:
        rootfs.remove_tree(work)


def build_image(ref: str, base: str, progress: Progress = _say, with_criu: bool = True) -> None:
    """Our files on the base: sshd and dockerd settings, INIT as the entrypoint, and (with_criu) this
    machine's CRIU prefix, its wrapper and runc.conf."""
    progress(f"building {ref} from {base}")
    with tempfile.TemporaryDirectory(prefix="beamctl-testhost-ctx.") as tmp:
        ctx = Path(tmp)
        _write(ctx / "files/etc/ssh/sshd_config.d/beamctl-testhost.conf", SSHD_CONFIG)
        _write(ctx / "files/etc/docker/daemon.json", DAEMON_JSON)
        _write(ctx / "files/usr/local/sbin/testhost-init", INIT, 0o755)
        if with_criu:
            shutil.copytree(CRIU_PREFIX, ctx / "criu", symlinks=True)
            _write(ctx / "files/usr/local/bin/criu", CRIU_WRAPPER, 0o755)
            _write(ctx / "files/etc/criu/runc.conf", RUNC_CONF)
        copy_criu = f"COPY criu {HOST_CRIU_PREFIX}\n" if with_criu else ""
        _write(ctx / "Dockerfile", DOCKERFILE.format(base=base, copy_criu=copy_criu, label=LABEL,
                                                     recipe=ref.split(":")[1], path=PATH,
                                                     entrypoint=json.dumps(ENTRYPOINT)))
        docker("build", "-q", "-t", ref, str(ctx), timeout=600)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _remove_other_images(repo: str, keep: str, kind: str) -> None:
    """Images of earlier recipes of this kind (hundreds of MB each); one still used by a container stays."""
    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repo, check=False).stdout.split()
    for ref in listed:
        tag = ref.split(":", 1)[1]
        if ref != keep and (tag.startswith(f"{kind}-") or "-" not in tag):  # "-" not in: before kinds
            docker("image", "rm", ref, check=False)


# --- hosts -------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Host:
    """One test host. `name` is also its alias in the fleet's ssh config and inventory."""

    fleet: Fleet = field(repr=False)
    name: str  # testhost-1
    container: str  # the container's name
    address: str = ""  # the bridge's gateway: this machine's side of the default bridge
    port: int = 0  # published there, to sshd's port 22; the same over stop/start
    host_key: str = ""  # "ssh-ed25519 AAAA...", as the host's own file says
    ip: str = ""  # the container's own address (may change over stop/start; informational)
    kind: str = "full"  # KINDS: "plain" = a minimal Debian host (no zstd, python3-venv or CRIU)

    @property
    def target(self) -> str:
        return f"root@{self.address}:{self.port}"

    @property
    def known_as(self) -> str:
        return f"[{self.address}]:{self.port}"

    def exec(self, argv: list[str], input: str | None = None, check: bool = True, timeout: float = 120
             ) -> subprocess.CompletedProcess:
        """`docker exec` (text in and out); raises FleetError on a non-zero exit when `check`."""
        return docker("exec", *(["-i"] if input is not None else []), self.container, *argv, input=input,
                      check=check, timeout=timeout)

    def ssh_argv(self, argv: list[str]) -> list[str]:
        """An OpenSSH command line that runs `argv` on the host with the fleet's config and known_hosts."""
        return ["ssh", "-F", str(self.fleet.ssh_config), self.name, "--", shlex.join(argv)]

    def pause(self) -> None:
        """Freeze every process: TCP connects still succeed, no SSH banner ever comes."""
        docker("pause", self.container)

    def unpause(self) -> None:
        docker("unpause", self.container)

    def stop(self, timeout: int = 10) -> None:
        """Stop the host (dockerd and sshd get SIGTERM); its port refuses connections until `start`."""
        docker("stop", "-t", str(timeout), self.container)

    def start(self) -> None:
        """Start a stopped host again and wait until it is ready: same address and port, same host key,
        same Docker data. The client files are left as they are (a key changed meanwhile is refused)."""
        before = self._ready_lines()
        docker("start", self.container)
        self._wait_ready(before)
        self.fleet._write_inventory()  # its address may have changed
        self.fleet._save()

    def logs(self) -> str:
        done = docker("logs", self.container, check=False)
        return done.stdout + done.stderr

    def _ready_lines(self) -> int:
        return self.logs().count("testhost: ready")

    def _wait_ready(self, before: int = 0, timeout: float = READY_TIMEOUT_S) -> None:
        """Until INIT said ready (dockerd answers) and sshd's banner comes from the bridge address."""
        deadline = time.monotonic() + timeout
        while self._ready_lines() <= before:
            state = docker("inspect", "--format", "{{.State.Status}}", self.container, check=False).stdout.strip()
            if state not in ("running", "created", "restarting"):
                raise FleetError(f"{self.name}: the container is {state or 'gone'}; its log:\n"
                                 + self.logs()[-3000:])
            if time.monotonic() > deadline:
                raise FleetError(f"{self.name}: not ready within {timeout:g} s; its log:\n{self.logs()[-3000:]}")
            time.sleep(0.1)
        self.ip = docker("inspect", "--format", "{{.NetworkSettings.IPAddress}}", self.container).stdout.strip()
        self.host_key = " ".join(self.exec(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[:2])
        while True:  # through the published port, as clients will come
            try:
                with socket.create_connection((self.address, self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise FleetError(f"{self.name}: no SSH banner from {self.target} within {timeout:g} s")
            time.sleep(0.1)


@dataclass(eq=False)
class Fleet:
    """Hosts testhost-1..N and the client files that reach them (module doc); `down()` removes them."""

    dir: Path
    id: str
    hosts: list[Host] = field(default_factory=list)
    connect_timeout: int = CONNECT_TIMEOUT_S

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def inventory(self) -> Path:
        return self.dir / "hosts.yaml"

    @property
    def env(self) -> dict[str, str]:
        """What beamctl needs to reach the hosts (and nothing of the user's ~/.ssh); unset SSH_AUTH_SOCK too."""
        return {"BEAMCTL_SSH_CONFIG": str(self.ssh_config), "BEAMCTL_HOSTS_FILE": str(self.inventory)}

    def apply_env(self, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    @classmethod
    def start(cls, n: int, dir: Path, fleet_id: str | None = None, image: str | None = None,
              progress: Progress = _say, connect_timeout: int = CONNECT_TIMEOUT_S, plain: int = 0) -> Fleet:
        """Start n hosts (building the images first if needed) and wait until all are ready; the last
        `plain` of them are plain hosts (KINDS)."""
        images = {"full": image or ensure_image(progress)}
        if plain:
            images["plain"] = ensure_image(progress, "plain")
        dir.mkdir(parents=True, exist_ok=True)
        fleet = cls(dir, fleet_id or secrets.token_hex(4), connect_timeout=connect_timeout)
        _keygen(fleet.key)
        pub = fleet.key.with_suffix(".pub").read_text().strip()
        gateway = bridge_gateway(progress)
        fleet.hosts = [Host(fleet, f"testhost-{i}", f"beamctl-testhost-{fleet.id}-{i}", gateway,
                            kind="plain" if i > n - plain else "full") for i in range(1, n + 1)]
        fleet._save()  # `down` finds the containers even if starting fails half-way
        taken: set[int] = set()

        def run(host: Host) -> None:
            for attempt in range(5):  # the port was free a moment ago; someone may take it first
                host.port = _free_port(gateway, taken)
                done = docker("run", "-d", "--name", host.container, "--hostname", host.name,
                              "--label", f"{LABEL}={fleet.id}", "--label", f"{LABEL}.dir={dir}",
                              "-p", f"{gateway}:{host.port}:22", "-e", f"TESTHOST_AUTHORIZED_KEYS={pub}",
                              *RUN_OPTIONS, images[host.kind], check=False)
                if done.returncode == 0:
                    break
                docker("rm", "-f", "-v", host.container, check=False)
                if "already" not in done.stderr or attempt == 4:  # "port is already allocated", "...in use"
                    raise FleetError(f"{host.name}: docker run failed: {done.stderr.strip()[-2000:]}")
            host._wait_ready()

        try:
            with ThreadPoolExecutor(max_workers=n) as pool:
                list(pool.map(run, fleet.hosts))
            fleet._write_client_files()
        except BaseException:
            fleet.down()
            raise
        return fleet

    def _write_client_files(self) -> None:
        blocks = [f"Host {h.name}\n  HostName {h.address}\n  Port {h.port}\n" for h in self.hosts]
        self.ssh_config.write_text(
            "# beamctl test fleet (tests/fleet/hosts.py): for BEAMCTL_SSH_CONFIG and ssh -F\n" + "".join(blocks)
            + f"Host *\n  User root\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
            f"  StrictHostKeyChecking yes\n  UpdateHostKeys no\n  ConnectTimeout {self.connect_timeout}\n"
            "  BatchMode yes\n  LogLevel ERROR\n")
        self.known_hosts.write_text("".join(f"{h.known_as} {h.host_key}\n" for h in self.hosts))
        self.known_hosts.chmod(0o600)
        self._write_inventory()
        self._save()

    def _write_inventory(self) -> None:  # address: where the other hosts (a gateway) reach each one
        self.inventory.write_text("".join(f"- name: {h.name}\n  target: {h.name}\n  address: {h.ip}\n"
                                          for h in self.hosts))

    def _save(self) -> None:
        state = {"id": self.id, "connect_timeout": self.connect_timeout,
                 "hosts": [{"name": h.name, "container": h.container, "address": h.address, "port": h.port,
                            "host_key": h.host_key, "ip": h.ip, "kind": h.kind} for h in self.hosts]}
        (self.dir / "fleet.json").write_text(json.dumps(state, indent=1) + "\n")

    @classmethod
    def load(cls, dir: Path) -> Fleet:
        """The fleet `up` started in `dir` (for experiments and benchmarks in another process)."""
        state = json.loads((dir / "fleet.json").read_text())
        fleet = cls(dir, state["id"], connect_timeout=state["connect_timeout"])
        fleet.hosts = [Host(fleet, h["name"], h["container"], h["address"], h["port"], h["host_key"], h["ip"],
                            h.get("kind", "full")) for h in state["hosts"]]
        return fleet

    def down(self) -> None:
        """Remove the hosts' containers and their anonymous volumes (the image stays)."""
        remove_fleet(self.id)


def remove_fleet(fleet_id: str) -> None:
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}={fleet_id}", check=False).stdout.split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False, timeout=120)


def bridge_gateway(progress: Progress = _say) -> str:
    """This machine's address on Docker's default bridge, and says where it came from.

    The engine's answer (`IPAM.Config[].Gateway`) when it has one: a brand-new engine (Debian's docker.io
    20.10, first start) lists only the subnet. Then the bridge interface's own IPv4 address (docker0, or
    the name in the network's options), then the subnet's first host, which is what the engine gives it.
    """
    done = docker("network", "inspect", "bridge", "--format", "{{json .}}", check=False)
    if done.returncode != 0:
        raise FleetError(f"cannot inspect Docker's default bridge: {done.stderr.strip()}")
    network = json.loads(done.stdout)
    iface = (network.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", iface], capture_output=True, text=True)
    address, source = pick_gateway(network, shown.stdout if shown.returncode == 0 else "")
    progress(f"the bridge gateway is {address} ({source})")
    return address


def pick_gateway(network: dict, ip_addr_output: str) -> tuple[str, str]:
    """(address, where it came from) from `docker network inspect bridge` and `ip -4 -o addr show dev IF`."""
    configs = (network.get("IPAM") or {}).get("Config") or []
    for c in configs:
        gateway = c.get("Gateway", "")
        if "." in gateway:
            return gateway, "the engine's IPAM gateway"
    iface = (network.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    for line in ip_addr_output.splitlines():
        words = line.split()
        if "inet" in words and words.index("inet") + 1 < len(words):
            return words[words.index("inet") + 1].split("/")[0], f"{iface}'s own address"
    for c in configs:
        subnet = c.get("Subnet", "")
        if "." in subnet:
            net = ipaddress.ip_network(subnet, strict=False)
            return str(next(net.hosts())), f"the first host of the subnet {subnet}"
    raise FleetError(f"Docker's default bridge has no IPv4 gateway, {iface} no IPv4 address and the network "
                     f"no IPv4 subnet: {json.dumps(configs)}")


def _free_port(address: str, taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def _keygen(path: Path) -> None:
    for p in (path, path.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "beamctl-testfleet", "-f", str(path)],
                   check=True)


# --- by hand -----------------------------------------------------------------------------------------

DEFAULT_DIR = Path(tempfile.gettempdir()) / "beamctl-testfleet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fleet.hosts", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the host images (full and plain) if this recipe has none")
    up = sub.add_parser("up", help="start N hosts")
    up.add_argument("n", type=int, nargs="?", default=3)
    up.add_argument("--plain", type=int, default=0, metavar="K", help="the last K hosts are plain (minimal Debian)")
    for p in (up, sub.add_parser("down", help="remove the hosts"), sub.add_parser("env", help="print the env")):
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"client files (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            print(ensure_image())
            print(ensure_image(kind="plain"))
        elif args.cmd == "up":
            if (args.dir / "fleet.json").exists():
                raise FleetError(f"a fleet is already up in {args.dir}: python -m tests.fleet.hosts down first")
            started = time.monotonic()
            fleet = Fleet.start(args.n, args.dir.resolve(), fleet_id=f"local{os.getpid()}", plain=args.plain)
            _say(f"{args.n} hosts ready in {time.monotonic() - started:.1f} s:")
            for h in fleet:
                _say(f"  {h.name}  {h.target}  {h.host_key.split()[0]} ({h.kind}; container {h.container})")
            _say(f"then: eval \"$(scripts/testfleet.sh env)\"; beamctl hosts check; "
                 f"ssh -F {fleet.ssh_config} testhost-1 docker info")
        elif args.cmd == "env":
            fleet = Fleet.load(args.dir)
            print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in fleet.env.items()), end="")
        elif args.cmd == "down":
            if (args.dir / "fleet.json").exists():
                remove_fleet(json.loads((args.dir / "fleet.json").read_text())["id"])
                shutil.rmtree(args.dir)
                _say(f"removed the fleet in {args.dir}")
            else:
                _say(f"no fleet in {args.dir}")
    except FleetError as e:
        _say(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
