"""Route URLs: one base URL over several providers, `model` rewritten per target."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import GW, fake, start

__all__ = ["fake"]

PROFILES = {
    "anthropic:max1": ("anthropic", "setup-token", "sk-ant-oat01-"),
    "anthropic:max2": ("anthropic", "setup-token", "sk-ant-oat01-"),
    "zai:glm": ("zai", "api-key", "zk-"),
    "openai:a": ("openai", "api-key", "sk-proj-"),
}
ROUTES = """\
code = ["anthropic/claude-sonnet-4-5", "openai/gpt-4o", "zai/glm-4.6"]
chat = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]
"""


@pytest.fixture
def gw(daemon_factory: Any, fake: FakeUpstream) -> GW:
    return start(daemon_factory, fake, PROFILES, routes=ROUTES)


def _client(gw: GW, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url + "/route/code", api_key=gw.token, **kw)


def _msg(client: Any) -> Any:
    return client.messages.create(model="whatever-the-tool-says", max_tokens=16,
                                  messages=[{"role": "user", "content": "hi"}],
                                  extra_headers={"anthropic-beta": "tools-2024"})


def test_gateway_route_first_target_gets_its_model_and_subscription_headers(gw: GW) -> None:
    _msg(_client(gw))
    seen = gw.fake.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.json()["model"] == "claude-sonnet-4-5"
    assert seen.headers["authorization"] == f"Bearer {gw.keys['anthropic:max1']}"
    # the client's beta and the setup token's oauth beta, merged into one header
    assert set(seen.headers["anthropic-beta"].split(",")) == {"tools-2024", "oauth-2025-04-20"}
    assert "x-api-key" not in seen.headers
    gw.assert_no_token_leak()


def test_gateway_route_moves_from_two_spent_subscriptions_to_glm(gw: GW) -> None:
    gw.fake.script(gw.keys["anthropic:max1"], "unified")
    gw.fake.script(gw.keys["anthropic:max2"], "429")
    msg = _msg(_client(gw))
    assert msg.content[0].text == "Hello from the fake."
    seen = gw.fake.seen
    assert [s.key for s in seen] == [gw.keys["anthropic:max1"], gw.keys["anthropic:max2"],
                                     gw.keys["zai:glm"]]
    last = seen[-1]
    assert last.path == "/api/anthropic/v1/messages"  # Z.AI's Anthropic-compatible API
    assert last.json()["model"] == "glm-4.6"
    assert last.headers["authorization"] == f"Bearer {gw.keys['zai:glm']}"
    assert "oauth-2025-04-20" not in last.headers.get("anthropic-beta", "")
    # the openai target has no Anthropic upstream: skipped, never tried
    assert gw.keys["openai:a"] not in [s.key for s in seen]
    gw.wait_log("profile=zai:glm status=200 attempts=3")


def test_gateway_route_overloaded_goes_to_the_next_target_at_once(gw: GW) -> None:
    gw.fake.script(gw.keys["anthropic:max1"], "529")
    msg = _msg(_client(gw, max_retries=0))
    assert msg.content[0].text == "Hello from the fake."
    assert [s.key for s in gw.fake.seen] == [gw.keys["anthropic:max1"], gw.keys["zai:glm"]]
    # an overloaded provider does not cool the profile
    assert gw.profile("anthropic:max1")["state"] == "ready"


def test_gateway_provider_url_passes_overloaded_back_to_the_tool(gw: GW) -> None:
    gw.fake.script(gw.keys["anthropic:max1"], "529")
    client = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key=gw.token,
                                 max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as info:
        _msg(client)
    assert info.value.status_code == 529
    assert len(gw.fake.seen) == 1


def test_gateway_route_openai_dialect_with_and_without_v1(gw: GW) -> None:
    for base in ("/route/chat", "/route/chat/v1"):
        client = openai.OpenAI(base_url=gw.url + base, api_key=gw.token)
        chat = client.chat.completions.create(model="x",
                                              messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content == "Hello from the fake."
        seen = gw.fake.seen[-1]
        assert seen.path == "/v1/chat/completions"
        assert seen.json()["model"] == "gpt-4o-mini"


def test_gateway_unknown_route_and_path_are_404_in_shape(gw: GW) -> None:
    r = httpx.post(gw.url + "/route/nope/v1/messages", json={"model": "m"},
                   headers={"x-api-key": gw.token})
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    assert "no route 'nope'" in r.json()["error"]["message"]
    r = httpx.get(gw.url + "/nosuchprovider/v1/models", headers={"x-api-key": gw.token})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert gw.fake.seen == []
