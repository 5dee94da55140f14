"""`[oauth]` in argentd.toml: when to refresh, and each provider's token endpoint.

```toml
[oauth]
refresh_before = 300      # seconds of access token left when the refresh starts
timeout = 30              # seconds for one call to a token endpoint

[oauth.anthropic]         # built-in defaults for anthropic, openai-codex and google
token_url = "https://console.anthropic.com/v1/oauth/token"
client_id = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
```

TOML puts the provider tables inside the `oauth` table beside its scalar
keys; `split_provider_tables` moves them under `providers` before msgspec
converts the whole config, so unknown scalar keys stay an error.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

Body = Literal["json", "form"]


class OAuthProvider(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """One provider's token endpoint (RFC 6749 `grant_type=refresh_token`)."""

    token_url: str
    client_id: str
    client_secret: str | None = None
    """Only for installed-app clients whose secret is public (Gemini CLI's)."""
    scope: str | None = None
    body: Body = "form"
    """How the request is encoded: `form` (RFC 6749) or `json` (Anthropic, Codex)."""

    def __post_init__(self) -> None:
        if not self.token_url.startswith(("https://", "http://")):
            raise ValueError("token_url must be an http(s) URL")
        if not self.client_id:
            raise ValueError("client_id must not be empty")


DEFAULT_PROVIDERS: Final[dict[str, OAuthProvider]] = {
    # Claude Code's public client (claude.ai Pro/Max logins).
    "anthropic": OAuthProvider(
        token_url="https://console.anthropic.com/v1/oauth/token",
        client_id="9d1c250a-e61b-44d9-88ed-5944d1962f5e",
        body="json",
    ),
    # Codex CLI's public client (ChatGPT plan logins).
    "openai-codex": OAuthProvider(
        token_url="https://auth.openai.com/oauth/token",
        client_id="app_EMoamEEZ73f0CkXaXp7hrann",
        scope="openid profile email",
        body="json",
    ),
    # Gemini CLI's installed-app client; Google publishes its secret as not secret.
    "google": OAuthProvider(
        token_url="https://oauth2.googleapis.com/token",
        client_id="681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
        client_secret="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",
    ),
}


class OAuthConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    refresh_before: float = 300.0
    timeout: float = 30.0
    providers: dict[str, OAuthProvider] = {}
    """Given `[oauth.PROVIDER]` tables; `provider()` falls back to the defaults."""

    def __post_init__(self) -> None:
        if not self.refresh_before >= 0:
            raise ValueError("refresh_before must be >= 0")
        if not self.timeout > 0:
            raise ValueError("timeout must be > 0")

    def provider(self, name: str) -> OAuthProvider | None:
        """The token endpoint of provider `name`, or None when none is known."""
        return self.providers.get(name) or DEFAULT_PROVIDERS.get(name)


def split_provider_tables(raw: object) -> object:
    """`raw` (a decoded argentd.toml) with `[oauth.X]` tables under `oauth.providers`.

    A partly given table for a known provider is completed from its default.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("oauth"), dict):
        return raw
    oauth = dict(raw["oauth"])
    providers: dict[str, object] = {}
    for name in [k for k, v in oauth.items() if isinstance(v, dict)]:
        table = oauth.pop(name)
        default = DEFAULT_PROVIDERS.get(name)
        if default is not None:
            table = {**msgspec.structs.asdict(default), **table}
            table = {k: v for k, v in table.items() if v is not None}
        providers[name] = table
    if providers:
        oauth["providers"] = providers
    return {**raw, "oauth": oauth}
