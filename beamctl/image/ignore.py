"""Which app files stay out of the build context: defaults, secrets, .beamignore and .dockerignore.

Pattern rules (one set for both files, gitignore-like, since that is what people expect):
`*` and `?` stay within one path segment, `**` spans segments, a pattern without an inner
`/` matches at any depth (`*.log`), one with a `/` is anchored at the app folder
(`/build`, `data/raw`), `!pattern` re-includes, the last matching pattern wins, and a
matching folder excludes everything inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILES = (".dockerignore", ".beamignore")  # both read; .beamignore last, so it wins

# Never useful in an image, and some are large.
DEFAULT_PATTERNS = (
    ".git", ".hg", ".svn", "__pycache__", "*.pyc", "*.pyo", ".venv", "venv", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".tox", ".ipynb_checkpoints", ".DS_Store",
    ".beamignore", ".dockerignore",
    "/.beamctl",  # the schema `beamctl init` writes for editors: refreshing it must not change the image
)
# Files that hold credentials. They are excluded even when a pattern re-includes them:
# image layers are copied to every host and cannot be scrubbed afterwards.
SECRET_PATTERNS = (
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_ecdsa*", "id_ed25519*", "id_dsa*",
    ".netrc", ".pypirc", ".npmrc", ".aws", ".ssh", ".gnupg", ".beamctl-secrets", "*.secret",
    "credentials.json", "service-account*.json", "client_secret*.json",
    "secrets.env",  # beamctl's own secrets file
    ".git-credentials", ".docker", ".kube", "kubeconfig", ".pgpass", ".my.cnf", "*.tfstate", "*.tfstate.*",
    "*.kdbx", ".vault-token",
)  # matched without regard to case (.ENV, ID_RSA, Secrets.env)


@dataclass(frozen=True)
class Rule:
    pattern: str
    regex: re.Pattern[str]
    negated: bool


def compile_rule(line: str) -> Rule | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    negated = text.startswith("!")
    body = text[1:] if negated else text
    anchored = "/" in body.rstrip("/")
    body = body.strip("/")
    if not body:
        return None
    regex = "" if anchored else "(?:.*/)?"
    i = 0
    while i < len(body):
        if body.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif body.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif body[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif body[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(body[i]), i + 1
    return Rule(text, re.compile(f"^{regex}(?:/.*)?$"), negated)


@dataclass(frozen=True)
class Ignore:
    rules: tuple[Rule, ...]
    secrets: tuple[Rule, ...]

    def excluded(self, rel: str) -> bool:
        """True when the path (relative, '/'-separated) stays out of the context."""
        if self.is_secret(rel):
            return True
        verdict = False
        for rule in self.rules:
            if rule.regex.match(rel):
                verdict = not rule.negated
        return verdict

    def is_secret(self, rel: str) -> bool:
        low = rel.lower()
        return any(rule.regex.match(low) for rule in self.secrets)

    @property
    def has_negations(self) -> bool:
        return any(rule.negated for rule in self.rules)


def load_ignore(app_dir: Path, extra: tuple[str, ...] = ()) -> Ignore:
    """Rules for one app: defaults, then `extra` (volume folders, the config file), then the files."""
    lines = list(DEFAULT_PATTERNS) + list(extra)
    for name in IGNORE_FILES:
        path = app_dir / name
        if path.is_file():
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    rules = tuple(r for r in map(compile_rule, lines) if r is not None)
    secrets = tuple(r for r in map(compile_rule, SECRET_PATTERNS) if r is not None)
    return Ignore(rules, secrets)
