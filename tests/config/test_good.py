from __future__ import annotations

import json

import pytest

from beamctl.config import load, validate_file
from beamctl.config.gpu import GpuChoice
from beamctl.config.model import RolloutConfig
from tests.conftest import FIXTURES

GOOD = FIXTURES / "good"


@pytest.mark.parametrize("name", sorted(p.stem for p in GOOD.glob("*.yaml")))
def test_good_file_validates(cli, name):
    result = cli("validate", "-f", f"{name}.yaml", "--json", cwd=GOOD)
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"ok": True, "errors": [], "warnings": []}


def test_full_file_becomes_a_normalised_model():
    config, warnings = load(GOOD / "full.yaml")
    assert warnings == []
    assert config.name == "sentiment"
    assert str(config.handler) == "app:handler" and str(config.on_start) == "app:load_model"
    assert config.gpu == (GpuChoice("H100", 1),)  # "nvidia h100" via a YAML anchor
    assert (config.cpu, config.memory_bytes, config.workers) == (2.5, 16 << 30, 2)
    assert (config.timeout_s, config.keep_warm_s) == (600, 0)
    assert config.image.python_version == "3.12"
    assert config.image.python_packages == ("numpy>=2", "torch==2.5.1")
    assert [(v.name, v.mount_path) for v in config.volumes] == [("models", "/models"),
                                                               ("scratch", "/app/scratch")]
    assert config.cache_dir == "/models/hf"
    assert config.checkpoint_enabled is True
    assert dict(config.env) == {"LOG_LEVEL": "debug", "BATCH": "8", "FAST": "true"}
    assert config.secrets == ("HF_TOKEN",)
    assert [(h.user, h.hostname, h.port) for h in config.hosts] == [
        (None, "gpu1", None), ("deploy", "10.0.0.7", 2222), ("root", "fe80::1", 22)]
    assert config.rollout == RolloutConfig(max_parallel=2, health_timeout_s=600.0)


def test_defaults_come_from_the_schema():
    config, _ = load(GOOD / "minimal.yaml")
    assert config.gpu == () and config.gpu_count == 0
    assert (config.cpu, config.memory, config.workers, config.timeout_s, config.keep_warm_s) == (
        1.0, "1Gi", 1, 180, 180)
    assert config.image.python_version == "3.11" and config.image.requirements is None
    assert config.volumes == () and config.cache_dir is None and config.hosts == ()
    assert config.checkpoint_enabled is False
    assert config.rollout == RolloutConfig(max_parallel=None, health_timeout_s=300.0)  # all hosts at once


def test_gpu_preference_list_keeps_its_order():
    config, _ = load(GOOD / "gpu_list_and_requirements.yaml")
    assert [str(g) for g in config.gpu] == ["H100", "A100-80", "RTX4090"]
    assert config.image.requirements == GOOD.resolve() / "requirements.txt"


def test_merge_keys_fill_in_values():
    config, _ = load(GOOD / "merge_anchor.yaml")
    assert (config.cpu, config.memory) == (2.0, "4Gi")


def test_warning_does_not_fail_validation(cli, tmp_path):
    (tmp_path / "app.py").write_text("def handler(**inputs):\n    return inputs\n")
    (tmp_path / "beam.yaml").write_text("name: w\nhandler: app:handler\ncheckpoint_enabled: true\n"
                                        "env:\n  HF_TOKEN: hunter2\n")
    result = cli("validate", cwd=tmp_path)
    assert result.code == 0
    assert result.err.splitlines() == [
        "beam.yaml:3:21: checkpoint_enabled: warning: no cache_dir is set: model caches then go to the "
        "container's home, are downloaded on every cold start and end up inside every checkpoint; set "
        "cache_dir inside a volume",
        "beam.yaml:5:3: env.HF_TOKEN: warning: 'HF_TOKEN' looks like a secret; beam.yaml ends up in images "
        "and logs, so list the name under secrets and keep its value out of this file",
        "beam.yaml is valid, 2 warnings: app w, CPU only, deploys to this machine",
    ]
    report = validate_file(tmp_path / "beam.yaml")
    assert report.ok and [w.path for w in report.warnings] == ["checkpoint_enabled", "env.HF_TOKEN"]


def test_a_folder_means_its_beam_yaml(cli, tmp_path):
    (tmp_path / "app.py").write_text("def handler(**inputs):\n    return inputs\n")
    (tmp_path / "beam.yaml").write_text("name: f\nhandler: app:handler\n")
    result = cli("validate", "-f", str(tmp_path), "--json")
    assert result.code == 0 and json.loads(result.out)["ok"] is True


def test_missing_file_is_a_usage_error(cli, tmp_path):
    result = cli("validate", "-f", str(tmp_path / "nope.yaml"))
    assert result.code == 2
    assert result.err == (f"error: {tmp_path / 'nope.yaml'}: no such file\n"
                          "hint: run `beamctl init` to create one, or pass -f FILE\n")


def test_rollout_health_timeout_only_is_fine_without_hosts(tmp_path):
    (tmp_path / "app.py").write_text("def handler(**inputs):\n    return inputs\n")
    (tmp_path / "beam.yaml").write_text("name: r\nhandler: app:handler\nrollout:\n  health_timeout: 12.5\n")
    config, warnings = load(tmp_path / "beam.yaml")
    assert warnings == [] and config.rollout == RolloutConfig(None, 12.5)
