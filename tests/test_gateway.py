"""The gateway end to end: the real daemon, the real anthropic/openai SDKs, a fake provider.

Each SDK is configured as a user would (base URL = the gateway, API key =
the local token, SDK defaults otherwise); the fake records what reached it.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import GW, fake, start

__all__ = ["fake"]  # the fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def gw(daemon_factory: Any, fake: FakeUpstream) -> GW:
    return start(daemon_factory, fake)


def _msg(client: Any, **kw: Any) -> Any:
    return client.messages.create(model="claude-sonnet-4-5", max_tokens=16,
                                  messages=[{"role": "user", "content": "hi"}], **kw)


def test_gateway_anthropic_sdk_gets_the_real_key_upstream(gw: GW) -> None:
    msg = _msg(gw.anthropic())
    assert msg.content[0].text == "Hello from the fake."
    seen = gw.fake.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == gw.keys["anthropic:one"]
    assert "authorization" not in seen.headers
    gw.assert_no_token_leak()
    gw.wait_log("POST /anthropic/v1/messages profile=anthropic:one status=200 attempts=1")


def test_gateway_passes_a_chunked_json_answer_whole(gw: GW) -> None:
    # its last part goes out with the end of the answer (one write)
    msg = _msg(gw.anthropic(), extra_headers={"x-fake-mode": "chunked"})
    assert msg.content[0].text == "Hello from the fake."
    assert msg.usage.output_tokens > 0
    gw.wait_log("POST /anthropic/v1/messages profile=anthropic:one status=200 attempts=1")


def test_gateway_openai_sdk_chat_and_responses(gw: GW) -> None:
    client = gw.openai()
    chat = client.chat.completions.create(model="gpt-fake",
                                          messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "Hello from the fake."
    seen = gw.fake.seen[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {gw.keys['openai:a']}"
    resp = client.responses.create(model="gpt-fake", input="hi")
    assert resp.output_text == "Hello from the fake."
    assert gw.fake.seen[-1].path == "/v1/responses"
    models = client.models.list()
    assert [m.id for m in models] == ["gpt-fake"]
    gw.assert_no_token_leak()


def test_gateway_refuses_a_wrong_or_missing_token_in_the_provider_shape(gw: GW) -> None:
    bad = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key="wrong-token-123456")
    with pytest.raises(anthropic.AuthenticationError) as info:
        _msg(bad)
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert "local token" in str(info.value)
    o = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="wrong-token-123456")
    with pytest.raises(openai.AuthenticationError) as oinfo:
        o.models.list()
    assert oinfo.value.code == "invalid_api_key"
    r = httpx.post(gw.url + "/anthropic/v1/messages", json={"model": "x"})
    assert r.status_code == 401
    assert gw.fake.seen == []  # nothing went upstream


def test_gateway_token_in_bearer_goog_header_and_query(gw: GW) -> None:
    for headers, params in (({"authorization": f"Bearer {gw.token}"}, {}),
                            ({"x-goog-api-key": gw.token}, {}),
                            ({}, {"key": gw.token})):
        r = httpx.get(gw.url + "/openai/v1/models", headers=headers, params=params)
        assert r.status_code == 200, r.text
    assert all("key=" not in s.path for s in gw.fake.seen)
    gw.assert_no_token_leak()


def test_gateway_rotates_on_429_and_the_sdk_sees_200(gw: GW) -> None:
    gw.fake.script(gw.keys["anthropic:one"], "429")
    client = gw.anthropic()
    for _ in range(3):
        assert _msg(client).content[0].text == "Hello from the fake."
    keys = gw.fake.keys_seen()
    one, two = gw.keys["anthropic:one"], gw.keys["anthropic:two"]
    assert keys == [one, two, two, two]  # the spent key is tried once, then it cools
    assert gw.profile("anthropic:one")["state"] == "cooldown"
    assert "profile=anthropic:two status=200 attempts=2" in gw.log_lines()[0]


@pytest.mark.parametrize("mode,state", [("401", "invalid"), ("quota", "cooldown"),
                                        ("unified", "cooldown")])
def test_gateway_rotates_on_profile_faults(gw: GW, mode: str, state: str) -> None:
    gw.fake.script(gw.keys["anthropic:one"], mode)
    assert _msg(gw.anthropic()).content[0].text == "Hello from the fake."
    assert gw.fake.keys_seen() == [gw.keys["anthropic:one"], gw.keys["anthropic:two"]]
    assert gw.profile("anthropic:one")["state"] == state


def test_gateway_answers_429_with_retry_after_when_nothing_is_ready(gw: GW) -> None:
    for pid in ("anthropic:one", "anthropic:two"):
        gw.fake.script(gw.keys[pid], "429")
    client = gw.anthropic(max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(anthropic.RateLimitError) as info:
        _msg(client)
    waited = time.monotonic() - t0
    assert waited >= 0.9  # [gateway] wait = 1 in these tests
    assert info.value.response.headers["retry-after"].isdigit()
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert "no profile of anthropic is ready" in str(info.value)
    assert len(gw.fake.seen) == 2


def test_gateway_waits_for_a_profile_that_comes_back(gw: GW) -> None:
    d = gw.daemon
    d.call("disable", {"profile": "anthropic:one"})
    d.call("disable", {"profile": "anthropic:two"})
    import threading

    threading.Timer(0.3, lambda: d.call("enable", {"profile": "anthropic:two"})).start()
    msg = _msg(gw.anthropic(max_retries=0))
    assert msg.content[0].text == "Hello from the fake."
    assert gw.fake.keys_seen() == [gw.keys["anthropic:two"]]


def test_gateway_streams_anthropic_chunk_by_chunk(gw: GW) -> None:
    gw.fake.fake.slow_delay = 1.5
    gw.fake.script(gw.keys["anthropic:one"], "slow")
    client = gw.anthropic()
    t0 = time.monotonic()
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=16,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        events = iter(stream)
        first = next(events)
        t_first = time.monotonic() - t0
        rest = list(events)
        t_all = time.monotonic() - t0
        final = stream.get_final_message()
    assert first.type == "message_start"
    assert t_first < 1.0 < t_all
    assert final.content[0].text == "Hello from the fake."
    assert any(e.type == "message_stop" for e in rest)


def test_gateway_streams_openai_chat_and_responses(gw: GW) -> None:
    client = gw.openai()
    chunks = list(client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake."
    events = list(client.responses.create(model="gpt-fake", input="hi", stream=True))
    assert events[-1].type == "response.completed"


def test_gateway_stream_error_event_is_reported(gw: GW) -> None:
    gw.fake.script(gw.keys["anthropic:one"], "stream_error")
    client = gw.anthropic(max_retries=0)
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as stream:
        for _ in stream:
            pass
    gw.wait_log("(stream error overloaded)")
    assert gw.profile("anthropic:one")["last_error"] == "overloaded"


def test_gateway_status_and_metrics(gw: GW) -> None:
    gw.fake.script(gw.keys["anthropic:one"], "429")
    _msg(gw.anthropic())
    status = gw.status()
    assert status["gateway"]["url"] == gw.url
    text = gw.daemon.call("metrics")["text"]
    assert 'argentd_gateway_requests_total{status="200"} 1' in text
    assert 'argentd_gateway_attempts_total{provider="anthropic"} 2' in text
    assert 'argentd_gateway_rotations_total{provider="anthropic"} 1' in text
    assert 'argentd_gateway_upstream_seconds_count{provider="anthropic"} 2' in text


def test_gateway_session_header_keeps_its_profile_and_count_tokens_passes(gw: GW) -> None:
    client = gw.anthropic()
    one, two = gw.keys["anthropic:one"], gw.keys["anthropic:two"]
    sess = {"x-claude-code-session-id": "s-1"}
    gw.daemon.call("disable", {"profile": "anthropic:one"})
    _msg(client, extra_headers=sess)  # the session starts on two
    gw.daemon.call("enable", {"profile": "anthropic:one"})
    for _ in range(3):
        _msg(client)  # no session: the first tier, one
        assert gw.fake.keys_seen()[-1] == one
        _msg(client, extra_headers=sess)
        assert gw.fake.keys_seen()[-1] == two  # the session stays on its account
    count = client.messages.count_tokens(model="claude-sonnet-4-5",
                                         messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens == 7
    assert gw.fake.seen[-1].path == "/v1/messages/count_tokens"
