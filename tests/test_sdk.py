"""`argent_client.sdk`: the real anthropic and openai SDKs, built from real leases.

Leases come from the real argentd (the worker's shared one, `daemon` below:
`anthropic:one` is a setup token, `anthropic:two` an API key, `openai:main` an
API key); the provider is a local fake (`header_recorder`, port 0) that records what the
SDK sent. Stale credentials in the environment must never reach it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from argent_client import Client, classify
from argent_client.protocol import LeaseResult
from argent_client.sdk import (
    anthropic_client,
    async_anthropic_client,
    async_openai_client,
    openai_client,
    sdk_kwargs,
)

from .conftest import Daemon
from .header_recorder import Recorder, recorder

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")

STALE = {"ANTHROPIC_API_KEY": "sk-ant-api03-stale" + "s" * 40,
         "ANTHROPIC_AUTH_TOKEN": "sk-ant-oat01-stale" + "t" * 40,
         "OPENAI_API_KEY": "sk-proj-stale" + "u" * 40}
MESSAGE: dict[str, Any] = {"model": "claude-x", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hi"}]}
CHAT: dict[str, Any] = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Daemon:
    """The worker's shared argentd, its state made fresh after each test (conftest
    `SharedDaemon`): these tests only lease, report and disable."""
    return shared_daemon


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    for name, value in STALE.items():
        monkeypatch.setenv(name, value)
    with recorder() as rec:
        yield rec


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.socket, timeout=10, fallback_env=False) as c:
        yield c


def assert_clean(headers: dict[str, str]) -> None:
    for value in headers.values():
        assert not any(stale in value for stale in STALE.values())


def test_sdk_anthropic_api_key_goes_as_x_api_key(client: Client, fake: Recorder) -> None:
    client.disable("anthropic:one")
    fake.headers = {"anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "7"}
    with client.lease("anthropic") as lease:
        assert lease.type == "api-key"
        reply = anthropic_client(lease, base_url=fake.url).messages.create(**MESSAGE)
        lease.record_usage(reply)
        # every response's rate-limit headers reached the lease (sent with the release)
        assert lease.limits is not None
        assert (lease.limits.requests_limit, lease.limits.requests_remaining) == (50, 7)
    seen = fake.only()
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == lease.token
    assert "authorization" not in seen.headers  # anthropic 2.x would send api_key as a bearer
    assert_clean(seen.headers)


def test_sdk_anthropic_setup_token_goes_as_bearer_with_oauth_beta(
    client: Client, fake: Recorder
) -> None:
    with client.lease("anthropic") as lease:
        assert lease.type == "setup-token"
        anthropic_client(lease, base_url=fake.url).messages.create(**MESSAGE)
    seen = fake.only().headers
    assert seen["authorization"] == f"Bearer {lease.token}"
    assert "oauth-2025-04-20" in seen["anthropic-beta"].split(",")
    assert "x-api-key" not in seen
    assert_clean(seen)


def test_sdk_openai_key_goes_as_bearer(client: Client, fake: Recorder) -> None:
    fake.headers = {"x-ratelimit-remaining-requests": "3"}
    with client.lease("openai") as lease:
        reply = openai_client(lease, base_url=fake.url + "/v1").chat.completions.create(**CHAT)
        assert reply.choices[0].message.content == "ok"
        assert lease.limits is not None and lease.limits.requests_remaining == 3
        quiet = openai_client(lease, base_url=fake.url + "/v1", observe=False)
        fake.headers = {"x-ratelimit-remaining-requests": "2"}
        quiet.chat.completions.create(**CHAT)
        assert lease.limits.requests_remaining == 3
    seen = fake.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {lease.token}"
    assert "x-api-key" not in seen.headers
    assert_clean(seen.headers)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_sdk_async_clients(daemon: Daemon, fake: Recorder, anyio_backend: str) -> None:
    from argent_client import AsyncClient

    fake.headers = {"x-ratelimit-remaining-requests": "5"}
    async with AsyncClient(daemon.socket, timeout=10, fallback_env=False) as client:
        async with client.lease("anthropic") as lease:
            await async_anthropic_client(lease, base_url=fake.url).messages.create(**MESSAGE)
            assert lease.limits is not None and lease.limits.requests_remaining == 5
        await client.disable("anthropic:one")
        async with client.lease("anthropic") as key:
            await async_anthropic_client(key, base_url=fake.url).messages.create(**MESSAGE)
        async with client.lease("openai") as oai:
            sdk = async_openai_client(oai, base_url=fake.url + "/v1")
            await sdk.chat.completions.create(**CHAT)
            assert oai.limits is not None and oai.limits.requests_remaining == 5
    token, api_key, chat = (r.headers for r in fake.requests)
    assert token["authorization"] == f"Bearer {lease.token}" and "x-api-key" not in token
    assert "oauth-2025-04-20" in token["anthropic-beta"].split(",")
    assert api_key["x-api-key"] == key.token and "authorization" not in api_key
    assert chat["authorization"] == f"Bearer {oai.token}" and "x-api-key" not in chat
    for headers in (token, api_key, chat):
        assert_clean(headers)


def test_sdk_does_not_retry_a_spent_key(client: Client, fake: Recorder) -> None:
    fake.status, fake.headers = 429, {"retry-after": "2"}
    with pytest.raises(anthropic.RateLimitError) as info, client.lease("anthropic") as lease:
        anthropic_client(lease, base_url=fake.url).messages.create(**MESSAGE)
    assert len(fake.requests) == 1  # the SDK's default would wait 2 s and try the same key
    failure = classify(info.value)
    assert failure is not None and (failure.kind, failure.retry_after) == ("rate_limit", 2.0)
    assert next(p for p in client.status().profiles if p.id == lease.profile).state == "cooldown"


def test_sdk_kwargs_for_providers_of_other_vendors() -> None:
    def lease(provider: str, headers: dict[str, str]) -> LeaseResult:
        return LeaseResult(lease_id="L", profile=f"{provider}:x", provider=provider,
                           type="api-key", token="tok", label="", headers=headers,
                           expires_at=0.0, source="profile")

    zai = sdk_kwargs("anthropic", lease("zai", {"Authorization": "Bearer tok"}))
    assert zai == {"max_retries": 0, "auth_token": "tok", "default_headers": {},
                   "base_url": "https://api.z.ai/api/anthropic"}
    router = sdk_kwargs("openai", lease("openrouter", {"Authorization": "Bearer tok"}),
                        base_url=None)
    assert router["base_url"] == "https://openrouter.ai/api/v1"
    codex = sdk_kwargs("openai", lease("openai-codex", {"Authorization": "Bearer tok",
                                                         "chatgpt-account-id": "acct"}),
                       base_url="http://local")
    assert codex == {"max_retries": 0, "api_key": "tok", "base_url": "http://local",
                     "default_headers": {"chatgpt-account-id": "acct"}}


def test_sdk_module_imports_no_sdk() -> None:
    import subprocess
    import sys

    code = ("import sys, argent_client.sdk; "
            "print('anthropic' in sys.modules, 'openai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
