"""The gateway's pure parts: URL planning, dialect shapes, stream scanning, header swap,
the token file and exec's environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from argent_client import gateway as G
from argent_client.protocol import Usage
from argentd.config import parse_config
from argentd.gateway import dialects as D
from argentd.gateway.service import parse_listen
from argentd.gateway.swap import forward_headers, strip_key
from argentd.gateway.upstreams import NotFound, Upstreams, path_dialect

CONFIG = parse_config(b"""
[routes]
code = ["anthropic/claude-sonnet-4-5", "openai/gpt-4o", "zai/glm-4.6"]
[upstream.anthropic]
anthropic = "http://127.0.0.1:9/"
[upstream."z.ai"]
anthropic = "http://127.0.0.1:10/api/anthropic"
""")


def test_upstreams_provider_url_keeps_path_and_query() -> None:
    plan = Upstreams(CONFIG).plan("/anthropic/v1/messages", "beta=true")
    assert plan.dialect == "anthropic"
    assert [t.url for t in plan.targets] == ["http://127.0.0.1:9/v1/messages?beta=true"]
    plan = Upstreams(CONFIG).plan("/zai/api/anthropic/v1/messages", "")
    assert plan.targets[0].url == "http://127.0.0.1:10/api/anthropic/v1/messages"
    assert plan.provider == "zai"  # `[upstream."z.ai"]` normalised
    plan = Upstreams(CONFIG).plan("/openai/v1/models", "")
    assert plan.targets[0].url == "https://api.openai.com/v1/models"
    assert plan.dialect == "openai"


def test_upstreams_route_skips_targets_without_the_dialect() -> None:
    plan = Upstreams(CONFIG).plan("/route/code/v1/messages", "")
    assert [(t.provider, t.model, t.url) for t in plan.targets] == [
        ("anthropic", "claude-sonnet-4-5", "http://127.0.0.1:9/v1/messages"),
        ("zai", "glm-4.6", "http://127.0.0.1:10/api/anthropic/v1/messages"),
    ]
    for path in ("/route/code/chat/completions", "/route/code/v1/chat/completions"):
        plan = Upstreams(CONFIG).plan(path, "")
        assert plan.dialect == "openai"
        assert plan.targets[0].url == "https://api.openai.com/v1/chat/completions"


@pytest.mark.parametrize("path", ["/route/nope/v1/messages", "/route/code/v1/files",
                                  "/nosuch/v1/models", "/"])
def test_upstreams_unknown_is_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        Upstreams(CONFIG).plan(path, "")


def test_path_dialect() -> None:
    assert path_dialect("/v1/messages/count_tokens") == "anthropic"
    assert path_dialect("/responses") == "openai"
    assert path_dialect("/v1/embeddings") == "openai"
    assert path_dialect("/v2/other") is None


def test_error_bodies_in_each_shape() -> None:
    import json

    a = json.loads(D.error_body("anthropic", "rate_limit", "busy"))
    assert a == {"type": "error", "error": {"type": "rate_limit_error",
                                            "message": "argentd gateway: busy"}}
    o = json.loads(D.error_body("openai", "auth", "no"))
    assert o["error"]["code"] == "invalid_api_key"


def test_probe_and_rewrite() -> None:
    body = b'{"model": "x", "stream": true, "metadata": {"user_id": "u1"}, "max_tokens": 5}'
    assert D.probe(body) == D.Probe(model="x", stream=True, user_id="u1")
    assert D.probe(b'{"model": 3}') == D.Probe()
    with pytest.raises(D.NotJson):
        D.probe(b"[1]")
    with pytest.raises(D.NotJson):
        D.probe(b"model=x")
    import json

    assert json.loads(D.rewrite_model(body, "glm"))["model"] == "glm"


def test_sse_watch_reads_usage_and_errors_across_chunk_cuts() -> None:
    stream = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
              b'{"input_tokens":11,"output_tokens":1}}}\n\n'
              b'event: content_block_delta\ndata: {"type":"content_block_delta",'
              b'"delta":{"text":"an error word"}}\n\n'
              b'event: message_delta\ndata: {"type":"message_delta","usage":'
              b'{"output_tokens":5}}\n\n')
    for cut in (1, 7, 50, len(stream)):
        w = D.SseWatch()
        for i in range(0, len(stream), cut):
            w.feed(stream[i:i + cut])
        assert w.usage == Usage(input_tokens=11, output_tokens=5)
        assert w.error is None
    w = D.SseWatch()
    w.feed(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n')
    assert w.error == {"type": "overloaded_error"}
    w = D.SseWatch()
    w.feed(b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5}}\n\n')
    assert w.usage == Usage(input_tokens=9, output_tokens=5)


def test_sse_watch_gives_up_on_an_endless_line() -> None:
    w = D.SseWatch()
    w.feed(b"data: " + b"x" * (D.MAX_KEPT + 10))
    assert w.gave_up


def test_forward_headers_swap_credentials_and_merge_beta() -> None:
    client = [(b"host", b"x"), (b"x-api-key", b"local"), (b"authorization", b"Bearer local"),
              (b"anthropic-beta", b"a,b"), (b"x-argent-session", b"s"),
              (b"connection", b"keep-alive, x-drop"), (b"x-drop", b"1"),
              (b"anthropic-version", b"2023-06-01"), (b"accept-encoding", b"gzip")]
    out = forward_headers(client, {"Authorization": "Bearer real", "anthropic-beta": "b,c"})
    assert (b"authorization", b"Bearer real") in out
    assert (b"anthropic-beta", b"a,b,c") in out
    assert (b"anthropic-version", b"2023-06-01") in out
    assert (b"accept-encoding", b"identity") in out
    names = [k for k, _ in out]
    assert b"x-api-key" not in names and b"host" not in names and b"x-drop" not in names
    assert b"x-argent-session" not in names
    assert sum(1 for k in names if k == b"authorization") == 1


def test_strip_key_and_parse_listen() -> None:
    assert strip_key("alt=sse&key=T0K&x=1") == ("alt=sse&x=1", "T0K")
    assert strip_key("a=1") == ("a=1", None)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8411") == ("::1", 8411)
    with pytest.raises(ValueError):
        parse_listen("localhost")


def test_token_file_made_0600_kept_and_rotated(tmp_path: Path) -> None:
    path = tmp_path / "rt" / "gateway.token"
    first = G.ensure_token(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert G.ensure_token(path) == first
    second = G.rotate_token(path)
    assert second != first and G.read_token(path) == second
    os.chmod(path, 0o644)
    with pytest.raises(G.TokenFileError, match="chmod 600"):
        G.read_token(path)


def test_gateway_env_for_a_provider_and_a_route() -> None:
    base = {"PATH": "/bin", "ANTHROPIC_AUTH_TOKEN": "x", "CLAUDE_CODE_OAUTH_TOKEN": "y",
            "ANTHROPIC_API_KEY": "old", "OPENROUTER_API_KEY": "k", "ZAI_API_KEY": "z"}
    env = G.gateway_env(base, "http://h:1/", "TOK", provider="anthropic")
    assert env["ANTHROPIC_BASE_URL"] == "http://h:1/anthropic"
    assert env["ANTHROPIC_API_KEY"] == "TOK"
    assert "ANTHROPIC_AUTH_TOKEN" not in env and "CLAUDE_CODE_OAUTH_TOKEN" not in env
    assert env["OPENROUTER_API_KEY"] == "k"
    env = G.gateway_env(base, "http://h:1", "TOK", route="code",
                        drop_providers={"anthropic", "zai"})
    assert env["ANTHROPIC_BASE_URL"] == "http://h:1/route/code"
    assert env["OPENAI_BASE_URL"] == "http://h:1/route/code/v1"
    assert env["OPENAI_API_KEY"] == "TOK" and "ZAI_API_KEY" not in env
    with pytest.raises(ValueError):
        G.gateway_env(base, "http://h:1", "TOK", provider="unknownprov")


def test_gateway_config_defaults_and_limits() -> None:
    c = parse_config(b"")
    # the documented default (a value read, nothing bound)
    assert c.gateway.listen.rsplit(":", 1) == ["127.0.0.1", "8411"]
    assert (c.gateway.attempts, c.gateway.wait) == (4, 30.0)
    from argentd.config import ConfigError

    with pytest.raises(ConfigError):
        parse_config(b"[gateway]\nattempts = 0\n")
    with pytest.raises(ConfigError):
        parse_config(b'[upstream.x]\nanthropic = "ftp://a"\n')
    with pytest.raises(ConfigError):
        parse_config(b"[gateway]\nnope = 1\n")

