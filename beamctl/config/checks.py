"""Stage 3 of the config pipeline: named checks the schema cannot express.

Each check reads the parsed document (whose types may still be wrong: the schema's
problems are reported too, so every check guards its own inputs) and yields problems.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Callable, Iterator

from beamctl.config.gpu import GpuNameError, parse_choice
from beamctl.config.hosts import parse_host
from beamctl.config.model import Entrypoint
from beamctl.mounts import MAX_INPUT, MAX_MEMORY, container_path, memory_bytes, mount_problem
from beamctl.config.parse import Document
from beamctl.config.problems import Problem

Check = Callable[[Document, Path], Iterator[Problem]]

_ENTRY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_MEMORY = re.compile(r"^[1-9][0-9]*(Ki|Mi|Gi|Ti)\Z")
_INPUT = re.compile(r"^[1-9][0-9]*(Ki|Mi)\Z")
_SECRET_WORDS = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|ACCESS_KEY)", re.I)


def _strs(doc: Document, key: str) -> list[tuple[int, str]]:
    value = doc.data.get(key)
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)] if isinstance(value, list) else []


def entrypoints_exist(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """handler and on_start name a module in the app folder that defines the function."""
    for key in ("handler", "on_start"):
        text = doc.data.get(key)
        if not isinstance(text, str) or not _ENTRY.match(text):
            continue
        entry = Entrypoint.parse(text)
        module_file = next((p for p in entry.module_file_candidates(app_dir) if p.is_file()), None)
        if module_file is None:
            rel = entry.module_file_candidates(Path("."))[0]
            yield doc.problem((key,), f"module '{entry.module}' not found: expected {rel} in the app "
                              "folder (the folder holding beam.yaml)")
            continue
        problem = _defines(module_file, entry.function)
        if problem:
            yield doc.problem((key,), problem)


def _defines(module_file: Path, name: str) -> str | None:
    import ast  # only needed here; keeps `beamctl --help` cheap

    try:
        tree = ast.parse(module_file.read_bytes(), filename=str(module_file))
    except SyntaxError as e:
        return f"{module_file.name} does not parse: {e.msg} at line {e.lineno}"
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return None  # cannot tell statically
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return None if name in names else f"{module_file.name} defines no function '{name}'"


def gpu_names(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """Every gpu entry is a known type with a count from 1 to 8."""
    gpu = doc.data.get("gpu")
    entries = [((), gpu)] if isinstance(gpu, str) else list(enumerate(gpu)) if isinstance(gpu, list) else []
    for index, raw in entries:
        if not isinstance(raw, str):
            continue
        try:
            parse_choice(raw)
        except GpuNameError as e:
            yield doc.problem(("gpu",) + ((index,) if index != () else ()), str(e))


def checkpoint_single_gpu(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """checkpoint_enabled is refused when any gpu choice has more than one GPU."""
    if doc.data.get("checkpoint_enabled") is not True:
        return
    gpu = doc.data.get("gpu")
    for raw in [gpu] if isinstance(gpu, str) else gpu if isinstance(gpu, list) else []:
        try:
            choice = parse_choice(raw) if isinstance(raw, str) else None
        except GpuNameError:
            continue
        if choice and choice.count > 1:
            yield doc.problem(("checkpoint_enabled",), f"needs at most one GPU, but gpu asks for {choice}: "
                              "CUDA checkpoints of multi-GPU processes are not reliable; use one GPU or "
                              "set checkpoint_enabled: false")
            return


def volumes_sound(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """Volume names and mount paths are unique; mount paths stay inside the container's own space."""
    volumes = doc.data.get("volumes")
    if not isinstance(volumes, list):
        return
    names: dict[str, int] = {}
    mounts: dict[str, int] = {}
    for i, vol in enumerate(volumes):
        if not isinstance(vol, dict):
            continue
        name, mount = vol.get("name"), vol.get("mount_path")
        if isinstance(name, str):
            if name in names:
                yield doc.problem(("volumes", i, "name"), f"volume '{name}' is already defined at "
                                  f"volumes[{names[name]}]; volume names must be unique")
            names.setdefault(name, i)
        if not isinstance(mount, str) or not mount:
            continue
        problem = mount_problem(mount)
        if problem:
            yield doc.problem(("volumes", i, "mount_path"), problem)
            continue
        target = container_path(mount)
        if target in mounts:
            yield doc.problem(("volumes", i, "mount_path"), f"{target} is already the mount path of "
                              f"volumes[{mounts[target]}]; mount paths must be unique")
        mounts.setdefault(target, i)


