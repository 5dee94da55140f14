"""The upstream table and the gateway's URL space: where a request goes.

Two kinds of gateway URL (DESIGN, Gateway):

- `/{provider}/REST`: the provider URL stands in for the provider's origin
  (scheme, host and port of its upstream base URLs), so REST and the query
  go upstream unchanged.
- `/route/{name}/REST`: REST is what a dialect's SDK appends to its base
  URL (`/v1/messages…` Anthropic; `/chat/completions`, `/responses`, with
  or without `/v1`, OpenAI). Each route target gets it at its provider's
  base URL of that dialect.

Pure: no I/O. `Upstreams` is rebuilt from the config on each request's
config object (cheap, cached by identity), so a reload applies at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from ..config import Config, Upstream
from ..model import normalise_provider

Dialect = Literal["anthropic", "openai"]
DIALECTS: Final[tuple[Dialect, ...]] = ("anthropic", "openai")

DEFAULT_UPSTREAMS: Final[dict[str, Upstream]] = {
    "anthropic": Upstream(anthropic="https://api.anthropic.com"),
    "openai": Upstream(openai="https://api.openai.com/v1"),
    "openrouter": Upstream(openai="https://openrouter.ai/api/v1",
                           anthropic="https://openrouter.ai/api"),
    "zai": Upstream(anthropic="https://api.z.ai/api/anthropic",
                    openai="https://api.z.ai/api/paas/v4"),
    "minimax": Upstream(anthropic="https://api.minimax.io/anthropic",
                        openai="https://api.minimax.io/v1"),
    "google": Upstream(openai="https://generativelanguage.googleapis.com/v1beta/openai"),
}
"""Built-in base URLs; `[upstream.PROVIDER]` in argentd.toml overrides them per dialect."""


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request may go: a provider (and model, on a route) at a URL."""

    provider: str
    model: str | None
    url: str
    """The whole upstream URL, query included."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What a gateway URL asks for."""

    dialect: Dialect
    """The API the request speaks (error answers use its shape)."""
    rest: str
    """The path after the provider or route prefix (query excluded)."""
    targets: tuple[Target, ...]
    route: str | None = None
    provider: str | None = None


class NotFound(Exception):
    """The URL names no provider or route the gateway can serve (a 404)."""

    def __init__(self, message: str, dialect: Dialect) -> None:
        super().__init__(message)
        self.dialect = dialect


def path_dialect(rest: str) -> Dialect | None:
    """The dialect a route path speaks, or None."""
    if rest.startswith("/v1/messages"):
        return "anthropic"
    bare = rest[3:] if rest.startswith("/v1/") else rest
    if bare.startswith(("/chat/completions", "/responses", "/completions", "/embeddings",
                        "/models")):
        return "openai"
    return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Upstreams:
    """The upstream table of one config: built-in defaults under `[upstream.*]`."""

    def __init__(self, config: Config) -> None:
        table = dict(DEFAULT_UPSTREAMS)
        for name, up in config.upstream.items():
            prov = normalise_provider(name)
            base = table.get(prov, Upstream())
            table[prov] = Upstream(
                anthropic=up.anthropic if up.anthropic is not None else base.anthropic,
                openai=up.openai if up.openai is not None else base.openai,
            )
        self.table = table
        self.routes = config.routes
        self.config = config
        self._bases: dict[str, list[tuple[str, str]]] = {}
        """provider -> (path, origin) of each base URL, split once."""

    def base(self, provider: str, dialect: Dialect) -> str | None:
        up = self.table.get(provider)
        if up is None:
            return None
        url: str | None = getattr(up, dialect)
        return url.rstrip("/") if url else None

    def origin(self, provider: str, rest: str = "") -> str | None:
        """The scheme://host:port of `provider`'s upstream that `rest` belongs to.

        The base URL whose path `rest` starts with (the longest) wins; else
        the first of the provider's base URLs.
        """
        bases = self._bases.get(provider)
        if bases is None:
            up = self.table.get(provider)
            if up is None:
                return None
            urls = [getattr(up, d) for d in DIALECTS if getattr(up, d)]
            bases = self._bases[provider] = [
                (urlsplit(url).path.rstrip("/"), _origin(url)) for url in urls]
        if not bases:
            return None
        best, best_len = bases[0][1], -1
        for path, origin in bases:
            if (not path or rest == path or rest.startswith(path + "/")) and len(path) > best_len:
                best, best_len = origin, len(path)
        return best

    def provider_dialect(self, provider: str, rest: str) -> Dialect:
        """The error shape a provider URL answers in."""
        if "/v1/messages" in rest:
            return "anthropic"
        if "/chat/completions" in rest or "/responses" in rest:
            return "openai"
        up = self.table.get(provider)
        if up is not None and up.anthropic and not up.openai:
            return "anthropic"
        return "openai" if up is not None and up.openai else "anthropic"

    def plan(self, path: str, query: str) -> Plan:
        """Where the request for gateway `path` goes. Raises `NotFound`."""
        q = f"?{query}" if query else ""
        head, _, tail = path.lstrip("/").partition("/")
        rest = "/" + tail
        if head == "route":
            name, _, tail = tail.partition("/")
            rest = "/" + tail
            dialect = path_dialect(rest)
            if dialect is None:
                raise NotFound(
                    f"a route URL takes an Anthropic (/v1/messages) or OpenAI (/chat/completions,"
                    f" /responses) path, not {rest!r}", "openai")
            targets = self.config.route_targets(name)
            if targets is None:
                raise NotFound(f"argentd has no route {name!r} (see [routes] in argentd.toml)",
                               dialect)
            sub = rest
            if dialect == "openai" and sub.startswith("/v1/"):
                sub = sub[3:]
            found = []
            for provider, model in targets:
                base = self.base(provider, dialect)
                if base is not None:
                    found.append(Target(provider, model, base + sub + q))
            if not found:
                raise NotFound(f"no target of route {name!r} has a {dialect} upstream "
                               f"(see [upstream.PROVIDER] in argentd.toml)", dialect)
            return Plan(dialect, rest, tuple(found), route=name)
        provider = normalise_provider(head)
        origin = self.origin(provider, rest) if provider else None
        if origin is None:
            raise NotFound(
                f"no upstream for {head!r}: use /PROVIDER/… with a provider of "
                f"[upstream.*] ({', '.join(sorted(self.table))}) or /route/NAME/…",
                path_dialect(rest) or "openai")
        dialect = self.provider_dialect(provider, rest)
        return Plan(dialect, rest, (Target(provider, None, origin + rest + q),),
                    provider=provider)
