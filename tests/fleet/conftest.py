"""Fixtures for the fleet tests: a private HOME (never the real ~/.ssh) and real sshd instances."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Home:
    """A private HOME: ~/.ssh/config (via BEAMCTL_SSH_CONFIG too), known_hosts, a client key."""

    root: Path

    @property
    def ssh(self) -> Path:
        return self.root / ".ssh"

    @property
    def config(self) -> Path:
        return self.ssh / "config"

    @property
    def known_hosts(self) -> Path:
        return self.ssh / "known_hosts"

    @property
    def key(self) -> Path:
        return self.ssh / "id_ed25519"

    def write_config(self, text: str) -> None:
        """The test's Host blocks, then defaults that keep the system's known_hosts out."""
        self.config.write_text(text + f"\nHost *\n  UserKnownHostsFile {self.known_hosts}\n"
                               "  GlobalKnownHostsFile /dev/null\n")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Home:
    root = tmp_path / "home"
    (root / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(root))
    monkeypatch.setenv("BEAMCTL_SSH_CONFIG", str(root / ".ssh" / "config"))
    monkeypatch.setenv("BEAMCTL_HOSTS_FILE", str(root / ".config" / "beamctl" / "hosts.yaml"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    h = Home(root)
    h.write_config("")
    return h


def keygen(path: Path, kind: str = "ed25519", passphrase: str = "") -> Path:
    tool = shutil.which("ssh-keygen")
    assert tool, "ssh-keygen is not installed: run ./scripts/setup.sh"
    for p in (path, Path(f"{path}.pub")):
        p.unlink(missing_ok=True)
    subprocess.run([tool, "-q", "-t", kind, "-a", "1", "-N", passphrase, "-C", "", "-f", str(path)], check=True)
    return path


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    """One OpenSSH sshd on a loopback address, with its own host key and authorized_keys."""

    dir: Path
    address: str
    port: int
    host_key: Path
    authorized: Path
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.dir / "sshd.log"

    @property
    def known_as(self) -> str:
        return f"[{self.address}]:{self.port}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.host_key.with_suffix(".pub"))

    def start(self) -> Sshd:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        assert Path(sshd).exists(), "sshd is not installed: run ./scripts/setup.sh"
        config = self.dir / "sshd_config"
        config.write_text(f"Port {self.port}\nListenAddress {self.address}\nHostKey {self.host_key}\n"
                          f"AuthorizedKeysFile {self.authorized}\nStrictModes no\nPidFile none\n"
                          "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                          "PermitRootLogin prohibit-password\nLogLevel VERBOSE\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("ab"))
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "sshd did not listen within 10 s"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def new_host_key(self) -> None:
        """Restart with a different host key: what a reinstall, or a man in the middle, looks like."""
        self.stop()
        keygen(self.host_key)
        self.start()


@pytest.fixture
def sshd_factory(tmp_path, home):
    """sshd_factory(name, address=...) -> a started Sshd that accepts home's client key."""
    started: list[Sshd] = []

    def make(name: str = "host", address: str = "127.0.0.1", client_pub: Path | None = None) -> Sshd:
        d = tmp_path / f"sshd-{name}"
        d.mkdir()
        if not home.key.exists():
            keygen(home.key)
        authorized = d / "authorized_keys"
        authorized.write_text(Path(f"{client_pub or home.key}.pub").read_text())
        server = Sshd(d, address, free_port(address), keygen(d / "host_key"), authorized)
        started.append(server)
        return server.start()

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """fleet(n=3) -> a started Fleet (tests/fleet/hosts.py): n containers, each with its own sshd, dockerd,
    address and host key (with 3 or more, the last is a plain host: minimal Debian, no zstd, python3-venv
    or CRIU), plus the client files that reach them (fleet.env: BEAMCTL_SSH_CONFIG and
    BEAMCTL_HOSTS_FILE; `fleet.apply_env(monkeypatch)` sets them). One fleet per n per module, removed
    with its Docker data when the module ends; the host image is built once (~80 s) and kept."""
    from tests.fleet.hosts import Fleet, FleetError

    started: dict[int, Fleet] = {}

    def get(n: int = 3) -> Fleet:
        if n not in started:
            try:
                started[n] = Fleet.start(n, tmp_path_factory.mktemp(f"fleet{n}"), plain=1 if n >= 3 else 0)
            except FleetError as e:
                pytest.fail(f"the test fleet did not start: {e}", pytrace=False)
        return started[n]

    yield get
    for f in started.values():
        f.down()


def hello_on_two_hosts(tmp_path: Path, name: str):
    """examples/hello copied as app `name` with `hosts: [testhost-1, testhost-2]`; its images removed after."""
    d = tmp_path / "hello"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "hello", d)
    text = (d / "beam.yaml").read_text().replace("name: hello\n", f"name: {name}\n")
    (d / "beam.yaml").write_text(text + "hosts: [testhost-1, testhost-2]\n")
    yield d
    images = subprocess.run(["docker", "images", "-q", f"beamctl/{name}"], capture_output=True, text=True)
    if images.stdout.split():
        subprocess.run(["docker", "rmi", "-f", *set(images.stdout.split())], capture_output=True)
