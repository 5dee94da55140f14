"""One call to an OAuth token endpoint (`grant_type=refresh_token`) and what it meant.

`classify` is pure: an HTTP status and body in, an `Answer` out. The
message of an `Answer` never holds a token or the endpoint's free text
(an `error_description` could echo anything): only the status, the
RFC 6749 `error` code when it is a plain word, and which field was missing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal

import trio

from .oauth_config import OAuthProvider

if TYPE_CHECKING:
    import httpx

REVOKED: Final = frozenset({
    "invalid_grant",           # RFC 6749: revoked, expired or reused refresh token
    "refresh_token_reused",    # OpenAI (Codex)
    "refresh_token_expired",
    "refresh_token_invalidated",
    "invalid_refresh_token",
})
_CODE: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
DEFAULT_LIFETIME: Final = 3600.0
"""Seconds an access token is taken to last when the answer and the token say nothing."""


@dataclass(frozen=True, slots=True)
class Answer:
    """`ok` (a new pair), `revoked` (log in again) or `retry` (try later)."""

    kind: Literal["ok", "revoked", "retry"]
    message: str = ""
    access: str | None = None
    refresh: str | None = None
    """None when the endpoint keeps the refresh token (Google does)."""
    expires_in: float | None = None
    id_token: str | None = None

    def __repr__(self) -> str:
        return f"Answer(kind={self.kind!r}, message={self.message!r})"


def _error_code(body: object) -> str | None:
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict):  # {"error": {"code": "refresh_token_reused", ...}}
        err = err.get("code") or err.get("type")
    if isinstance(err, str) and _CODE.fullmatch(err.strip().lower()):
        return err.strip().lower()
    return None


def classify(status: int, content: bytes) -> Answer:
    """What a token endpoint's answer means."""
    try:
        body: object = json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if 200 <= status < 300:
        if not isinstance(body, dict):
            return Answer("retry", f"malformed answer (HTTP {status}, not a JSON object)")
        access = body.get("access_token")
        if not isinstance(access, str) or not access.strip():
            return Answer("retry", f"malformed answer (HTTP {status}, no access_token)")
        refresh = body.get("refresh_token")
        expires = body.get("expires_in")
        id_token = body.get("id_token")
        if isinstance(expires, str):
            try:
                expires = float(expires)
            except ValueError:
                expires = None
        ok_exp = (isinstance(expires, int | float) and not isinstance(expires, bool)
                  and math.isfinite(expires) and expires > 0)
        return Answer(
            "ok",
            access=access.strip(),
            refresh=refresh.strip() if isinstance(refresh, str) and refresh.strip() else None,
            expires_in=float(expires) if ok_exp else None,  # type: ignore[arg-type]
            id_token=id_token if isinstance(id_token, str) and id_token else None,
        )
    code = _error_code(body)
    if code in REVOKED and status in (400, 401, 403):
        return Answer("revoked", f"the token endpoint refused the refresh token ({code}, "
                                 f"HTTP {status}): the login was revoked or its refresh "
                                 f"token already used")
    if code in ("invalid_client", "unauthorized_client"):
        return Answer("retry", f"the token endpoint refused the client ({code}, HTTP "
                               f"{status}): check client_id in [oauth.PROVIDER]")
    what = f"HTTP {status}" + (f", {code}" if code else "")
    return Answer("retry", f"the token endpoint answered {what}")


class Http:
    """The HTTP client `refresh_call` takes, made at its first use: importing httpx and
    loading the CA bundle cost ~0.1 s of CPU, which a daemon that never refreshes (or
    not yet) need not spend at start. `async with` closes it if it was made."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient()
        return self._client

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def refresh_call(http: Http, provider: OAuthProvider, refresh: str,
                       timeout: float) -> Answer:
    """POST the refresh grant to `provider`; never raises for a network or HTTP fault."""
    import httpx  # loaded by http.client() at the latest

    client = http.client()
    data = {"grant_type": "refresh_token", "refresh_token": refresh,
            "client_id": provider.client_id}
    if provider.client_secret:
        data["client_secret"] = provider.client_secret
    if provider.scope:
        data["scope"] = provider.scope
    headers = {"accept": "application/json", "user-agent": "argentd"}
    try:
        # httpx's timeouts bound each phase; this bounds the whole call.
        with trio.move_on_after(timeout) as scope:
            if provider.body == "json":
                resp = await client.post(provider.token_url, json=data, headers=headers,
                                         timeout=timeout)
            else:
                resp = await client.post(provider.token_url, data=data, headers=headers,
                                         timeout=timeout)
            content = await resp.aread()
    except httpx.TimeoutException:
        return Answer("retry", f"the token endpoint did not answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Answer("retry", f"cannot reach the token endpoint ({type(exc).__name__})")
    if scope.cancelled_caught:
        return Answer("retry", f"the token endpoint did not answer within {timeout:g} s")
    return classify(resp.status_code, content)
