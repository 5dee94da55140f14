"""The goodput benchmark's fake Anthropic: bucket arithmetic, headers, the HTTP server."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from argent_client.classify import classify, parse_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import contextlib

import fake_provider as fp

WALL = 1_800_000_000.0  # a whole second, so rounding is easy to state
API = fp.KeySpec("k0", "sk-ant-api03-bench" + "a" * 40, fp.KeyShape(rate=20, burst=5))
SUB = fp.KeySpec("k1", "sk-ant-oat01-bench" + "b" * 40,
                 fp.KeyShape(rate=20, burst=5, window_quota=3, window_seconds=5.0))


def _h(d: fp.Decision) -> dict[str, str]:
    return dict(d.headers)


def test_limiter_takes_token_at_arrival_until_burst_spent() -> None:
    lim = fp.Limiter([API], now=0.0)
    answers = [lim.decide(API.key, now=0.0, wall=WALL) for _ in range(6)]
    assert [a.status for a in answers] == [200, 200, 200, 200, 200, 429]
    assert [_h(a)["anthropic-ratelimit-requests-remaining"] for a in answers] == [
        "4", "3", "2", "1", "0", "0"]
    assert _h(answers[0])["anthropic-ratelimit-requests-limit"] == "5"
    assert _h(answers[5])["retry-after"] == "1"
    assert b'"rate_limit_error"' in answers[5].body
    assert lim.stats(1.0)["keys"]["k0"] == {
        "requests": 6, "ok": 5, "429": 1, "rate_limited": 1, "rejected": 0,
        "rate": 20, "burst": 5, "window_quota": None, "window_seconds": None,
        "week_quota": None, "week_seconds": None, "windows": {}}


def test_limiter_refills_at_rate() -> None:
    lim = fp.Limiter([API], now=0.0)
    for _ in range(5):
        lim.decide(API.key, now=0.0, wall=WALL)
    assert lim.decide(API.key, now=0.049, wall=WALL).status == 429
    assert lim.decide(API.key, now=0.050, wall=WALL).status == 200
    assert lim.decide(API.key, now=0.050, wall=WALL).status == 429


def test_limiter_reset_header_says_when_the_bucket_is_full() -> None:
    lim = fp.Limiter([API], now=0.0, reset_precision="ms")
    lim.decide(API.key, now=0.0, wall=WALL)  # 4 left: full in 1/20 s
    d = lim.decide(API.key, now=0.0, wall=WALL)  # 3 left: full in 2/20 s
    assert _h(d)["anthropic-ratelimit-requests-reset"] == "2027-01-15T08:00:00.100Z"
    assert datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp() == WALL


def test_limiter_reset_header_in_whole_seconds_rounds_up() -> None:
    lim = fp.Limiter([API], now=0.0, reset_precision="s")
    d = lim.decide(API.key, now=0.0, wall=WALL + 0.5)
    assert _h(d)["anthropic-ratelimit-requests-reset"] == "2027-01-15T08:00:01Z"


def test_limiter_retry_after_is_whole_seconds_at_least_one() -> None:
    slow = fp.KeySpec("k0", API.key, fp.KeyShape(rate=0.4, burst=1))
    lim = fp.Limiter([slow], now=0.0)
    assert lim.decide(slow.key, now=0.0, wall=WALL).status == 200
    d = lim.decide(slow.key, now=0.0, wall=WALL)
    assert (d.status, _h(d)["retry-after"]) == (429, "3")  # 2.5 s until a token, rounded up


def test_limiter_subscription_rejected_until_window_ends() -> None:
    lim = fp.Limiter([SUB], now=0.0)
    ok = [lim.decide(SUB.key, now=t, wall=WALL + t) for t in (0.0, 0.1, 0.2)]
    assert [d.status for d in ok] == [200, 200, 200]
    assert [_h(d)["anthropic-ratelimit-unified-status"] for d in ok] == [
        "allowed", "allowed", "rejected"]
    d = lim.decide(SUB.key, now=1.2, wall=WALL + 1.2)
    h = _h(d)
    assert d.status == 429
    assert h["anthropic-ratelimit-unified-status"] == "rejected"
    assert h["anthropic-ratelimit-unified-reset"] == str(int(WALL) + 5)
    assert h["retry-after"] == "4"
    assert lim.decide(SUB.key, now=4.99, wall=WALL + 4.99).status == 429
    assert lim.decide(SUB.key, now=5.0, wall=WALL + 5.0).status == 200
    counts = lim.stats(5.0)["keys"]["k1"]
    assert (counts["ok"], counts["rejected"], counts["rate_limited"]) == (4, 2, 0)


TWO = fp.KeySpec("k2", "sk-ant-oat01-bench" + "c" * 40,
                 fp.KeyShape(rate=100, burst=100, window_quota=4, window_seconds=10.0,
                             week_quota=6, week_seconds=100.0))


def test_limiter_two_windows_reported_per_request_and_week_binds() -> None:
    lim = fp.Limiter([TWO], now=0.0)
    first = _h(lim.decide(TWO.key, now=0.0, wall=WALL))
    u = "anthropic-ratelimit-unified-"
    assert (first[u + "5h-utilization"], first[u + "7d-utilization"]) == ("0.25", "0.17")
    assert (first[u + "5h-reset"], first[u + "7d-reset"]) == (str(int(WALL) + 10),
                                                              str(int(WALL) + 100))
    assert first[u + "representative-claim"] == "five_hour"
    assert (first[u + "fallback"], first[u + "overage-status"]) == ("available", "rejected")
    for t in (0.1, 0.2, 0.3):
        lim.decide(TWO.key, now=t, wall=WALL + t)
    spent = lim.decide(TWO.key, now=1.0, wall=WALL + 1)  # the 5h window: 4 of 4
    assert (spent.status, _h(spent)[u + "5h-status"], _h(spent)["retry-after"]) == (
        429, "rejected", "9")
    assert _h(spent)[u + "reset"] == str(int(WALL) + 10)
    # The next "5-hour" window: two more spend the week (6), which then rejects until 100 s.
    ok = [lim.decide(TWO.key, now=t, wall=WALL + t).status for t in (10.0, 10.1)]
    week = lim.decide(TWO.key, now=10.2, wall=WALL + 10.2)
    h = _h(week)
    assert ok == [200, 200] and week.status == 429
    assert (h[u + "status"], h[u + "5h-status"], h[u + "7d-status"]) == (
        "rejected", "allowed", "rejected")
    assert (h[u + "reset"], h[u + "representative-claim"]) == (str(int(WALL) + 100),
                                                               "seven_day")
    limits = parse_limits(h, now=WALL + 10.2)
    assert limits is not None and limits.unified_7d_utilization == 1.0
    assert limits.unified_5h_utilization == 0.5
    assert lim.decide(TWO.key, now=99.9, wall=WALL + 99.9).status == 429
    assert lim.decide(TWO.key, now=100.0, wall=WALL + 100).status == 200
    assert lim.stats(100.0)["keys"]["k2"]["windows"] == {
        "5h": {"used": 1, "quota": 4}, "7d": {"used": 1, "quota": 6}}


def test_capacity_is_capped_by_the_week() -> None:
    shape = fp.KeyShape(100, 100, window_quota=4, window_seconds=10.0, week_quota=6,
                        week_seconds=100.0)
    assert fp.capacity(shape, 30.0) == 6.0
    assert fp.capacity(shape, 150.0) == 12.0


def test_config_round_trips_both_windows(tmp_path: Path) -> None:
    path = str(tmp_path / "p.json")
    fp.write_config(path, [TWO, API], latency=0.01, reset_precision="s")
    keys, latency, precision = fp.read_config(path)
    assert [k.shape for k in keys] == [TWO.shape, API.shape]
    assert (latency, precision) == (0.01, "s")


def test_limiter_unknown_key_is_401_and_counted_apart() -> None:
    lim = fp.Limiter([API], now=0.0)
    assert lim.decide("sk-ant-api03-nope", now=0.0, wall=WALL).status == 401
    assert lim.decide(None, now=0.0, wall=WALL).status == 401
    stats = lim.stats(0.0)
    assert stats["unknown_key"] == 2
    assert stats["keys"]["k0"]["requests"] == 0


def test_limiter_reset_refills_and_zeroes() -> None:
    lim = fp.Limiter([SUB], now=0.0)
    for t in (0.0, 0.0, 0.0, 0.0):
        lim.decide(SUB.key, now=t, wall=WALL)
    lim.reset(1.0)
    assert lim.decide(SUB.key, now=1.0, wall=WALL + 1).status == 200
    assert lim.stats(1.0)["keys"]["k1"]["requests"] == 1


def test_headers_parse_as_the_client_reads_them() -> None:
    lim = fp.Limiter([API, SUB], now=0.0, reset_precision="ms")
    limits = parse_limits(_h(lim.decide(API.key, now=0.0, wall=WALL)), now=WALL)
    assert limits is not None
    assert (limits.requests_limit, limits.requests_remaining) == (5, 4)
    assert limits.requests_reset == pytest.approx(WALL + 0.05)
    for _ in range(3):
        d = lim.decide(SUB.key, now=0.0, wall=WALL)
    sub = parse_limits(_h(d), now=WALL)
    assert sub is not None
    assert (sub.unified_status, sub.unified_reset, sub.unified_5h_utilization) == (
        "rejected", WALL + 5, 1.0)


def test_capacity_plain_key_and_subscription_windows() -> None:
    assert fp.capacity(fp.KeyShape(20, 5), 30.0) == 605.0
    # 50 per 5 s window, bucket allows 5 + 20*len: 6 full windows and a 1 s one capped at 25.
    assert fp.capacity(fp.KeyShape(20, 5, window_quota=50, window_seconds=5.0), 31.0) == 325.0


def test_rfc3339_millisecond_rounds_up() -> None:
    assert fp.rfc3339(WALL + 0.0001, "ms") == "2027-01-15T08:00:00.001Z"
    assert fp.rfc3339(WALL, "s") == "2027-01-15T08:00:00Z"


def test_secret_of_reads_api_key_then_bearer() -> None:
    assert fp.secret_of({"x-api-key": "A", "authorization": "Bearer B"}) == "A"
    assert fp.secret_of({"authorization": "bearer  B "}) == "B"
    assert fp.secret_of({"authorization": "Basic B"}) is None


# ---------------------------------------------------------------- the server


@pytest.fixture
def server() -> Iterator[fp.Server]:
    # A slow refill, so sequential requests spend the bucket despite the latency.
    slow = fp.KeySpec("k0", API.key, fp.KeyShape(rate=0.5, burst=5))
    srv = fp.Server(fp.Limiter([slow, SUB], now=time.monotonic()), latency=0.05)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            started: asyncio.Future[int] = loop.create_future()
            task.append(asyncio.create_task(fp.serve(srv, started=started)))
            await started
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task[0]

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield srv
    loop.call_soon_threadsafe(task[0].cancel)
    thread.join(10)
    loop.close()


def test_serve_answers_after_latency_on_one_keepalive_connection(server: fp.Server) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
        start = time.monotonic()
        first = http.post("/v1/messages", headers={"x-api-key": API.key}, content=b"{}")
        assert time.monotonic() - start >= 0.05
        assert first.status_code == 200
        assert first.json()["usage"] == {"input_tokens": 12, "output_tokens": 1}
        for _ in range(5):
            last = http.post("/v1/messages", headers={"x-api-key": API.key}, content=b"{}")
        assert last.status_code == 429
        failure = classify(httpx.HTTPStatusError("429", request=last.request, response=last))
        assert failure is not None
        assert (failure.kind, failure.retry_after) == ("rate_limit", 2.0)
        bearer = http.post("/v1/messages", headers={"authorization": f"Bearer {SUB.key}"},
                           content=b"{}")
        assert bearer.headers["anthropic-ratelimit-unified-status"] == "allowed"
        stats = http.get("/admin/stats").json()
        assert (stats["keys"]["k0"]["ok"], stats["keys"]["k0"]["429"]) == (5, 1)
        assert stats["keys"]["k1"]["ok"] == 1
        assert http.post("/admin/reset").json() == {"reset": True}
        assert http.get("/admin/stats").json()["keys"]["k0"]["requests"] == 0
        assert http.get("/nowhere").status_code == 404


def test_serve_keeps_answer_order_for_pipelined_requests(server: fp.Server) -> None:
    import socket

    req = (f"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {API.key}\r\n"
           "content-length: 2\r\n\r\n{}").encode()
    stats = b"GET /admin/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(req + stats)  # the stats answer is ready first but must come second
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and b"msg_bench" in first
    assert second.startswith(b"200") and b'"elapsed"' in second