def cache_dir_on_volume(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """cache_dir lies inside one volume's mount path, so weights download once and stay out of snapshots."""
    cache = doc.data.get("cache_dir")
    if not isinstance(cache, str) or not cache:
        if doc.data.get("checkpoint_enabled") is True:
            yield doc.problem(("checkpoint_enabled",), "no cache_dir is set: model caches then go to the "
                              "container's home, are downloaded on every cold start and end up inside "
                              "every checkpoint; set cache_dir inside a volume", severity="warning")
        return
    if ".." in cache.split("/"):
        yield doc.problem(("cache_dir",), f"'{cache}' contains '..'; write the path without it")
        return
    target = container_path(cache)
    volumes = doc.data.get("volumes")
    mounts = [container_path(v["mount_path"]) for v in volumes if isinstance(v, dict)
              and isinstance(v.get("mount_path"), str) and v["mount_path"]
              and not mount_problem(v["mount_path"])] if isinstance(volumes, list) else []
    if any(target == m or target.startswith(m.rstrip("/") + "/") for m in mounts):
        return
    where = f"the volumes are mounted at {', '.join(mounts)}" if mounts else "no volumes are declared"
    yield doc.problem(("cache_dir",), f"{target} is not inside a volume ({where}): weights would be "
                      "downloaded on every cold start and copied into every checkpoint; put cache_dir "
                      "under a volume's mount_path")


def image_sources(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """python_packages and requirements exclude each other; a requirements file exists."""
    image = doc.data.get("image")
    if not isinstance(image, dict):
        return
    req = image.get("requirements")
    if "python_packages" in image and req is not None:
        yield doc.problem(("image", "requirements"), "give python_packages or requirements, not both")
    if isinstance(req, str) and req:
        if ".." in req.split("/") or req.startswith("/"):
            yield doc.problem(("image", "requirements"), f"'{req}' must be a path inside the app folder")
        elif not (app_dir / req).is_file():
            yield doc.problem(("image", "requirements"), f"file '{req}' not found in the app folder "
                              "(the folder holding beam.yaml)")


def env_and_secrets(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """A name is either plain env or a secret, not both; env values that look secret get a warning."""
    env = doc.data.get("env")
    env = env if isinstance(env, dict) else {}
    for i, name in _strs(doc, "secrets"):
        if name in env:
            yield doc.problem(("secrets", i), f"'{name}' is also set in env; a name is either a plain "
                              "value in env or a secret, not both")
    for name in env:
        if isinstance(name, str) and _SECRET_WORDS.search(name) and name not in (doc.data.get("secrets") or []):
            yield doc.problem(("env", name), f"'{name}' looks like a secret; beam.yaml ends up in images and "
                              "logs, so list the name under secrets and keep its value out of this file",
                              key=True, severity="warning")


def hosts_safe(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """Each host is a plain SSH target that cannot be read as an option or as shell."""
    for i, target in _strs(doc, "hosts"):
        try:
            parse_host(target)
        except ValueError as e:
            yield doc.problem(("hosts", i), str(e))


def autoscaler_sound(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """min_containers at most max_containers."""
    scaler = doc.data.get("autoscaler")
    if not isinstance(scaler, dict):
        return
    low, high = scaler.get("min_containers", 0), scaler.get("max_containers", 1)
    if type(low) is int and type(high) is int and low > high:
        yield doc.problem(("autoscaler", "min_containers"), f"is {low}, more than max_containers ({high}): "
                          f"raise max_containers to {low}, or lower min_containers")


def gateway_sound(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """A gateway has TLS (a readable PEM with a certificate and a key) or says plain_http; its host is a
    plain SSH target or name; its bind an IP address."""
    gw = doc.data.get("gateway")
    if not isinstance(gw, dict):
        return
    if not doc.data.get("hosts"):
        yield doc.problem(("gateway",), "needs the app's hosts: list them under hosts (an app on this machine "
                                        "alone is reached at its own endpoint)")
    host = gw.get("host")
    if isinstance(host, str):
        try:
            parse_host(host)
        except ValueError as e:
            yield doc.problem(("gateway", "host"), str(e))
    bind = gw.get("bind")
    if isinstance(bind, str):
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            yield doc.problem(("gateway", "bind"), f"{bind!r} is not an IP address: write one of the gateway "
                                                  "host's addresses, or leave bind out for every address")
    cert, plain = gw.get("certificate"), gw.get("plain_http") is True
    if plain and cert is not None:
        yield doc.problem(("gateway", "plain_http"), "and certificate both given: keep the certificate for TLS, "
                                                    "or remove it for plain HTTP")
    elif plain:
        yield doc.problem(("gateway", "plain_http"), "serves plain HTTP: the app's token crosses the network "
                          "readable; give a certificate for TLS", severity="warning")
    elif cert is None:
        yield doc.problem(("gateway",), "needs a certificate (a PEM file with the certificate and its key) for "
                                        "TLS, or plain_http: true")
    elif isinstance(cert, str):
        yield from _pem_problems(doc, app_dir / cert)


def _pem_problems(doc: Document, path: Path) -> Iterator[Problem]:
    where = ("gateway", "certificate")
    try:
        text = path.read_text(encoding="ascii", errors="replace")[:1 << 20]
    except OSError as e:
        yield doc.problem(where, f"cannot be read: {e.strerror or e}")
        return
    if "-----BEGIN CERTIFICATE-----" not in text:
        yield doc.problem(where, f"{path.name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    if not re.search(r"-----BEGIN (RSA |EC |ENCRYPTED )?PRIVATE KEY-----", text):
        yield doc.problem(where, f"{path.name} holds no private key: HAProxy wants the certificate and its "
                                 "key in one PEM file (cat cert.pem key.pem > app.pem)")
    elif "ENCRYPTED PRIVATE KEY" in text:
        yield doc.problem(where, f"{path.name}'s key is encrypted: the door starts unattended, so it needs the "
                                 "key without a passphrase (openssl pkey -in key.pem -out plain.pem)")


def rollout_has_hosts(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """rollout.max_parallel without `hosts:` has no effect: deploy then goes to this machine only."""
    rollout = doc.data.get("rollout")
    if not isinstance(rollout, dict) or "max_parallel" not in rollout:
        return
    hosts = doc.data.get("hosts")
    if isinstance(hosts, list) and hosts:
        return
    yield doc.problem(("rollout", "max_parallel"), "has no effect without hosts: deploy then goes to this "
                      "machine only; list the hosts under hosts, or remove max_parallel", severity="warning")


def numbers_are_numbers(doc: Document, app_dir: Path) -> Iterator[Problem]:
    """YAML's .nan passes every minimum and maximum of the schema (each comparison is false), and a control
    character (a NUL, a newline in a name) no pattern is meant to let through: refused here. memory and
    max_input_size are bounded (the schema's pattern cannot count)."""
    def walk(value: object, path: tuple[str | int, ...]) -> Iterator[Problem]:
        if isinstance(value, float) and value != value:
            yield doc.problem(path, "is .nan, not a number: write a number")
        elif isinstance(value, str) and "\0" in value:
            yield doc.problem(path, "contains a NUL character, which no program can be given: remove it")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    yield from walk(item, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, (*path, i))
    yield from walk(doc.data, ())
    memory = doc.data.get("memory")
    if isinstance(memory, str) and _MEMORY.match(memory) and memory_bytes(memory) > memory_bytes(MAX_MEMORY):
        yield doc.problem(("memory",), f"{memory} is more than {MAX_MEMORY}, more than any host has: "
                                       "write the limit in Gi, like 64Gi")
    size = doc.data.get("max_input_size")
    if isinstance(size, str) and _INPUT.match(size) and memory_bytes(size) > memory_bytes(MAX_INPUT):
        yield doc.problem(("max_input_size",), f"{size} is more than {MAX_INPUT}: inputs that big belong in a "
                                               "volume (send their path)")


CHECKS: tuple[Check, ...] = (entrypoints_exist, gpu_names, checkpoint_single_gpu, volumes_sound,
                             cache_dir_on_volume, image_sources, env_and_secrets, hosts_safe,
                             autoscaler_sound, gateway_sound, rollout_has_hosts, numbers_are_numbers)


def run_checks(doc: Document, app_dir: Path) -> list[Problem]:
    return [p for check in CHECKS for p in check(doc, app_dir)]
