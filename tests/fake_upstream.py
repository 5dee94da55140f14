"""Fake providers for the gateway tests: a real HTTP/1.1 server on 127.0.0.1, port 0.

It answers the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`)
and the OpenAI API (`/v1/chat/completions`, `/v1/responses`, `/v1/models`), each
as JSON or, with `"stream": true`, as Server-Sent Events sent chunk by chunk.

Behaviour is scripted per credential (the `x-api-key`, bearer or
`x-goog-api-key` value it receives): `script(key, "429", "ok")` makes the
next two requests of that key answer 429 then 200, and the last mode sticks.
A request header `x-fake-mode: MODE` picks the mode of that request alone.
Modes:

- `ok` — a normal answer with rate-limit headers (`anthropic-ratelimit-*`
  or `x-ratelimit-*`);
- `429` (rate_limit_error, `retry-after: 30`), `529` (overloaded_error),
  `503`, `401` (authentication_error), `quota` (400 "credit balance is too
  low"), `unified` (429 with `anthropic-ratelimit-unified-status: rejected`
  and a reset an hour ahead);
- `hang` — reads the request and never answers (until the fake closes);
- `reset` — starts a stream, sends its first event, then resets the
  connection;
- `slow` — a stream whose first event leaves at once and the rest
  `slow_delay` seconds later;
- `stream_error` — a 200 stream with an `error` event (overloaded_error) in it;
- `chunked` — a JSON answer in chunked framing, its two halves sent apart;
- `big` — a stream with 64 MiB of SSE comments after its first event.

Every request is recorded (`seen`: path, lower-cased headers, body) so a
test can check which credential went where and that the local token never
left the gateway. Unknown keys answer 401. It runs trio and h11 in a thread of
the test process (a thread per connection would not carry 1,000 at once).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import h11
import trio


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
    requests_limit: int = 1_000_000
    """What the rate-limit headers of every answer state (remaining is one less)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    default_mode: str = "401"
    """The mode of a key nobody scripted."""
    record: bool = True

    def next_mode(self, key: str | None) -> str:
        with self.lock:
            script = self.modes.get(key or "")
            if not script:
                return self.default_mode
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


