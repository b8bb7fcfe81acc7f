"""Client keys: ssh-agent's first, then files (IdentityFile, else ~/.ssh/id_ed25519, id_ecdsa, id_rsa).

A passphrase-protected file is opened with a passphrase from `prompt` (the CLI asks on the
terminal); without one it is skipped, and if nothing else worked the error says so and that
ssh-agent is the way for scripts. Decrypted keys are kept for the session, so parallel
connections ask once per key. Passphrases are never stored, logged or put in argv.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from beamctl.transport.errors import AuthFailed, KeyNeedsPassphrase
from beamctl.transport.sshconfig import Target

DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")  # what ssh tries when no IdentityFile is given
PASSPHRASE_TRIES = 3  # as ssh

Prompt = Callable[[str], "str | None"]  # question -> passphrase, or None: cannot ask


class _Locked(Exception):
    pass


class KeyRing:
    """Where keys come from; one per session, shared by its connections (thread-safe)."""

    def __init__(self, prompt: Prompt | None = None, use_agent: bool = True) -> None:
        self.prompt, self.use_agent = prompt, use_agent
        self._keys: dict[Path, paramiko.PKey | str] = {}  # a key, or why it cannot be used
        self._lock = threading.Lock()

    def files(self, target: Target) -> list[Path]:
        if target.identity_files:
            return list(target.identity_files)
        ssh_dir = Path.home() / ".ssh"
        return [ssh_dir / n for n in DEFAULT_KEY_FILES if (ssh_dir / n).is_file()]

    def load(self, path: Path) -> paramiko.PKey | str:
        """The key in `path`, or a short reason it cannot be used; raises _Locked when it needs a
        passphrase nobody can give."""
        with self._lock:
            if path not in self._keys:
                self._keys[path] = self._open(path)
            found = self._keys[path]
        if found == "locked":
            raise _Locked(str(path))
        return found

    def _open(self, path: Path) -> paramiko.PKey | str:
        try:
            return _from_path(path, None)
        except FileNotFoundError:
            return "missing"
        except _NeedsPassphrase:
            pass
        except (ValueError, OSError, paramiko.SSHException) as e:
            return f"unreadable: {e}"
        if self.prompt is None:
            return "locked"
        for _ in range(PASSPHRASE_TRIES):
            passphrase = self.prompt(f"Enter passphrase for key {path}: ")
            if passphrase is None:
                return "locked"
            try:
                return _from_path(path, passphrase)
            except (ValueError, _NeedsPassphrase, paramiko.SSHException):
                continue
        return "wrong passphrase"


class _NeedsPassphrase(Exception):
    pass


def _from_path(path: Path, passphrase: str | None) -> paramiko.PKey:
    try:  # bytes: paramiko 5 hands the password to cryptography as it is
        return paramiko.PKey.from_path(path, None if passphrase is None else passphrase.encode())
    except (TypeError, paramiko.PasswordRequiredException) as e:  # cryptography: TypeError when encrypted
        if passphrase is None:
            raise _NeedsPassphrase() from e
        raise ValueError(str(e)) from e


class KeyAuth:
    """SSHClient.connect's `auth_strategy`: try every key in order, then raise with what was tried."""

    def __init__(self, ring: KeyRing, target: Target) -> None:
        self.ring, self.target = ring, target

    def authenticate(self, transport: paramiko.Transport) -> list[Any]:
        tried: list[str] = []
        locked: list[str] = []
        agent = paramiko.Agent() if self.ring.use_agent else None
        try:
            offered = set()
            for key in self._agent_keys(agent):
                offered.add(key.asbytes())
                if self._offer(transport, key, f"agent key {key.get_name()} {key.fingerprint}", tried):
                    return []
            for path in self.ring.files(self.target):
                if _public_blob(path) in offered:
                    continue  # the agent offered this one already
                try:
                    key = self.ring.load(path)
                except _Locked:
                    locked.append(str(path))
                    tried.append(f"{path} (passphrase needed)")
                    continue
                if isinstance(key, str):
                    tried.append(f"{path} ({key})")
                elif self._offer(transport, key, f"{path} ({key.get_name()} {key.fingerprint})", tried):
                    return []
        finally:
            if agent is not None:
                agent.close()
        if locked:  # the key it needs may well be the locked one: say so rather than "refused"
            raise KeyNeedsPassphrase(self.target.name, locked)
        raise AuthFailed(self.target.name, self.target.user, tried)

    def _agent_keys(self, agent: paramiko.Agent | None) -> list[paramiko.PKey]:
        if agent is None:
            return []
        keys = list(agent.get_keys())
        if self.target.identities_only:  # only the agent keys whose public half is an IdentityFile's
            wanted = {_public_blob(p) for p in self.target.identity_files}
            keys = [k for k in keys if k.asbytes() in wanted]
        return keys

    def _offer(self, transport: paramiko.Transport, key: paramiko.PKey, label: str, tried: list[str]) -> bool:
        try:
            remaining = transport.auth_publickey(self.target.user, key)
        except paramiko.AuthenticationException:
            tried.append(f"{label} refused")
            return False
        except paramiko.SSHException as e:  # the host hung up: no point offering more keys
            tried.append(f"{label}: {e}")
            raise AuthFailed(self.target.name, self.target.user, tried) from None
        if remaining:  # accepted, but the host wants a second factor beamctl cannot give
            tried.append(f"{label} accepted, but the host also wants {', '.join(remaining)}")
            return False
        return True


def _public_blob(path: Path) -> bytes | None:
    """The public key next to a private key file (`KEY.pub`), as bytes; None when there is none."""
    import base64

    try:
        fields = Path(f"{path}.pub").read_text(encoding="ascii").split()
        return base64.b64decode(fields[1])
    except (OSError, IndexError, ValueError):
        return None
