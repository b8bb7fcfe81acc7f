"""The agent tests' real host: one agent data folder per module and the CLI pointed at it."""

from __future__ import annotations

import pytest

from tests.agent.test_agent_engine import Host


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Host:
    """Starts nothing: the first CLI call starts the agent. Teardown removes all it made."""
    h = Host(tmp_path_factory.mktemp("agent"), tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("apps"))
    yield h
    h.cleanup()
