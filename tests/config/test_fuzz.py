"""Property: whatever bytes beam.yaml holds, validate ends with 0 or 2 and a message, never a crash."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FIXTURES

GOOD = (FIXTURES / "good" / "full.yaml").read_text()
WORKDIR = Path(tempfile.mkdtemp(prefix="beamctl-fuzz-"))
(WORKDIR / "app.py").write_text((FIXTURES / "app.py").read_text())

YAML_BITS = st.sampled_from([":", "- ", "\n", "  ", "&a ", "*a ", "<<: ", "{", "}", "[", "]", "'", '"', "#",
                             "!!str ", "!!python/name:os.system ", "\t", "---\n", "3.10", "H100:0", "..",
                             "-oX", "~", "null", "true", "1e9", "\x00", "\ufeff", "é"])


def _mutate(data: st.DataObject) -> str:
    text = GOOD
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        bit = data.draw(YAML_BITS | st.text(max_size=5))
        if action == "insert":
            text = text[:pos] + bit + text[pos:]
        elif action == "delete":
            text = text[:pos] + text[pos + data.draw(st.integers(1, 20)):]
        else:
            text = text[:pos] + bit + text[pos + len(bit):]
    return text


def _check(cli, raw: bytes) -> None:
    (WORKDIR / "beam.yaml").write_bytes(raw)
    result = cli("validate", "--json", cwd=WORKDIR)
    assert result.code in (0, 2), result.err
    report = json.loads(result.out)
    assert report["ok"] is (result.code == 0)
    assert "Traceback" not in result.err and "internal error" not in result.err
    if result.code == 2:
        assert report["errors"] and all(e["message"] and e["line"] >= 1 for e in report["errors"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_yaml_never_crashes(cli, data):
    _check(cli, _mutate(data).encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bytes_never_crash(cli, raw):
    _check(cli, raw)
