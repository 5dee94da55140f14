"""Fake providers for the gateway tests: a real HTTP/1.1 server on 127.0.0.1, port 0.

It answers the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`)
and the OpenAI API (`/v1/chat/completions`, `/v1/responses`, `/v1/models`), each
as JSON or, with `"stream": true`, as Server-Sent Events sent chunk by chunk.

Behaviour is scripted per credential (the `x-api-key`, bearer or
`x-goog-api-key` value it receives): `script(key, "429", "ok")` makes the
next two requests of that key answer 429 then 200, and the last mode sticks.
Modes:

- `ok` — a normal answer with rate-limit headers (`anthropic-ratelimit-*`
  or `x-ratelimit-*`);
- `429` (rate_limit_error, `retry-after: 30`), `529` (overloaded_error),
  `503`, `401` (authentication_error), `quota` (400 "credit balance is too
  low"), `unified` (429 with `anthropic-ratelimit-unified-status: rejected`
  and a reset an hour ahead);
- `hang` — reads the request and never answers (until the server stops);
- `reset` — starts a stream, sends its first event, then resets the
  connection;
- `slow` — a stream whose first event leaves at once and the rest
  `slow_delay` seconds later;
- `stream_error` — a 200 stream with an `error` event (overloaded_error) in it.

Every request is recorded (`seen`: path, lower-cased headers, body) so a
test can check which credential went where and that the local token never
left the gateway. Unknown keys answer 401.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    key: str | None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Fake:
    modes: dict[str, list[str]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    slow_delay: float = 1.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def next_mode(self, key: str | None) -> str:
        with self.lock:
            script = self.modes.get(key or "")
            if not script:
                return "401"
            return script.pop(0) if len(script) > 1 else script[0]


def _key_of(headers: dict[str, str]) -> str | None:
    if "x-api-key" in headers:
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-goog-api-key")


def _anthropic_error(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}}


def _openai_error(etype: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    # ------------------------------------------------------------ plumbing

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        key = _key_of(headers)
        fake = self.server.fake
        path = self.path.split("?")[0]
        with fake.lock:
            fake.seen.append(Seen(self.command, self.path, headers, body, key))
        mode = fake.next_mode(key)
        openai = "/chat/completions" in path or "/responses" in path or path.endswith("/models")
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        stream = isinstance(req, dict) and req.get("stream") is True
        if mode == "hang":
            fake.stop.wait(60)
            self.close_connection = True
            return
        if mode in ("429", "529", "503", "401", "quota", "unified"):
            self._error(mode, openai)
            return
        if path.endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "gpt-fake", "object": "model",
                                                         "created": 0, "owned_by": "fake"}]},
                       openai=True)
            return
        if path.endswith("/count_tokens"):
            self._json(200, {"input_tokens": 7})
            return
        model = req.get("model", "m") if isinstance(req, dict) else "m"
        if "/chat/completions" in path:
            events = _chat_events(model) if stream else None
            answer = _chat(model)
        elif "/responses" in path:
            events = _responses_events(model) if stream else None
            answer = _response(model)
        elif path.endswith("/v1/messages"):
            events = _message_events(model, mode == "stream_error") if stream else None
            answer = _message(model)
        else:
            self._json(404, _openai_error("invalid_request_error", "not_found", "no such path"),
                       openai=True)
            return
        if events is None:
            self._json(200, answer, openai=openai)
        else:
            self._stream(events, mode, openai)

    def _limits(self, openai: bool) -> list[tuple[str, str]]:
        if openai:
            return [("x-ratelimit-limit-requests", "100"),
                    ("x-ratelimit-remaining-requests", "99"),
                    ("x-ratelimit-reset-requests", "1s")]
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
        return [("anthropic-ratelimit-requests-limit", "100"),
                ("anthropic-ratelimit-requests-remaining", "99"),
                ("anthropic-ratelimit-requests-reset", reset)]

    def _json(self, status: int, obj: Any, *, openai: bool = False,
              extra: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_fake")
        for k, v in [*self._limits(openai), *extra]:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, mode: str, openai: bool) -> None:
        extra: list[tuple[str, str]] = []
        if mode == "429":
            status = 429
            extra = [("retry-after", "30")]
            obj = (_openai_error("requests", "rate_limit_exceeded", "Rate limit reached")
                   if openai else _anthropic_error("rate_limit_error", "Rate limited"))
        elif mode == "unified":
            status = 429
            extra = [("anthropic-ratelimit-unified-status", "rejected"),
                     ("anthropic-ratelimit-unified-reset", str(int(time.time()) + 3600)),
                     ("anthropic-ratelimit-unified-5h-utilization", "1.0")]
            obj = _anthropic_error("rate_limit_error", "This request would exceed your limit")
        elif mode == "529":
            status = 529
            obj = _anthropic_error("overloaded_error", "Overloaded")
        elif mode == "503":
            status = 503
            obj = _openai_error("server_error", "unavailable", "Service unavailable")
        elif mode == "quota":
            status = 400
            obj = _anthropic_error("invalid_request_error",
                                   "Your credit balance is too low to access the API.")
        else:
            status = 401
            obj = (_openai_error("invalid_request_error", "invalid_api_key", "Incorrect API key")
                   if openai else _anthropic_error("authentication_error", "invalid x-api-key"))
        self._json(status, obj, openai=openai, extra=extra)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, events: list[bytes], mode: str, openai: bool) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        for k, v in self._limits(openai):
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()
        for i, event in enumerate(events):
            self._chunk(event)
            if i == 0 and mode == "reset":
                # RST instead of FIN: the reader sees a broken connection.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            if i == 0 and mode == "slow":
                self.server.fake.stop.wait(self.server.fake.slow_delay)
        self._chunk(b"")


def _sse(event: str | None, data: Any) -> bytes:
    text = json.dumps(data) if not isinstance(data, str) else data
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def _message(model: str) -> dict[str, Any]:
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello from the fake."}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 5}}


def _message_events(model: str, error: bool) -> list[bytes]:
    start = _message(model) | {"content": [], "stop_reason": None,
                               "usage": {"input_tokens": 11, "output_tokens": 1}}
    events = [_sse("message_start", {"type": "message_start", "message": start}),
              _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})]
    for word in ("Hello", " from", " the", " fake."):
        events.append(_sse("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": word}}))
    if error:
        events.append(_sse("error", _anthropic_error("overloaded_error", "Overloaded")))
        return events
    events += [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
               _sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": 5}}),
               _sse("message_stop", {"type": "message_stop"})]
    return events


def _chat(model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hello from the fake."}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}


def _chat_events(model: str) -> list[bytes]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": model}
    events = []
    for i, word in enumerate(("Hello", " from", " the", " fake.")):
        delta: dict[str, Any] = {"content": word}
        if i == 0:
            delta["role"] = "assistant"
        events.append(_sse(None, base | {"choices": [{"index": 0, "delta": delta,
                                                      "finish_reason": None}]}))
    events.append(_sse(None, base | {"choices": [{"index": 0, "delta": {},
                                                  "finish_reason": "stop"}]}))
    events.append(_sse(None, base | {"choices": [], "usage": {
        "prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}))
    events.append(b"data: [DONE]\n\n")
    return events


def _response(model: str) -> dict[str, Any]:
    return {"id": "resp_fake", "object": "response", "created_at": 0, "model": model,
            "status": "completed", "output": [{
                "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello from the fake.",
                             "annotations": []}]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 9, "output_tokens": 5, "total_tokens": 14,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def _responses_events(model: str) -> list[bytes]:
    done = _response(model)
    created = done | {"status": "in_progress", "output": [], "usage": None}
    events = [_sse("response.created", {"type": "response.created", "sequence_number": 0,
                                        "response": created})]
    for i, word in enumerate(("Hello", " from", " the", " fake.")):
        events.append(_sse("response.output_text.delta", {
            "type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "delta": word, "logprobs": []}))
    events.append(_sse("response.completed", {"type": "response.completed",
                                              "sequence_number": 9, "response": done}))
    return events


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: Fake) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.fake = fake


class FakeUpstream:
    """A running fake provider; use as a context manager or call `close()`."""

    def __init__(self) -> None:
        self.fake = Fake()
        self.server = FakeServer(self.fake)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()

    def script(self, key: str, *modes: str) -> None:
        """The next answers for `key` (the last mode sticks); `ok` if none given."""
        with self.fake.lock:
            self.fake.modes[key] = list(modes or ("ok",))

    @property
    def seen(self) -> list[Seen]:
        with self.fake.lock:
            return list(self.fake.seen)

    def keys_seen(self) -> list[str | None]:
        return [s.key for s in self.seen]

    def close(self) -> None:
        self.fake.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
