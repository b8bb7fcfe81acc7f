from __future__ import annotations

import json

import yaml

from beamctl.config import load
from beamctl.config.schema import load_schema
from beamctl.scaffold import SCHEMA_FILE, app_name
from tests.conftest import schema_link


def test_init_writes_an_app_that_validates(cli, tmp_path):
    target = tmp_path / "My Demo_2"
    result = cli("init", str(target))
    assert result.code == 0
    assert result.err == (f"created {target / 'beam.yaml'}, {target / 'app.py'}, {target / SCHEMA_FILE}\n"
                          f"next: beamctl validate -f {target / 'beam.yaml'}\n")
    check = cli("validate", "-f", str(target / "beam.yaml"), "--json")
    assert check.code == 0 and json.loads(check.out) == {"ok": True, "errors": [], "warnings": []}
    config, _ = load(target / "beam.yaml")
    assert config.name == "my-demo-2" and config.cache_dir == "/models/cache"


def test_init_explains_every_field_with_the_schema_text(cli, tmp_path):
    cli("init", str(tmp_path), "--name", "demo")
    text = (tmp_path / "beam.yaml").read_text()
    flat = " ".join(l.strip().lstrip("#").strip() for l in text.splitlines() if l.strip().startswith("#"))
    for key, prop in load_schema()["properties"].items():
        assert prop["description"] in flat, key
    assert text.startswith("# yaml-language-server: $schema=")
    assert "hosts" not in yaml.safe_load(text)  # commented out: local machine by default


def test_init_points_editors_at_a_schema_file_equal_to_the_schema_command(cli, tmp_path):
    cli("init", str(tmp_path / "app"), "--name", "demo")
    assert (tmp_path / "app" / "beam.yaml").read_text().splitlines()[0] == (
        "# yaml-language-server: $schema=.beamctl/beam.schema.json")
    link = schema_link(tmp_path / "app" / "beam.yaml")
    assert link == (tmp_path / "app" / ".beamctl" / "beam.schema.json").resolve()
    assert link.read_bytes() == cli("schema").out.encode()


def test_init_refreshes_a_schema_that_differs_and_says_so(cli, tmp_path):
    (tmp_path / ".beamctl").mkdir()
    (tmp_path / SCHEMA_FILE).write_text('{"title": "an older beamctl\'s schema"}\n')
    result = cli("init", str(tmp_path), "--name", "demo")
    assert result.code == 0
    assert result.err == (f"created {tmp_path / 'beam.yaml'}, {tmp_path / 'app.py'}\n"
                          f"refreshed {tmp_path / SCHEMA_FILE} (it differed from this beamctl's schema)\n"
                          f"next: beamctl validate -f {tmp_path / 'beam.yaml'}\n")
    assert (tmp_path / SCHEMA_FILE).read_bytes() == cli("schema").out.encode()
    assert sorted(p.name for p in (tmp_path / ".beamctl").iterdir()) == ["beam.schema.json"]  # no .partial


def test_init_force_over_a_current_schema_says_it_is_up_to_date(cli, tmp_path):
    cli("init", str(tmp_path), "--name", "demo")
    result = cli("init", str(tmp_path), "--name", "demo", "--force")
    assert result.code == 0
    assert result.err == (f"created {tmp_path / 'beam.yaml'}, {tmp_path / 'app.py'}\n"
                          f"{tmp_path / SCHEMA_FILE} is up to date\n"
                          f"next: beamctl validate -f {tmp_path / 'beam.yaml'}\n")


def test_init_runs_the_generated_app_functions(cli, tmp_path):
    cli("init", str(tmp_path), "--name", "demo")
    namespace: dict = {}
    exec((tmp_path / "app.py").read_text(), namespace)

    class Context:
        on_start_value = namespace["load_model"]()
        task_id = "t1"

    assert namespace["handler"](Context, name="Ada") == {"message": "hello, Ada"}


def test_init_refuses_to_overwrite(cli, tmp_path):
    cli("init", str(tmp_path), "--name", "demo")
    (tmp_path / "app.py").write_text("# mine\n")
    result = cli("init", str(tmp_path), "--name", "demo")
    assert result.code == 2
    assert result.err == (f"error: {tmp_path / 'beam.yaml'}, {tmp_path / 'app.py'} already exist\n"
                          "hint: pick another folder, or pass --force to overwrite\n")
    assert (tmp_path / "app.py").read_text() == "# mine\n"


def test_init_rejects_a_bad_name(cli, tmp_path):
    result = cli("init", str(tmp_path), "--name", "Bad_Name")
    assert result.code == 2
    assert result.err.startswith("error: 'Bad_Name' is not a valid app name\n")
    assert list(tmp_path.iterdir()) == []


def test_app_name_from_folder(tmp_path):
    assert app_name(tmp_path / "Sentiment Model") == "sentiment-model"
    assert app_name(tmp_path / "123") == "app"


def test_commented_out_keys_validate_once_uncommented(cli, tmp_path):
    cli("init", str(tmp_path), "--name", "demo")
    lines = (tmp_path / "beam.yaml").read_text().splitlines()
    opened = [line[2:] if line.startswith(("# autoscaler:", "# hosts:", "# gateway:", "# rollout:", "#   "))
              else line for line in lines]
    (tmp_path / "beam.yaml").write_text("\n".join(opened) + "\n")
    (tmp_path / "tls").mkdir()  # the gateway's certificate: validate reads its PEM markers only
    (tmp_path / "tls" / "app.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
                                              "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n")
    config, warnings = load(tmp_path / "beam.yaml")
    assert (config.gateway.host, config.gateway.port, config.gateway.tls) == ("gw1", 8443, True)
    assert warnings == [] and [h.hostname for h in config.hosts] == ["gpu-host"]
    assert (config.rollout.max_parallel, config.rollout.health_timeout_s) == (2, 300.0)
    assert (config.autoscaler.max_containers, config.autoscaler.tasks_per_container) == (4, 1)
