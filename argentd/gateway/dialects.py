"""What the gateway reads and writes in each provider dialect. Pure: bytes in, facts out.

- Error answers in the dialect's own shape (`error_body`), so a tool's SDK
  raises its usual exception with a message that says what argentd did.
- The few request fields the gateway needs (`probe`: `model`, `stream`,
  `metadata.user_id`) and the `model` rewrite of a route target.
- What an answer says about usage and in-stream errors: `BodyWatch` keeps
  a bounded copy of a JSON body; `SseWatch` scans a Server-Sent Events
  stream line by line as it passes (never the whole stream) for the usage
  of Anthropic's `message_start` / `message_delta`, OpenAI's final chunk or
  `response.completed`, and `error` events.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from argent_client.protocol import Usage

from .upstreams import Dialect

ErrorKind = Literal[
    "auth", "rate_limit", "invalid", "not_found", "too_large", "timeout", "upstream",
    "overloaded", "unavailable",
]

_ANTHROPIC_TYPES: Final[dict[ErrorKind, str]] = {
    "auth": "authentication_error",
    "rate_limit": "rate_limit_error",
    "invalid": "invalid_request_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    "timeout": "timeout_error",
    "upstream": "api_error",
    "overloaded": "overloaded_error",
    "unavailable": "api_error",
}
_OPENAI_TYPES: Final[dict[ErrorKind, tuple[str, str]]] = {
    "auth": ("invalid_request_error", "invalid_api_key"),
    "rate_limit": ("rate_limit_error", "rate_limit_exceeded"),
    "invalid": ("invalid_request_error", "invalid_request"),
    "not_found": ("invalid_request_error", "not_found"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "timeout": ("timeout_error", "timeout"),
    "upstream": ("server_error", "upstream_error"),
    "overloaded": ("server_error", "overloaded"),
    "unavailable": ("server_error", "unavailable"),
}
_encode: Final = msgspec.json.encode


def error_body(dialect: Dialect, kind: ErrorKind, message: str) -> bytes:
    """A JSON error body in `dialect`'s shape."""
    message = "argentd gateway: " + message
    if dialect == "anthropic":
        return _encode({"type": "error",
                        "error": {"type": _ANTHROPIC_TYPES[kind], "message": message}})
    etype, code = _OPENAI_TYPES[kind]
    return _encode({"error": {"message": message, "type": etype, "param": None, "code": code}})


def sse_error_event(dialect: Dialect, kind: ErrorKind, message: str) -> bytes:
    """An SSE `error` event to end a stream whose upstream broke."""
    body = error_body(dialect, kind, message)
    if dialect == "anthropic":
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


# ------------------------------------------------------------ requests

NEEDS_JSON: Final = ("/messages", "/chat/completions", "/responses", "/completions",
                     "/count_tokens")


def needs_json(rest: str) -> bool:
    """Whether a POST to `rest` carries a JSON object with `model` (a dialect path)."""
    return rest.endswith(NEEDS_JSON)


class _Probe(msgspec.Struct):
    model: Any = None
    stream: Any = None
    metadata: Any = None


_probe_decoder: Final = msgspec.json.Decoder(_Probe)


class Probe(msgspec.Struct, frozen=True):
    model: str | None = None
    stream: bool = False
    user_id: str | None = None


class NotJson(ValueError):
    """The body is not a JSON object; the message says what it is."""


