"""`argentd.toml`: the daemon's optional config, and the cooldown policy table.

Every key has a default and unknown keys are an error. The defaults of
DESIGN's failure-kind table are defined here, once (`DEFAULT_COOLDOWNS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

import msgspec
import msgspec.toml

from argent_client.protocol import FAILURE_KINDS, FailureKind

from .model import normalise_provider
from .oauth_config import OAuthConfig, split_provider_tables
from .policy import PolicyConfig

HOUR: Final = 3600.0
DAY: Final = 24 * HOUR


class ConfigError(Exception):
    """The config file is unreadable or invalid; the message names the path."""


class Backoff(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Cooldown `base × factor^(n−1)`, at most `cap` seconds, for the n-th failure in a row."""

    base: float
    factor: float = 1.0
    cap: float = DAY

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError("base must be > 0")
        if not self.factor >= 1:
            raise ValueError("factor must be >= 1")
        if not self.cap >= self.base:
            raise ValueError("cap must be >= base")

    def duration(self, n: int) -> float:
        """The cooldown for the `n`-th failure in a row (n >= 1)."""
        exp = max(0, n - 1)
        if self.factor > 1 and exp > 64:
            return self.cap
        return min(self.base * self.factor**exp, self.cap)


Effect = Literal["cooldown", "invalid", "count"]

EFFECTS: Final[dict[FailureKind, Effect]] = {
    "rate_limit": "cooldown",
    "quota": "cooldown",
    "auth": "invalid",
    "overloaded": "count",
    "timeout": "count",
    "server_error": "count",
}
"""What each failure kind does to a profile (DESIGN, failure-kind table)."""

assert set(EFFECTS) == set(FAILURE_KINDS)


class CooldownConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    rate_limit: Backoff = Backoff(base=60.0, factor=5.0, cap=HOUR)
    quota: Backoff = Backoff(base=5 * HOUR, factor=2.0, cap=DAY)
    auth: Backoff = Backoff(base=300.0)
    """The first `auth` failure of a secret that has worked cools it this long, then
    one probe (cooldown.py); only `base` is used."""
    retry_after_cap: float = 7 * DAY
    """A reported `retry_after` wins over the backoff, up to this many seconds."""

    def backoff(self, kind: FailureKind) -> Backoff | None:
        """The backoff of `kind`, or None when the kind sets no cooldown."""
        if kind == "rate_limit":
            return self.rate_limit
        if kind == "quota":
            return self.quota
        return None


DEFAULT_COOLDOWNS: Final = CooldownConfig()


class LeaseConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    ttl: float = 600.0
    """Lease lifetime when a request names none."""
    max_ttl: float = DAY
    """Longest lifetime a request may ask for; longer ones are cut to this."""
    affinity_idle: float = HOUR
    """A session's profile affinity is forgotten after this long unused."""

    def __post_init__(self) -> None:
        if not 0 < self.ttl <= self.max_ttl:
            raise ValueError("need 0 < ttl <= max_ttl")
        if self.affinity_idle <= 0:
            raise ValueError("affinity_idle must be > 0")


MIB: Final = 1024 * 1024


