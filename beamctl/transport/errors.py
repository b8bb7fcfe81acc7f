"""What can go wrong between beamctl and a host, as values: each error carries its data.

All exit with ExitCode.REMOTE (4), but SshConfigError (2: the local ~/.ssh/config is wrong).
`host` is always the name the user wrote (an inventory name, an ~/.ssh/config alias or a
target), so a hint can be pasted as it is.
"""

from __future__ import annotations

import shlex

from beamctl.errors import BeamctlError, ExitCode

STDERR_TAIL_LINES = 8  # remote stderr is cut to its last lines; the rest stays on the host


class SshError(BeamctlError):
    exit_code = ExitCode.REMOTE


class HostUnreachable(SshError):
    """No SSH session: refused, timed out, name unknown, no banner, a jump host down."""

    def __init__(self, host: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"{host}: unreachable: {reason}", hint)
        self.host, self.reason = host, reason


class HostKeyUnknown(SshError):
    """The host offered a key that no known_hosts file lists for it; nothing was sent to it."""

    def __init__(self, host: str, known_as: str, key_type: str, fingerprint: str, key: object = None,
                 jump_for: str | None = None) -> None:
        what = f"jump host {host} (on the way to {jump_for})" if jump_for else host
        super().__init__(
            f"{what}: unknown host key {key_type} {fingerprint} for {known_as}; not connecting",
            f"check that fingerprint with the host's owner (on the host: ssh-keygen -lf /etc/ssh/"
            f"ssh_host_*_key.pub), then run: beamctl hosts trust {shlex.quote(host)}")
        self.host, self.known_as, self.key_type, self.fingerprint = host, known_as, key_type, fingerprint
        self.key = key  # the paramiko PKey, for `hosts trust`
        self.jump_for = jump_for


class HostKeyChanged(SshError):
    """The host offered a different key than the one known_hosts holds for it: refused, loudly."""

    def __init__(self, host: str, known_as: str, key_type: str, fingerprint: str, known_fingerprint: str,
                 known_hosts: str | None) -> None:
        where = known_hosts or "~/.ssh/known_hosts"
        super().__init__(
            f"{host}: HOST KEY CHANGED for {known_as}: it now offers {key_type} {fingerprint}, but "
            f"{where} holds {known_fingerprint}. Someone may be intercepting the connection "
            "(man-in-the-middle), or the host was reinstalled. Not connecting.",
            f"only if you know the host's key changed: ssh-keygen -R {shlex.quote(known_as)} -f "
            f"{shlex.quote(where)}, then beamctl hosts trust {shlex.quote(host)}")
        self.host, self.known_as, self.key_type = host, known_as, key_type
        self.fingerprint, self.known_fingerprint, self.known_hosts = fingerprint, known_fingerprint, known_hosts


class AuthFailed(SshError):
    """The host refused every key we offered."""

    def __init__(self, host: str, user: str, tried: list[str]) -> None:
        offered = "; ".join(tried) if tried else "no keys (no ssh-agent, no IdentityFile, no ~/.ssh/id_*)"
        super().__init__(f"{host}: {user} was refused: tried {offered}",
                         f"add your public key to ~{user}/.ssh/authorized_keys on the host, or name the "
                         "right key with IdentityFile in ~/.ssh/config")
        self.host, self.user, self.tried = host, user, tried


class KeyNeedsPassphrase(SshError):
    """Only passphrase-protected keys were left and there is no terminal to ask on."""

    def __init__(self, host: str, paths: list[str]) -> None:
        keys = ", ".join(paths)
        super().__init__(f"{host}: the key {keys} is protected by a passphrase and there is no terminal "
                         "to ask for it", f"load it into ssh-agent once (eval $(ssh-agent); ssh-add {paths[0]})"
                         ", or run beamctl from a terminal")
        self.host, self.paths = host, paths


class SshConfigError(SshError):
    """~/.ssh/config says something beamctl cannot follow (ProxyCommand, a bad ProxyJump, a loop)."""

    exit_code = ExitCode.CONFIG

    def __init__(self, host: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"{host}: {reason}", hint)
        self.host, self.reason = host, reason


class RemoteError(SshError):
    """A command on the host failed; stderr is cut to its last lines."""

    def __init__(self, host: str, command: str, exit_code: int | None, stderr_tail: str,
                 hint: str | None = None) -> None:
        status = "was cut off" if exit_code is None else f"exited with {exit_code}"
        super().__init__(f"{host}: `{command}` {status}" + (f": {stderr_tail}" if stderr_tail else ""), hint)
        self.host, self.command, self.remote_exit, self.stderr_tail = host, command, exit_code, stderr_tail
        # remote_exit: the command's status on the host; exit_code stays beamctl's own (REMOTE)


class RemoteEnded(SshError):
    """The command a stream was feeding ended on the host before the stream did: the host answered (its
    exit status and output are here), so this is the command's failure, never an unreachable host."""

    def __init__(self, host: str, exit_code: int, stdout: str, stderr: str) -> None:
        super().__init__(f"{host}: the remote command ended early (exit {exit_code}): {tail(stderr)}")
        self.host, self.remote_exit, self.stdout, self.stderr = host, exit_code, stdout, stderr


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
