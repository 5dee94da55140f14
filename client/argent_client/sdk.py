"""SDK clients built right for a lease: anthropic and openai, blocking and async.

    with client.lease("anthropic") as lease:
        reply = anthropic_client(lease).messages.create(...)

What each builder gets right, and why:

- **The credential argument by type.** An Anthropic API key must go as
  `x-api-key`: anthropic 2.x sends its `api_key` argument as
  `Authorization: Bearer`, so the key goes in `default_headers` and the
  bearer is omitted. A subscription token (setup-token, oauth) goes as
  `auth_token` (a bearer) *with* the lease's `anthropic-beta:
  oauth-2025-04-20`; alone it is refused (401). OpenAI-style providers take
  `api_key` as a bearer.
- **The lease's headers** as `default_headers` (the beta header, Codex's
  account id, …); the SDK never reads a credential from the environment.
- **`max_retries=0`.** The SDKs retry a 429 by default, honouring a long
  `retry-after` with the same spent key, before argentd hears of it; the
  lease may even expire meanwhile. With no SDK retries the error leaves the
  `with` block at once, is reported, and the next lease (or
  `call_with_failover`) moves to a key that works.
- **`base_url`**: the argument, else the provider's known base URL for that
  SDK's dialect (OpenRouter for openai; Z.AI and MiniMax for anthropic),
  else the SDK's own default (its environment variable, then the vendor).
- **Rate-limit headers**: given a `Lease` or `AsyncLease` (not a bare
  `LeaseResult`) and no `http_client` of yours, every response's headers go
  to `lease.observe`, so the release carries the provider's budget without
  `with_raw_response` (`observe=False` turns it off).

The SDKs are optional (`pip install 'argentd[sdk]'`): this module imports
neither until a builder is called. Extra keyword arguments go to the SDK's
constructor (`timeout=`, `http_client=`, …).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    import anthropic
    import openai

__all__ = ["anthropic_client", "async_anthropic_client", "async_openai_client",
           "openai_client", "sdk_kwargs"]

BASE_URLS: Final[dict[tuple[str, str], str]] = {
    ("anthropic", "zai"): "https://api.z.ai/api/anthropic",
    ("anthropic", "minimax"): "https://api.minimax.io/anthropic",
    ("openai", "openrouter"): "https://openrouter.ai/api/v1",
}
"""(SDK, provider) -> the base URL for a provider that is not the SDK's vendor."""

_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "x-api-key", "x-goog-api-key"})


class LeaseLike(Protocol):
    """A `Lease`, `AsyncLease` or `LeaseResult`: what a builder reads."""

    @property
    def token(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


def _sdk(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"argent_client.sdk needs the {name} package: "
                          f"pip install {name} (or 'argentd[sdk]')") from None


def sdk_kwargs(sdk: str, lease: LeaseLike, *, base_url: str | None = None,
               omit: object = None) -> dict[str, Any]:
    """The constructor arguments of SDK `sdk` ("anthropic" or "openai") for `lease`.

    `omit` is the SDK's `omit` sentinel (used to drop the bearer anthropic
    2.x would add for an API key). Never contains anything but the lease's
    own secret and headers.
    """
    headers: dict[str, Any] = {k: v for k, v in lease.headers.items()
                               if k.lower() not in _CREDENTIAL_HEADERS}
    given = {k.lower() for k in lease.headers}
    kwargs: dict[str, Any] = {"max_retries": 0}
    if sdk == "anthropic" and "x-api-key" in given:
        kwargs["api_key"] = lease.token
        headers["x-api-key"] = lease.token
        if omit is not None:
            headers["Authorization"] = omit
    elif sdk == "anthropic":
        kwargs["auth_token"] = lease.token
    else:
        kwargs["api_key"] = lease.token
    kwargs["default_headers"] = headers
    url = base_url or BASE_URLS.get((sdk, lease.provider))
    if url is not None:
        kwargs["base_url"] = url
    return kwargs


def _kwargs(sdk: str, module: Any, lease: LeaseLike, base_url: str | None, observe: bool,
            asynchronous: bool, extra: dict[str, Any]) -> dict[str, Any]:
    kwargs = sdk_kwargs(sdk, lease, base_url=base_url, omit=getattr(module, "omit", None))
    kwargs = {**kwargs, **extra, "default_headers": {**kwargs["default_headers"],
                                                     **extra.get("default_headers", {})}}
    seen = getattr(lease, "observe", None)
    if observe and callable(seen) and "http_client" not in extra:
        if asynchronous:
            async def hook(response: Any) -> None:
                seen(response)

            kwargs["http_client"] = module.DefaultAsyncHttpxClient(
                event_hooks={"response": [hook]})
        else:
            kwargs["http_client"] = module.DefaultHttpxClient(event_hooks={"response": [seen]})
    return kwargs


def _build(sdk: str, cls: str, asynchronous: bool, lease: LeaseLike, base_url: str | None,
           observe: bool, extra: dict[str, Any]) -> Any:
    module = _sdk(sdk)
    return getattr(module, cls)(
        **_kwargs(sdk, module, lease, base_url, observe, asynchronous, extra))


def anthropic_client(lease: LeaseLike, *, base_url: str | None = None, observe: bool = True,
                     **extra: Any) -> anthropic.Anthropic:
    """An `anthropic.Anthropic` for `lease` (module doc). Raises ImportError without the SDK."""
    client: anthropic.Anthropic = _build("anthropic", "Anthropic", False, lease, base_url,
                                         observe, extra)
    return client


def async_anthropic_client(lease: LeaseLike, *, base_url: str | None = None,
                           observe: bool = True, **extra: Any) -> anthropic.AsyncAnthropic:
    """An `anthropic.AsyncAnthropic` for `lease` (module doc)."""
    client: anthropic.AsyncAnthropic = _build("anthropic", "AsyncAnthropic", True, lease,
                                              base_url, observe, extra)
    return client


def openai_client(lease: LeaseLike, *, base_url: str | None = None, observe: bool = True,
                  **extra: Any) -> openai.OpenAI:
    """An `openai.OpenAI` for `lease` (module doc). Raises ImportError without the SDK."""
    client: openai.OpenAI = _build("openai", "OpenAI", False, lease, base_url, observe, extra)
    return client


def async_openai_client(lease: LeaseLike, *, base_url: str | None = None,
                        observe: bool = True, **extra: Any) -> openai.AsyncOpenAI:
    """An `openai.AsyncOpenAI` for `lease` (module doc)."""
    client: openai.AsyncOpenAI = _build("openai", "AsyncOpenAI", True, lease, base_url,
                                        observe, extra)
    return client
