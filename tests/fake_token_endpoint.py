"""A real OAuth token endpoint on 127.0.0.1:0 that behaves like the providers' ones.

- Each refresh token works once. A second use answers `invalid_grant` and
  revokes its whole chain (every access and refresh token issued from the
  same login), as Anthropic and OpenAI do on reuse.
- Access tokens expire after `lifetime` seconds (`expires_in` in the answer).
- Per refresh token (or for all) an answer can be held (`gate`), slow,
  a 500, malformed JSON, or never come (`hang`).
- It takes JSON or form bodies and records every call (`calls`), so a test
  can count calls and reuses. Tokens are made with conftest's `make_secret`,
  so the leak check covers them.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .conftest import make_secret


@dataclass
class Call:
    refresh: str
    client_id: str | None
    body: str  # "json" or "form"
    answer: int


@dataclass
class _Chain:
    revoked: bool = False
    access: dict[str, float] = field(default_factory=dict)  # token -> expiry


class FakeTokenEndpoint:
    """Start with `FakeTokenEndpoint()`, stop with `close()`. `url` is its token URL."""

    def __init__(self, lifetime: float = 3600.0, rotate: bool = True) -> None:
        self.lifetime = lifetime
        self.rotate = rotate
        self.mode = "ok"
        """Default behaviour: ok, 500, malformed, hang, slow."""
        self.modes: dict[str, str] = {}
        """Behaviour by refresh token (wins over `mode`)."""
        self.slow = 0.5
        self.gate = threading.Event()
        self.gate.set()
        self.answer_gate = threading.Event()
        """Cleared: a refresh is carried out (the token spent) but its answer held."""
        self.answer_gate.set()
        self.calls: list[Call] = []
        self.reuses = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._refresh: dict[str, tuple[_Chain, bool]] = {}  # token -> (chain, used)
        self._chains: list[_Chain] = []
        self._closing = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                owner._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/oauth/token"
        # serve_forever looks for shutdown() once per poll_interval (0.5 s by default):
        # every test would wait that long for its endpoint to stop.
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self.gate.set()
        self.answer_gate.set()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ tokens

    def login(self, prefix: str = "sk-ant-") -> tuple[str, str]:
        """A fresh login: (access token, refresh token) of a new chain."""
        chain = _Chain()
        access = make_secret(prefix + "oat01-")
        refresh = make_secret(prefix + "ort01-")
        with self._lock:
            self._chains.append(chain)
            chain.access[access] = time.time() + self.lifetime
            self._refresh[refresh] = (chain, False)
        return access, refresh

    def access_valid(self, token: str) -> bool:
        with self._lock:
            for chain in self._chains:
                if token in chain.access:
                    return not chain.revoked and chain.access[token] > time.time()
        return False

    def wait_calls(self, n: int, timeout: float = 20.0) -> list[Call]:
        """Block until at least `n` calls were answered (or are being held)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.calls) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.calls)} call(s) to the token endpoint, "
                                       f"wanted {n}")
                self._cond.wait(left)
            return list(self.calls)

    def refresh_as_tool(self, refresh: str) -> dict[str, Any]:
        """What the tool itself does: POST the grant over HTTP; the decoded answer."""
        data = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": refresh,
                                       "client_id": "the-tool"}).encode()
        with urllib.request.urlopen(self.url, data, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    # ------------------------------------------------------------ serving

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length)
        ctype = h.headers.get("content-type", "")
        if "json" in ctype:
            body, form = json.loads(raw or b"{}"), "json"
        else:
            body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            form = "form"
        refresh = str(body.get("refresh_token", ""))
        mode = self.modes.get(refresh, self.mode)
        with self._cond:
            call = Call(refresh, body.get("client_id"), form, 0)
            self.calls.append(call)
            self._cond.notify_all()
        self.gate.wait()
        if mode == "hang":
            self._closing.wait(60)
            return
        if mode == "slow":
            time.sleep(self.slow)
        if mode == "500":
            self._send(h, call, 500, b'{"error": "server_error"}')
            return
        if mode == "malformed":
            self._send(h, call, 200, b"<html>not json")
            return
        if body.get("grant_type") != "refresh_token":
            self._send(h, call, 400, b'{"error": "unsupported_grant_type"}')
            return
        with self._lock:
            entry = self._refresh.get(refresh)
            if entry is None or entry[0].revoked:
                status, answer = 400, {"error": "invalid_grant",
                                       "error_description": "Refresh token not found"}
            elif entry[1] and self.rotate:
                self.reuses += 1
                entry[0].revoked = True  # reuse: the whole chain is gone
                status, answer = 400, {"error": "invalid_grant",
                                       "error_description": "Refresh token already used"}
            else:
                chain = entry[0]
                access = make_secret("sk-ant-oat01-")
                chain.access[access] = time.time() + self.lifetime
                answer = {"access_token": access, "token_type": "Bearer",
                          "expires_in": self.lifetime}
                if self.rotate:
                    self._refresh[refresh] = (chain, True)
                    new = make_secret("sk-ant-ort01-")
                    self._refresh[new] = (chain, False)
                    answer["refresh_token"] = new
                status = 200
            call.answer = status
            self._cond.notify_all()
        self.answer_gate.wait()
        self._send(h, call, status, json.dumps(answer).encode())

    def _send(self, h: BaseHTTPRequestHandler, call: Call, status: int, data: bytes) -> None:
        call.answer = status
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass  # the client gave up (a timeout)