def probe(body: bytes) -> Probe:
    """`model`, `stream` and `metadata.user_id` of a JSON object body. Raises `NotJson`."""
    try:
        raw = _probe_decoder.decode(body)
    except msgspec.ValidationError:
        raise NotJson("the request body must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise NotJson(f"the request body is not JSON ({exc})") from None
    meta = raw.metadata
    user = meta.get("user_id") if isinstance(meta, dict) else None
    return Probe(
        model=raw.model if isinstance(raw.model, str) and raw.model else None,
        stream=raw.stream is True,
        user_id=user if isinstance(user, str) and user else None,
    )


def rewrite_model(body: bytes, model: str) -> bytes:
    """`body` (a JSON object) with `model` set to `model`."""
    obj = msgspec.json.decode(body)
    if not isinstance(obj, dict):
        raise NotJson("the request body must be a JSON object")
    obj["model"] = model
    return _encode(obj)


# ------------------------------------------------------------ answers


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of(obj: object) -> Usage | None:
    """The usage an answer object states (Anthropic, chat completions or responses)."""
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage")
    if not isinstance(u, dict):
        inner = obj.get("response") or obj.get("message")
        u = inner.get("usage") if isinstance(inner, dict) else None
    if not isinstance(u, dict):
        return None
    inp = _int(u.get("input_tokens"))
    if inp is None:
        inp = _int(u.get("prompt_tokens"))
    out = _int(u.get("output_tokens"))
    if out is None:
        out = _int(u.get("completion_tokens"))
    usage = Usage(
        input_tokens=inp,
        output_tokens=out,
        cache_read_input_tokens=_int(u.get("cache_read_input_tokens")),
        cache_creation_input_tokens=_int(u.get("cache_creation_input_tokens")),
    )
    return usage if usage != Usage() else None


def merge_usage(old: Usage | None, new: Usage | None) -> Usage | None:
    """Later stream events complete (or overwrite) earlier ones, field by field."""
    if old is None or new is None:
        return new or old
    return Usage(**{
        f: getattr(new, f) if getattr(new, f) is not None else getattr(old, f)
        for f in Usage.__struct_fields__
    })


def error_of(obj: object) -> dict[str, Any] | None:
    """The error object of an answer or stream event, if it is one."""
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        return err
    if obj.get("type") == "error" and ("code" in obj or "message" in obj):
        return obj
    if obj.get("type") == "response.failed":
        resp = obj.get("response")
        inner = resp.get("error") if isinstance(resp, dict) else None
        return inner if isinstance(inner, dict) else {"type": "api_error"}
    return None


MAX_KEPT: Final = 1024 * 1024
"""At most this much of an answer is kept to read its usage or error."""


class BodyWatch:
    """A bounded copy of a JSON answer, read for usage or an error at its end."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.overflow = False

    def feed(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self._size += len(chunk)
        if self._size > MAX_KEPT:
            self.overflow = True
            self._parts = []
            return
        self._parts.append(chunk)

    def data(self) -> bytes:
        return b"".join(self._parts)

    def json(self) -> Any:
        """The parsed body, or None (too large, not JSON)."""
        if self.overflow:
            return None
        try:
            return msgspec.json.decode(self.data())
        except msgspec.DecodeError:
            return None


class SseWatch:
    """Scans an SSE stream as it passes for usage and `error` events.

    Only data lines that mention `usage` or `error` are parsed; a line
    longer than `MAX_KEPT` stops the scan (the stream still passes).
    """

    def __init__(self) -> None:
        self._partial = b""
        self._event = b""
        self.usage: Usage | None = None
        self.error: dict[str, Any] | None = None
        self.gave_up = False

    def feed(self, chunk: bytes) -> None:
        if self.gave_up:
            return
        data = self._partial + chunk if self._partial else chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_KEPT:
            self.gave_up = True
            self._partial = b""
            return
        for line in lines:
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        if not line:
            self._event = b""
            return
        if line.startswith(b"event:"):
            self._event = line[6:].strip()
            return
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if b'"usage"' not in payload and b"error" not in payload and b"failed" not in payload:
            return
        try:
            obj = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return
        if self._event == b"error" or (isinstance(obj, dict) and "error" in obj) or (
                isinstance(obj, dict) and obj.get("type") in ("error", "response.failed")):
            err = error_of(obj)
            if err is not None and self.error is None:
                self.error = err
            return
        self.usage = merge_usage(self.usage, usage_of(obj))
