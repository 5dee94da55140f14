"""A local fake provider (port 0) that records the headers of every request.

It answers the Anthropic Messages API (`POST …/v1/messages`) and OpenAI chat
completions (`POST …/chat/completions`) with the smallest valid body, or
with `status` (and `headers`) when a test sets them, e.g. a 429 to count
the SDK's retries. `requests` holds one `Seen` per request, headers
lower-cased. Stands in for the provider only: the SDKs under test are real.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1},
}
COMPLETION = {
    "id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class Recorder:
    url: str
    requests: list[Seen] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    arrived: threading.Event = field(default_factory=threading.Event)

    def only(self) -> Seen:
        """The one request seen (fails when there were none or several)."""
        assert len(self.requests) == 1, [r.path for r in self.requests]
        return self.requests[0]


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            rec.requests.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            rec.arrived.set()
            body: Any = COMPLETION if "chat/completions" in self.path else MESSAGE
            if rec.status >= 400:
                kind = "rate_limit_error" if rec.status == 429 else "invalid_request_error"
                body = {"type": "error", "error": {"type": kind, "message": "fake says no"}}
            data = json.dumps(body).encode()
            self.send_response(rec.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in rec.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def recorder() -> Iterator[Recorder]:
    """A running fake on 127.0.0.1, port 0; stopped on exit."""
    rec = Recorder(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    # serve_forever looks for shutdown() once per poll_interval (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
