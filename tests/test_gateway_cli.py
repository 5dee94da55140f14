"""`argentctl gateway token|rotate|status`, `exec --gateway`, and the gateway's listen faults."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import httpx

from tests.claude_code import claude_code, needs_claude_code
from tests.conftest import Daemon
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import GW, config_text, fake, start

__all__ = ["fake"]

ARGENTCTL = [sys.executable, "-m", "argent_client.cli"]


def ctl(d: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ARGENTCTL, *args], capture_output=True, text=True, env=d.env,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def _models(gw: GW, token: str) -> int:
    return httpx.get(gw.url + "/openai/v1/models",
                     headers={"authorization": f"Bearer {token}"}).status_code


def test_gateway_token_file_is_0600_and_kept_across_restarts(daemon_factory: Any,
                                                             fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    assert os.stat(gw.token_path).st_mode & 0o777 == 0o600
    before = gw.token
    r = ctl(gw.daemon, "gateway", "token")
    assert r.returncode == 0 and r.stdout.strip() == before
    gw.daemon.stop()
    gw.daemon.start()
    assert gw.token == before


def test_gateway_rotate_replaces_the_token_and_the_daemon_follows(daemon_factory: Any,
                                                                  fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    old = gw.token
    assert _models(gw, old) == 200
    r = ctl(gw.daemon, "gateway", "rotate", "--json")
    assert r.returncode == 0, r.stderr
    new = json.loads(r.stdout)["token"]
    assert new != old and gw.token == new
    assert _models(gw, old) == 401
    assert _models(gw, new) == 200
    assert old not in gw.daemon.stderr() and new not in gw.daemon.stderr()


def test_gateway_status_command_and_status_json(daemon_factory: Any,
                                                fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake, routes='code = ["anthropic/claude-sonnet-4-5"]')
    r = ctl(gw.daemon, "gateway", "status")
    assert r.returncode == 0, r.stderr
    assert f"gateway: {gw.url}" in r.stdout
    assert f"ANTHROPIC_BASE_URL={gw.url}/anthropic" in r.stdout
    assert f"ANTHROPIC_BASE_URL={gw.url}/route/code" in r.stdout
    r = ctl(gw.daemon, "status")
    assert f"Gateway: {gw.url}" in r.stdout
    status = json.loads(ctl(gw.daemon, "status", "--json").stdout)
    assert status["gateway"] == {"url": gw.url, "error": None}
    r = ctl(gw.daemon, "doctor")
    assert f"listening on {gw.url}" in r.stdout + r.stderr


def test_gateway_port_in_use_leaves_the_socket_serving(daemon_factory: Any,
                                                       fake: FakeUpstream) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d: Daemon = daemon_factory()
        d.env.pop("ARGENT_GATEWAY_LISTEN")
        d.write_profiles({})
        d.config.parent.mkdir(parents=True, exist_ok=True)
        d.config.write_text(config_text(fake, listen=f"127.0.0.1:{port}"))
        d.start()
        gw = d.call("status")["gateway"]
        assert gw["url"] is None
        assert f"cannot listen on 127.0.0.1:{port}" in gw["error"]
        assert "[gateway] listen" in gw["error"]
        assert d.call("hello")["server"] == "argentd"
        r = ctl(d, "doctor")
        assert "[FAIL] gateway" in r.stdout or "gateway" in r.stdout
        assert r.returncode != 0
        r = ctl(d, "gateway", "status")
        assert r.returncode == 1 and "off (cannot listen" in r.stdout


def test_gateway_listen_empty_turns_it_off(daemon_factory: Any, fake: FakeUpstream) -> None:
    d: Daemon = daemon_factory()
    d.env.pop("ARGENT_GATEWAY_LISTEN")
    d.write_profiles({})
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text('[gateway]\nlisten = ""\n')
    d.start()
    assert d.call("status")["gateway"] == {"url": None, "error": None}
    r = ctl(d, "exec", "anthropic", "--gateway", "--", "true")
    assert r.returncode == 3 and "the gateway is off" in r.stderr


CHILD = textwrap.dedent("""
    import json, os, anthropic, openai
    forbidden = [v for v in ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN") if v in os.environ]
    out = {"forbidden": forbidden, "base": os.environ.get("ANTHROPIC_BASE_URL"),
           "openai_base": os.environ.get("OPENAI_BASE_URL")}
    msg = anthropic.Anthropic().messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    out["text"] = msg.content[0].text
    if out["openai_base"]:
        chat = openai.OpenAI().chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}])
        out["chat"] = chat.choices[0].message.content
    print(json.dumps(out))
""")


def test_gateway_exec_points_an_sdk_app_at_the_gateway(daemon_factory: Any,
                                                       fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    d = gw.daemon
    d.env["ANTHROPIC_AUTH_TOKEN"] = "inherited-should-vanish-000"
    d.env["ANTHROPIC_API_KEY"] = "inherited-should-vanish-111"
    fake.script(gw.keys["anthropic:one"], "429")
    r = ctl(d, "exec", "anthropic", "--gateway", "--", sys.executable, "-c", CHILD)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"forbidden": [], "base": f"{gw.url}/anthropic", "openai_base": None,
                   "text": "Hello from the fake."}
    # the tool ran on the local token; argentd rotated past the spent key behind it
    assert fake.keys_seen() == [gw.keys["anthropic:one"], gw.keys["anthropic:two"]]
    gw.assert_no_token_leak()


def test_gateway_exec_route_sets_both_dialects(daemon_factory: Any, fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake,
               routes='code = ["anthropic/claude-sonnet-4-5", "openai/gpt-4o"]')
    r = ctl(gw.daemon, "exec", "--route", "code", "--gateway", "--", sys.executable, "-c",
            CHILD)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["base"] == f"{gw.url}/route/code"
    assert out["openai_base"] == f"{gw.url}/route/code/v1"
    assert out["chat"] == "Hello from the fake."
    assert [s.json()["model"] for s in fake.seen] == ["claude-sonnet-4-5", "gpt-4o"]


@needs_claude_code
def test_gateway_exec_claude_code(daemon_factory: Any, fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    fake.script(gw.keys["anthropic:one"], "429")
    r = ctl(gw.daemon, "exec", "anthropic", "--gateway", "--", str(claude_code()), "-p", "say hi",
            timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Hello from the fake." in r.stdout
    assert gw.keys["anthropic:two"] in fake.keys_seen()
    gw.assert_no_token_leak()


def test_gateway_listen_from_the_environment_wins(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()  # conftest sets ARGENT_GATEWAY_LISTEN=127.0.0.1:0
    d.write_profiles({})
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text('[gateway]\nlisten = ""\n')
    d.start()
    url = d.call("status")["gateway"]["url"]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":8411")
