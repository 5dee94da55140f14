"""A real daemon with its gateway pointed at a `FakeUpstream`, for the gateway tests."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, make_secret
from tests.fake_upstream import FakeUpstream

ACCESS = re.compile(r" gateway [A-Z]+ /")


@dataclass
class GW:
    daemon: Daemon
    fake: FakeUpstream
    url: str
    keys: dict[str, str]
    """Profile id -> its secret."""

    @property
    def token_path(self) -> Path:
        return Path(self.daemon.env["XDG_RUNTIME_DIR"]) / "argentos" / "gateway.token"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def anthropic(self, **kw: Any) -> Any:
        import anthropic

        return anthropic.Anthropic(base_url=self.url + "/anthropic", api_key=self.token, **kw)

    def openai(self, **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/openai/v1", api_key=self.token, **kw)

    def status(self) -> Any:
        return self.daemon.call("status")

    def profile(self, pid: str) -> Any:
        return next(p for p in self.status()["profiles"] if p["id"] == pid)

    def log_lines(self) -> list[str]:
        """The access-log lines so far."""
        return [ln for ln in self.daemon.stderr().splitlines() if ACCESS.search(ln)]

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """The first access-log line containing `text`, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no access line with {text!r}: {self.log_lines()}")
            time.sleep(0.02)

    def assert_no_token_leak(self) -> None:
        token = self.token
        for seen in self.fake.seen:
            assert token not in str(seen.headers), "the local token went upstream"
            assert token.encode() not in seen.body
            assert token not in seen.path
        log = self.daemon.stderr()
        assert token not in log, "the local token is in the log"
        # no header value either (httpcore's debug trace would print answer headers)
        assert "ratelimit-requests-remaining" not in log


def config_text(fake: FakeUpstream, extra: str = "", *, wait: float = 1.0,
                read: float = 5.0, listen: str = "127.0.0.1:0") -> str:
    return f"""
[gateway]
listen = "{listen}"
wait = {wait}
{extra}

[gateway.timeouts]
read = {read}
connect = 15.0

[upstream.anthropic]
anthropic = "{fake.url}"

[upstream.openai]
openai = "{fake.url}/v1"

[upstream.zai]
anthropic = "{fake.url}/api/anthropic"

[upstream.minimax]
anthropic = "{fake.url}/minimax/anthropic"
"""


DEFAULT_PROFILES = {
    "anthropic:one": ("anthropic", "api-key", "sk-ant-api03-"),
    "anthropic:two": ("anthropic", "api-key", "sk-ant-api03-"),
    "openai:a": ("openai", "api-key", "sk-proj-"),
    "openai:b": ("openai", "api-key", "sk-proj-"),
}


def start(daemon_factory: Any, fake: FakeUpstream,
          profiles: dict[str, tuple[str, str, str]] | None = None,
          *, config: str | None = None, routes: str = "", **kw: Any) -> GW:
    """Start a daemon serving `profiles` (id -> (provider, type, secret prefix)),
    every secret scripted `ok` on the fake, and return the gateway around it."""
    d: Daemon = daemon_factory()
    d.env.pop("ARGENT_GATEWAY_LISTEN")  # argentd.toml says where (port 0 unless told)
    keys: dict[str, str] = {}
    data: dict[str, Any] = {}
    for i, (pid, (provider, type_, prefix)) in enumerate(
            (profiles or DEFAULT_PROFILES).items()):
        secret = make_secret(prefix)
        keys[pid] = secret
        fake.script(secret, "ok")
        data[pid] = {"provider": provider, "type": type_, "token": secret,
                     "label": pid, "priority": i}
    d.write_profiles(data)
    text = config if config is not None else config_text(fake, **kw)
    if routes:
        text += "\n[routes]\n" + routes + "\n"
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text(text)
    d.start()
    gw = d.call("status")["gateway"]
    assert gw["error"] is None, gw
    return GW(d, fake, gw["url"], keys)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fake provider for one test."""
    with FakeUpstream() as f:
        yield f