class GatewayTimeouts(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """Seconds the gateway waits on each side before giving up."""

    connect: float = 10.0
    """To open a connection upstream."""
    read: float = 600.0
    """Between two reads from upstream (a long answer streams; a hang stops here)."""
    write: float = 60.0
    """To hand one chunk to a client that does not read (then the request ends)."""
    header: float = 30.0
    """For a client to send a whole request head, and to send its body."""
    idle: float = 120.0
    """A kept-alive client connection with no request is closed after this long."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")


class GatewayConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """`[gateway]`: the local HTTP server that rotates inside the request path."""

    listen: str = "127.0.0.1:8411"
    """HOST:PORT to listen on; "" turns the gateway off; port 0 takes a free port."""
    attempts: int = 4
    """Upstream tries per request, in all (rotations included)."""
    wait: float = 30.0
    """Seconds a request waits for a ready profile before the 429 answer."""
    max_body: int = 32 * MIB
    """A request body larger than this is refused with 413."""
    max_connections: int = 4096
    """Client connections served at once; more wait to be accepted."""
    upstream_connections: int = 1024
    """Upstream connections open at once (the pool); more requests wait for one."""
    timeouts: GatewayTimeouts = GatewayTimeouts()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.wait < 0:
            raise ValueError("wait must be >= 0")
        if self.max_body < 1 or self.max_connections < 1 or self.upstream_connections < 1:
            raise ValueError("max_body, max_connections and upstream_connections must be >= 1")


class Upstream(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """`[upstream.PROVIDER]`: the base URL a tool would use for each dialect."""

    anthropic: str | None = None
    """Base URL of the provider's Anthropic Messages API (the SDK appends /v1/messages)."""
    openai: str | None = None
    """Base URL of its OpenAI-style API (the SDK appends /chat/completions)."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            url = getattr(self, name)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{name} must be an http:// or https:// URL")


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    profiles: str | None = None
    """Path of the profiles file (overridden by --profiles / ARGENT_PROFILES)."""
    socket: str | None = None
    """Socket path (overridden by --socket / ARGENT_SOCKET)."""
    cooldown: CooldownConfig = CooldownConfig()
    lease: LeaseConfig = LeaseConfig()
    routes: dict[str, list[str]] = {}
    """Route name -> ordered `provider/model` targets."""
    gateway: GatewayConfig = GatewayConfig()
    upstream: dict[str, Upstream] = {}
    """Provider -> its upstream base URLs (added to the gateway's built-in table)."""
    policy: PolicyConfig = PolicyConfig()
    """`[policy]`: window caps, paid fallback, strategy, early-reset probes (policy.py)."""
    oauth: OAuthConfig = OAuthConfig()
    """`[oauth]` and `[oauth.PROVIDER]`: the refresher (oauth_config.py)."""

    def route_targets(self, name: str) -> list[tuple[str, str | None]] | None:
        """The (provider, model) targets of route `name`, or None if unknown."""
        targets = self.routes.get(name)
        if targets is None:
            return None
        return [split_target(t) for t in targets]


DEFAULT_CONFIG: Final = Config()


def split_target(target: str) -> tuple[str, str | None]:
    """`"openrouter/anthropic/claude"` -> `("openrouter", "anthropic/claude")`.

    The provider is everything up to the first `/` (normalised), the model
    the rest; a target without `/` names the provider only (model None).
    """
    provider, _, model = target.partition("/")
    return normalise_provider(provider), (model or None)


def _with_default_backoffs(raw: object) -> object:
    """`raw` with each given `[cooldown.<kind>]` table completed from that kind's defaults.

    Without this a table giving only `base` would get `Backoff`'s generic
    factor and cap instead of the defaults of its own kind.
    """
    if not isinstance(raw, dict):
        return raw
    cooldown = raw.get("cooldown")
    if not isinstance(cooldown, dict):
        return raw
    merged = dict(cooldown)
    for name in CooldownConfig.__struct_fields__:
        default = getattr(DEFAULT_COOLDOWNS, name)
        table = merged.get(name)
        if isinstance(default, Backoff) and isinstance(table, dict):
            merged[name] = {**msgspec.structs.asdict(default), **table}
    return {**raw, "cooldown": merged}


def parse_config(data: bytes, path: Path | str = "argentd.toml") -> Config:
    """Parse `argentd.toml` text.

    Keys left out keep their defaults, also inside a partly given
    `[cooldown.rate_limit]` or `[cooldown.quota]` table.
    Raises `ConfigError` naming the file and the key path of the fault.
    """
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = msgspec.convert(split_provider_tables(_with_default_backoffs(raw)), Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for name, targets in config.routes.items():
        if not targets:
            raise ConfigError(f"{path}: route {name!r} has no targets - at `$.routes.{name}`")
        for i, target in enumerate(targets):
            provider, model = split_target(target)
            if not provider or ("/" in target and model is None):
                raise ConfigError(
                    f"{path}: route {name!r} target {target!r} is not `provider/model`"
                    f" - at `$.routes.{name}[{i}]`"
                )
    return config


def load_config(path: Path, *, required: bool = False) -> Config:
    """Load `path`; a missing file gives the defaults unless `required`.

    Raises `ConfigError` for an unreadable or invalid file.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return DEFAULT_CONFIG
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(data, path)