class Handler:
    """One client connection of the fake, on h11 over a trio stream."""

    def __init__(self, fake: Fake, stream: trio.SocketStream) -> None:
        self.fake = fake
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER)

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(65536)
            self.conn.receive_data(data)

    async def serve(self) -> None:
        try:
            while True:
                event = await self._next()
                if not isinstance(event, h11.Request):
                    return
                parts = []
                while True:
                    ev = await self._next()
                    if isinstance(ev, h11.Data):
                        parts.append(bytes(ev.data))
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    else:
                        return
                keep = await self._handle(event, b"".join(parts))
                if not keep or self.conn.our_state is not h11.DONE:
                    return
                self.conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _send(self, *events: Any) -> None:
        data = b"".join(self.conn.send(e) or b"" for e in events)
        await self.stream.send_all(data)

    # ------------------------------------------------------------ plumbing

    async def _handle(self, request: h11.Request, body: bytes) -> bool:
        """Answer one request; False when the connection must end."""
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        key = _key_of(headers)
        fake = self.fake
        target = request.target.decode()
        path = target.split("?")[0]
        if fake.record:
            with fake.lock:
                fake.seen.append(Seen(request.method.decode(), target, headers, body, key))
        mode = headers.get("x-fake-mode") or fake.next_mode(key)
        openai = "/chat/completions" in path or "/responses" in path or path.endswith("/models")
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        stream = isinstance(req, dict) and req.get("stream") is True
        if mode == "hang":
            await trio.sleep_forever()
        if mode in ("429", "529", "503", "401", "quota", "unified"):
            await self._error(mode, openai)
            return True
        if path.endswith("/models"):
            await self._json(200, {"object": "list", "data": [
                {"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "fake"}]},
                openai=True)
            return True
        if path.endswith("/count_tokens"):
            await self._json(200, {"input_tokens": 7})
            return True
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
            await self._json(404, _openai_error("invalid_request_error", "not_found",
                                                "no such path"), openai=True)
            return True
        if events is None and mode == "chunked":
            await self._json_chunked(answer, openai=openai)
            return True
        if events is None:
            await self._json(200, answer, openai=openai)
            return True
        return await self._stream(events, mode, openai)

    def _limits(self, openai: bool) -> list[tuple[str, str]]:
        limit = self.fake.requests_limit
        if openai:
            return [("x-ratelimit-limit-requests", str(limit)),
                    ("x-ratelimit-remaining-requests", str(limit - 1)),
                    ("x-ratelimit-reset-requests", "1s")]
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
        return [("anthropic-ratelimit-requests-limit", str(limit)),
                ("anthropic-ratelimit-requests-remaining", str(limit - 1)),
                ("anthropic-ratelimit-requests-reset", reset)]

    async def _json(self, status: int, obj: Any, *, openai: bool = False,
                    extra: tuple[tuple[str, str], ...] = ()) -> None:
        data = json.dumps(obj).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data))),
                   ("request-id", "req_fake"), *self._limits(openai), *extra]
        await self._send(h11.Response(status_code=status, headers=headers),
                         h11.Data(data=data), h11.EndOfMessage())

    async def _json_chunked(self, obj: Any, *, openai: bool) -> None:
        """A 200 JSON answer in chunked framing, sent in two writes."""
        data = json.dumps(obj).encode()
        headers = [("content-type", "application/json"), *self._limits(openai)]
        half = len(data) // 2
        await self._send(h11.Response(status_code=200, headers=headers), h11.Data(data=data[:half]))
        await trio.sleep(0.01)
        await self._send(h11.Data(data=data[half:]), h11.EndOfMessage())

    async def _error(self, mode: str, openai: bool) -> None:
        extra: tuple[tuple[str, str], ...] = ()
        if mode == "429":
            status = 429
            extra = (("retry-after", "30"),)
            obj = (_openai_error("requests", "rate_limit_exceeded", "Rate limit reached")
                   if openai else _anthropic_error("rate_limit_error", "Rate limited"))
        elif mode == "unified":
            status = 429
            extra = (("anthropic-ratelimit-unified-status", "rejected"),
                     ("anthropic-ratelimit-unified-reset", str(int(time.time()) + 3600)),
                     ("anthropic-ratelimit-unified-5h-utilization", "1.0"))
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
        await self._json(status, obj, openai=openai, extra=extra)

    async def _stream(self, events: list[bytes], mode: str, openai: bool) -> bool:
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                   *self._limits(openai)]
        await self._send(h11.Response(status_code=200, headers=headers))
        for i, event in enumerate(events):
            await self._send(h11.Data(data=event))
            if i == 0 and mode == "reset":
                # RST instead of FIN: the reader sees a broken connection.
                sock = self.stream.socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            if i == 0 and mode == "slow":
                await trio.sleep(self.fake.slow_delay)
            if i == 0 and mode == "big":
                pad = b": " + b"x" * 65533 + b"\n"  # an SSE comment line of 64 KiB
                for _ in range(1024):
                    await self._send(h11.Data(data=pad))
        await self._send(h11.EndOfMessage())
        return True


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


class FakeUpstream:
    """A running fake provider (trio in a thread); use as a context manager or `close()`."""

    def __init__(self) -> None:
        self.fake = Fake()
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._port = 0
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake upstream did not start")
        self.url = f"http://127.0.0.1:{self._port}"

    async def _main(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
        self._port = listeners[0].socket.getsockname()[1]
        self._token = trio.lowlevel.current_trio_token()

        async def handle(stream: trio.SocketStream) -> None:
            await Handler(self.fake, stream).serve()

        with trio.CancelScope() as scope:
            self._cancel = scope
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, handle, listeners)
                self._ready.set()

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
        if self._token is not None and self._cancel is not None:
            scope = self._cancel
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(scope.cancel, trio_token=self._token)
        self._thread.join(10)

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    """`python -m tests.fake_upstream [--slow-delay S]`: every key `ok`; prints the URL."""
    import argparse

    parser = argparse.ArgumentParser(description="a fake Anthropic/OpenAI provider")
    parser.add_argument("--slow-delay", type=float, default=1.0)
    args = parser.parse_args()
    up = FakeUpstream()
    up.fake.default_mode = "ok"
    up.fake.record = False
    up.fake.slow_delay = args.slow_delay
    print(up.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        up.close()


if __name__ == "__main__":
    main()
