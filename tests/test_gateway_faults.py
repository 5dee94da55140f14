"""Bad input and broken upstreams: each gets a clear answer in the provider's shape,
and the daemon and its socket clients carry on."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import GW, fake, start

__all__ = ["fake"]


def _msg(client: Any, **kw: Any) -> Any:
    return client.messages.create(model="claude-sonnet-4-5", max_tokens=16,
                                  messages=[{"role": "user", "content": "hi"}], **kw)


def _host_port(gw: GW) -> tuple[str, int]:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _raw(gw: GW, data: bytes, *, more: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send `data` (then keep sending `more` until the answer comes) and read the answer."""
    with socket.create_connection(_host_port(gw), timeout=timeout) as sock:
        sock.sendall(data)
        sock.setblocking(False)
        answer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                    break
            except BlockingIOError:
                if more:
                    with contextlib.suppress(BlockingIOError, BrokenPipeError,
                                             ConnectionResetError):
                        sock.send(more)
                time.sleep(0.001)
            except ConnectionResetError:
                break
        return answer


def test_gateway_not_json_on_a_dialect_path_is_400_in_shape(daemon_factory: Any,
                                                            fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    r = httpx.post(gw.url + "/anthropic/v1/messages", content=b"model=claude",
                   headers={"x-api-key": gw.token, "content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "not JSON" in r.json()["error"]["message"]
    r = httpx.post(gw.url + "/openai/v1/chat/completions", content=b"[1, 2]",
                   headers={"authorization": f"Bearer {gw.token}"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"
    assert fake.seen == []


def test_gateway_100_mib_body_is_413_before_it_is_read(daemon_factory: Any,
                                                      fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    head = (f"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {gw.token}\r\n"
            f"content-type: application/json\r\ncontent-length: {100 * 1024 * 1024}\r\n\r\n")
    answer = _raw(gw, head.encode(), more=b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "request_too_large"
    assert fake.seen == []


def test_gateway_chunked_body_over_the_limit_is_413(daemon_factory: Any,
                                                    fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake, extra="max_body = 100000")
    head = (f"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"authorization: Bearer {gw.token}\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (50000, b"y" * 50000)
    answer = _raw(gw, head.encode() + chunk * 3, more=chunk)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"


def test_gateway_upstream_hang_times_out_504_and_the_daemon_carries_on(
        daemon_factory: Any, fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake, read=0.5)
    fake.script(gw.keys["anthropic:one"], "hang", "ok")
    client = gw.anthropic(max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as info:
        _msg(client)
    assert info.value.status_code == 504
    assert time.monotonic() - t0 < 5
    assert info.value.body["error"]["type"] == "timeout_error"  # type: ignore[index]
    assert gw.profile("anthropic:one")["last_error"] == "timeout"
    assert _msg(client).content[0].text == "Hello from the fake."
    assert gw.daemon.call("hello")["server"] == "argentd"


def test_gateway_upstream_reset_mid_stream_ends_the_stream_with_an_error(
        daemon_factory: Any, fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    fake.script(gw.keys["anthropic:one"], "reset", "ok")
    client = gw.anthropic(max_retries=0)
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info, client.messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as stream:
        for event in stream:
            got.append(event.type)
    assert got == ["message_start"]  # what came before the reset reached the client
    assert "broke mid-stream" in str(info.value)
    gw.wait_log("(upstream broke mid-answer)")
    assert gw.profile("anthropic:one")["last_error"] == "server_error"
    assert _msg(client).content[0].text == "Hello from the fake."


def test_gateway_client_gone_mid_stream_ends_lease_and_upstream(
        daemon_factory: Any, fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    fake.fake.slow_delay = 30.0
    fake.script(gw.keys["anthropic:one"], "slow")
    body = {"model": "m", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client() as c, c.stream("POST", gw.url + "/anthropic/v1/messages", json=body,
                                       headers={"x-api-key": gw.token}) as r:
        chunks = r.iter_raw()  # kept: a dropped iterator closes the response
        first = next(chunks)
        assert b"message_start" in first
        assert len(gw.status()["leases"]) == 1
    # the client hung up long before the fake would send the rest
    t0 = time.monotonic()
    gw.wait_log("(client gone)", timeout=10)
    assert time.monotonic() - t0 < 10
    assert gw.status()["leases"] == []
    # the gone client's lease did not count as a success or a failure
    assert gw.profile("anthropic:one")["error_count"] == 0


def test_gateway_no_profile_of_provider_is_404(daemon_factory: Any,
                                               fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake)
    r = httpx.post(gw.url + "/zai/api/anthropic/v1/messages", json={"model": "glm"},
                   headers={"x-api-key": gw.token})
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    assert "zai" in r.json()["error"]["message"]


def test_gateway_1000_concurrent_requests(daemon_factory: Any, fake: FakeUpstream) -> None:
    # The fake answers the burst one by one in a thread of this process (sharing the GIL
    # with the ten clients): the last of 1,000 requests forwarded at once can wait more
    # than the harness's 5 s read timeout for it, on a loaded box. The gateway's own
    # default is 600 s; what this test checks is that none is lost or refused.
    gw = start(daemon_factory, fake, read=60.0)
    statuses: list[int] = []
    socket_ok: list[bool] = []

    async def main() -> None:
        # Ten clients of 100 connections: one httpx pool of 1,000 is itself slow
        # (its pool bookkeeping is quadratic in connections, see gateway/pool.py).
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        clients = [httpx.AsyncClient(limits=limits, timeout=120) for _ in range(10)]

        async def one(client: httpx.AsyncClient) -> None:
            r = await client.post(gw.url + "/anthropic/v1/messages",
                                  json={"model": "m", "max_tokens": 1, "messages": []},
                                  headers={"x-api-key": gw.token})
            statuses.append(r.status_code)

        async def socket_client() -> None:
            while len(statuses) < 1000:
                ok = await trio.to_thread.run_sync(lambda: gw.daemon.call("hello"))
                socket_ok.append(ok["server"] == "argentd")
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(socket_client)
            for i in range(1000):
                nursery.start_soon(one, clients[i % 10])
        for client in clients:
            await client.aclose()

    trio.run(main)
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
    assert socket_ok and all(socket_ok)
    assert gw.status()["leases"] == []


def test_gateway_upstream_refusing_connections_is_502_in_shape(daemon_factory: Any,
                                                               fake: FakeUpstream) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # nothing listens there once closed
    gw = start(daemon_factory, fake, extra="", routes="")
    gw.daemon.config.write_text(gw.daemon.config.read_text().replace(
        fake.url + "/v1", f"http://127.0.0.1:{dead}/v1"))
    gw.daemon.call("reload")
    o = gw.openai(max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        o.models.list()
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_error"  # type: ignore[index]
    assert gw.profile("openai:a")["last_error"] == "server_error"


def test_gateway_client_that_stops_reading_is_dropped_after_the_write_timeout(
        daemon_factory: Any, fake: FakeUpstream) -> None:
    gw = start(daemon_factory, fake, extra="")
    text = gw.daemon.config.read_text().replace("[gateway.timeouts]\n",
                                                "[gateway.timeouts]\nwrite = 1.0\n")
    gw.daemon.config.write_text(text)
    gw.daemon.call("reload")
    fake.script(gw.keys["anthropic:one"], "big")
    body = json.dumps({"model": "m", "max_tokens": 1, "stream": True, "messages": []})
    head = (f"POST /anthropic/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {gw.token}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    with socket.create_connection(_host_port(gw)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(head.encode() + body.encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        # ...and read no more: the gateway holds one chunk, then gives up on us
        line = gw.wait_log("(client gone)", timeout=20)
        assert "status=200" in line
        assert gw.status()["leases"] == []
        assert gw.daemon.call("hello")["server"] == "argentd"
