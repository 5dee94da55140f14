"""The credential swap: which request headers go upstream, which answer headers come back.

Pure: header lists in, header lists out. The client's credentials and
hop-by-hop headers never go upstream; the lease's headers are added, and an
`anthropic-beta` both sides set is merged into one header.
"""

from __future__ import annotations

from typing import Final

from .upstreams import Dialect

HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
    b"accept-encoding", b"expect",
})
CREDENTIALS: Final = frozenset({b"x-api-key", b"authorization", b"x-goog-api-key", b"api-key"})
KEEP_BACK: Final = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate", b"proxy-connection",
})
"""Answer headers that describe the upstream hop, not the answer: not passed back."""


def strip_key(query: str) -> tuple[str, str | None]:
    """The query without `key=` (Google's API key parameter), and that key."""
    if "key=" not in query:
        return query, None
    kept, key = [], None
    for part in query.split("&"):
        if part.startswith("key="):
            key = part[4:]
        else:
            kept.append(part)
    return "&".join(kept), key


def guess_dialect(path: str) -> Dialect:
    return "anthropic" if "/v1/messages" in path or "anthropic" in path else "openai"


def without_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() not in (b"content-length",
                                                              b"content-encoding")]


def forward_headers(client: list[tuple[bytes, bytes]],
                     lease: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """The client's headers without hop-by-hop and credential headers, plus the lease's."""
    named = set()
    for key, value in client:
        if key == b"connection":
            named |= {v.strip().lower() for v in value.split(b",")}
    out: list[tuple[bytes, bytes]] = []
    beta: list[bytes] = []
    for key, value in client:
        if key in HOP_BY_HOP or key in CREDENTIALS or key in named or key.startswith(b"x-argent-"):
            continue
        if key == b"anthropic-beta":
            beta.append(value)
            continue
        out.append((key, value))
    for name, text in lease.items():
        low = name.lower().encode()
        if low == b"anthropic-beta":
            beta.append(text.encode())
        else:
            out.append((low, text.encode()))
    if beta:
        parts = dict.fromkeys(p.strip() for b in beta for p in b.split(b",") if p.strip())
        out.append((b"anthropic-beta", b",".join(parts)))
    out.append((b"accept-encoding", b"identity"))
    return out
