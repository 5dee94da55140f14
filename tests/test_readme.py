"""The README's promises, run as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Daemon

README = Path(__file__).resolve().parent.parent / "README.md"


def block(marker: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert m, f"README.md has no {marker} block"
    return m.group(1)


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Daemon:
    """The worker's shared argentd, its state made fresh after each test (conftest
    `SharedDaemon`): the example only says hello, leases and reads the status."""
    return shared_daemon


def test_readme_socket_example_leases_with_socat_and_python(daemon: Daemon) -> None:
    if shutil.which("socat") is None:
        if os.environ.get("CI"):
            pytest.fail("socat is missing: .ci/run installs it")
        pytest.skip("socat is not installed")
    lines = block("socket-example").strip().splitlines()
    env = {**daemon.env}
    replies = []
    for line in lines[1:]:
        out = subprocess.run(["bash", "-c", f"{lines[0]}\n{line}"], env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        replies.append(json.loads(out.stdout))
    hello, lease, status = replies
    assert hello["result"]["server"] == "argentd"
    assert lease["result"]["profile"] == "anthropic:one"
    # The socat lease was detached: it outlived socat's connection.
    assert [le["lease_id"] for le in status["result"]["leases"]] == [lease["result"]["lease_id"]]


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "test-command" in ci  # .ci/run reads the command from README
    assert "pytest" in block("test-command")
