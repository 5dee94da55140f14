"""The argentd wire protocol: JSON-RPC 2.0, one JSON object per line.

Every request, result, event and error of DESIGN's wire-protocol table is
defined here once; the daemon and the client both import this module. It
imports no I/O library, so an agent that only leases loads nothing heavy.

Theory of operation: the daemon decodes a well-formed request line in one
typed decode (`decode_typed`: a tagged union on `method`, each variant with
its own params Struct from `METHODS`). Only a line that decode refuses goes
the two-step way, to say exactly what is wrong: `decode_request` gives a
`Request` whose `params` stay raw (its failure is a parse error, -32700, or
an invalid request, -32600), then `decode_params` decodes them with the
method's params Struct (invalid params, -32602, naming the JSON path). A
client decodes what it reads with `decode_incoming` (an `Incoming`: a reply
or a notification, its result still raw) and then `decode_result` /
`decode_event`. Application errors are `ArgentError` subclasses, each with a
JSON-RPC code in -32000..-32099 and a stable `data.code` string; the client
raises the same class again from that string (`error_from_wire`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal, TypeAlias, Union, get_args

import msgspec

PROTOCOL_VERSION: Final = 1
MAX_LINE: Final = 1024 * 1024
"""A line longer than this (without its newline) ends the connection."""

FailureKind: TypeAlias = Literal[
    "rate_limit", "quota", "auth", "overloaded", "timeout", "server_error"
]
FAILURE_KINDS: Final[tuple[str, ...]] = get_args(FailureKind)
PROFILE_FAULTS: Final = frozenset({"rate_limit", "quota", "auth"})
"""Kinds that blame the profile: failover stays with the same provider (the
other kinds blame the provider: failover moves to the next route target)."""

ProfileType: TypeAlias = Literal["setup-token", "api-key", "oauth"]
ProfileState: TypeAlias = Literal["ready", "cooldown", "disabled", "invalid", "expired"]
Source: TypeAlias = Literal["profile", "env"]
EventType: TypeAlias = Literal[
    "lease",
    "release",
    "expire",
    "failure",
    "cooldown_start",
    "cooldown_end",
    "reload",
    "reload_error",
    "refresh",
    "refresh_error",
    "paid_fallback",
    "probe",
]

RequestId: TypeAlias = int | str | None


# ---------------------------------------------------------------- envelopes


class Request(msgspec.Struct, kw_only=True):
    """A JSON-RPC request; `id` UNSET makes it a notification."""

    jsonrpc: str = "2.0"
    method: str
    params: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    id: RequestId | msgspec.UnsetType = msgspec.UNSET


class ErrorObject(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: dict[str, Any] | None = None


class Response(msgspec.Struct, kw_only=True):
    """A reply: exactly one of `result` and `error` is set."""

    jsonrpc: str = "2.0"
    id: RequestId
    result: Any = msgspec.UNSET
    error: ErrorObject | msgspec.UnsetType = msgspec.UNSET


class Notification(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    method: str
    params: Any


class Incoming(msgspec.Struct):
    """What a client reads: a response (has `id`) or a notification (has `method`)."""

    jsonrpc: str = "2.0"
    id: RequestId | msgspec.UnsetType = msgspec.UNSET
    method: str | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    result: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    error: ErrorObject | msgspec.UnsetType = msgspec.UNSET


# ---------------------------------------------------------------- payloads


class Usage(msgspec.Struct, omit_defaults=True):
    """Tokens a request used, as the provider reported them."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class Limits(msgspec.Struct, omit_defaults=True):
    """What the provider's last response said about a profile's budget.

    Resets are Unix seconds; utilisations are fractions (0.0-1.0).
    """

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None
    unified_status: str | None = None
    unified_5h_utilization: float | None = None
    unified_7d_utilization: float | None = None
    unified_reset: float | None = None
    # Each subscription window on its own (DESIGN "Subscription windows and policy"):
    # anthropic-ratelimit-unified-{5h,7d}-{status,reset,utilization} and the rest.
    unified_5h_status: str | None = None
    unified_5h_reset: float | None = None
    unified_7d_status: str | None = None
    unified_7d_reset: float | None = None
    unified_representative_claim: str | None = None
    unified_fallback: str | None = None
    unified_overage_status: str | None = None
    # x-codex-{primary,secondary}-used-percent (0-100) and -reset-at (Unix seconds).
    codex_primary_used_percent: float | None = None
    codex_primary_reset: float | None = None
    codex_secondary_used_percent: float | None = None
    codex_secondary_reset: float | None = None


# ---------------------------------------------------------------- params


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class LeaseParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    provider: str | None = None
    route: str | None = None
    model: str | None = None
    session: str | None = None
    ttl: float | None = None
    wait: float = 0.0
    detached: bool = False
    client: str | None = None
    profile: str | None = None
    """Pinned: this profile id or `no_profile_available`, never another."""


class RenewParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    lease_id: str
    ttl: float | None = None


class ReleaseParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    lease_id: str
    usage: Usage | None = None
    limits: Limits | None = None
    success: bool = True
    """False: the lease ends without claiming the credential worked (the outcome
    is unknown, e.g. `argentctl exec` whose child failed): the profile's failure
    counts are not reset. Left out on the wire when true."""


class ReportParams(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    kind: FailureKind
    lease_id: str | None = None
    profile: str | None = None
    retry_after: float | None = None
    status: int | None = None
    message: str | None = None
    model: str | None = None
    limits: Limits | None = None
    failover: bool = False


class ProfileParams(msgspec.Struct, forbid_unknown_fields=True):
    profile: str


# ---------------------------------------------------------------- results


class HelloResult(msgspec.Struct):
    server: str
    version: str
    protocol: int
    pid: int


class LeaseResult(msgspec.Struct, omit_defaults=True):
    lease_id: str
    profile: str
    provider: str
    type: ProfileType
    token: str
    label: str
    headers: dict[str, str]
    expires_at: float
    source: Source
    model: str | None = None
    probe: bool = False
    """The one early-reset probe of a cooling profile (left out when false)."""

    def __repr__(self) -> str:
        # A lease carries the secret; its repr must not.
        return (
            f"LeaseResult(lease_id={self.lease_id!r}, profile={self.profile!r}, "
            f"provider={self.provider!r}, model={self.model!r}, token=<redacted>)"
        )

    __str__ = __repr__


class RenewResult(msgspec.Struct):
    expires_at: float


class ReleaseResult(msgspec.Struct):
    released: bool = True


class ReportResult(msgspec.Struct):
    profile_state: ProfileState
    cooldown_until: float | None = None
    next: LeaseResult | None = None


class Budget(msgspec.Struct, omit_defaults=True):
    """A profile's predicted request/token budget (rate budgets)."""

    requests: float | None = None
    requests_limit: int | None = None
    tokens: float | None = None
    tokens_limit: int | None = None
    refill_at: float | None = None
    unified_status: str | None = None


class WindowStatus(msgspec.Struct, omit_defaults=True):
    """One subscription window of a profile (`5h`, `7d`, `primary`, `secondary`)."""

    utilization: float | None = None
    """Fraction used, 0.0-1.0 (a provider may report a little over 1)."""
    reset: float | None = None
    status: str | None = None


class ProfileStatus(msgspec.Struct):
    id: str
    provider: str
    type: ProfileType
    label: str
    state: ProfileState
    cooldown_until: float | None
    error_count: int
    active_leases: int
    fingerprint: str
    source: Source
    last_used: float | None = None
    last_error: str | None = None
    priority: int = 0
    max_concurrent: int | None = None
    model_cooldowns: dict[str, float] = {}
    budget: Budget | None = None
    removed: bool = False
    reason: str = "ready"
    """Why a lease (for no model in particular) would not get it now: `ready`,
    `cooldown`, `busy`, `budget`, `disabled`, ... (docs/policy.md)."""
    until: float | None = None
    """When `reason` ends by itself, if time alone ends it."""
    expires_at: float | None = None
    """When the secret ends (an OAuth access token, a token with `expires`)."""
    refreshed_at: float | None = None
    """OAuth: when argentd last got a new access token for this login."""
    refresh_error: str | None = None
    """OAuth: why the last refresh failed (None once one works)."""
    windows: dict[str, WindowStatus] = {}
    """Subscription windows as last reported (those not yet reset)."""


class LeaseStatus(msgspec.Struct):
    lease_id: str
    profile: str
    client: str | None
    expires_at: float
    detached: bool = False
    model: str | None = None


class ConfigStatus(msgspec.Struct):
    profiles_path: str
    loaded_at: float | None
    error: str | None = None
    config_path: str | None = None
    state_path: str | None = None
    """The state file this daemon keeps (one per socket)."""


class GatewayStatus(msgspec.Struct):
    """`status.gateway`: where the HTTP gateway listens (`url` None when off) and why not."""

    url: str | None = None
    error: str | None = None


class ClusterStatus(msgspec.Struct):
    """`status.cluster`: the daemon's link to the other hosts (never a password)."""

    name: str
    host: str
    connected: bool
    hosts: list[str]
    """Hosts with a recent heartbeat, this one included (empty while disconnected)."""
    error: str | None = None
    url: str | None = None
    latency: float | None = None
    """Seconds of the last heartbeat's round trip."""
    skew: float | None = None
    """Redis' TIME minus this host's clock, in seconds."""


class StatusResult(msgspec.Struct, omit_defaults=True):
    profiles: list[ProfileStatus]
    leases: list[LeaseStatus]
    config: ConfigStatus
    routes: dict[str, list[str]]
    gateway: GatewayStatus | None = None
    cluster: ClusterStatus | None = None
    """Left out without `[cluster]`."""
    window_cap: float | None = None
    """`[policy] window_cap` when it is not the default 1.0 (left out on the wire then)."""
    client_window_caps: dict[str, float] = {}
    """`[policy.clients.NAME] window_cap` of the clients that set one."""


class ProfileStateResult(msgspec.Struct):
    profile_state: ProfileState


class ReloadResult(msgspec.Struct, omit_defaults=True):
    profiles: int
    error: str | None = None


class SubscribeResult(msgspec.Struct):
    subscribed: bool = True


class MetricsResult(msgspec.Struct):
    """`metrics`: Prometheus text exposition of the daemon's counters."""

    text: str


class Event(msgspec.Struct, omit_defaults=True):
    """An `event` notification's params; never carries a secret."""

    type: EventType
    at: float
    profile: str | None = None
    lease_id: str | None = None
    provider: str | None = None
    kind: str | None = None
    until: float | None = None
    model: str | None = None
    client: str | None = None
    message: str | None = None
    profiles: int | None = None


METHODS: Final[dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]]] = {
    "hello": (NoParams, HelloResult),
    "lease": (LeaseParams, LeaseResult),
    "renew": (RenewParams, RenewResult),
    "release": (ReleaseParams, ReleaseResult),
    "report_failure": (ReportParams, ReportResult),
    "status": (NoParams, StatusResult),
    "reset": (ProfileParams, ProfileStateResult),
    "disable": (ProfileParams, ProfileStateResult),
    "enable": (ProfileParams, ProfileStateResult),
    "reload": (NoParams, ReloadResult),
    "subscribe": (NoParams, SubscribeResult),
    "metrics": (NoParams, MetricsResult),
}
"""Method name -> (params Struct, result Struct)."""


# ---------------------------------------------------------------- errors


class ArgentError(Exception):
    """Base of every error the protocol carries.

    `code` is the stable string sent as `data.code`; `rpc_code` the JSON-RPC
    error code. `data` holds extra machine-readable fields (never a secret).
    """

    code: ClassVar[str] = "internal_error"
    rpc_code: ClassVar[int] = -32603

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_wire(self) -> ErrorObject:
        return ErrorObject(self.rpc_code, self.message, {"code": self.code, **self.data})


class ParseError(ArgentError):
    code = "parse_error"
    rpc_code = -32700


class InvalidRequest(ArgentError):
    code = "invalid_request"
    rpc_code = -32600


class MethodNotFound(ArgentError):
    code = "method_not_found"
    rpc_code = -32601


class InvalidParams(ArgentError):
    code = "invalid_params"
    rpc_code = -32602


class InternalError(ArgentError):
    code = "internal_error"
    rpc_code = -32603


class NoProfileAvailable(ArgentError):
    """Profiles exist but none is ready; `data.retry_after` says when one may be."""

    code = "no_profile_available"
    rpc_code = -32001


class UnknownProvider(ArgentError):
    code = "unknown_provider"
    rpc_code = -32002


class UnknownRoute(ArgentError):
    code = "unknown_route"
    rpc_code = -32003


class LeaseNotFound(ArgentError):
    code = "lease_not_found"
    rpc_code = -32004


class UnknownProfile(ArgentError):
    code = "unknown_profile"
    rpc_code = -32005


class PermissionDenied(ArgentError):
    code = "permission_denied"
    rpc_code = -32006


class LimitExceeded(ArgentError):
    """One connection asked for more than the daemon holds for it at once (waiting
    leases, reloads); `data.limit` is the bound."""

    code = "limit_exceeded"
    rpc_code = -32010


class DaemonUnavailable(ArgentError):
    """Client side only: the socket could not be reached."""

    code = "daemon_unavailable"
    rpc_code = -32099


ERRORS: Final[dict[str, type[ArgentError]]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        NoProfileAvailable,
        UnknownProvider,
        UnknownRoute,
        LeaseNotFound,
        UnknownProfile,
        PermissionDenied,
        LimitExceeded,
        DaemonUnavailable,
    )
}
_BY_RPC_CODE: Final = {cls.rpc_code: cls for cls in ERRORS.values()}


def error_from_wire(error: ErrorObject) -> ArgentError:
    """Rebuild the `ArgentError` subclass a daemon sent."""
    data = dict(error.data or {})
    code = data.pop("code", None)
    cls = ERRORS.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_RPC_CODE.get(error.code, ArgentError)
    return cls(error.message, **data)


# ---------------------------------------------------------------- framing

_encoder: Final = msgspec.json.Encoder()
_request_decoder: Final = msgspec.json.Decoder(Request)
_incoming_decoder: Final = msgspec.json.Decoder(Incoming)
_params_decoders: Final = {
    name: msgspec.json.Decoder(params) for name, (params, _) in METHODS.items()
}
_result_decoders: Final = {
    name: msgspec.json.Decoder(result) for name, (_, result) in METHODS.items()
}
_event_decoder: Final = msgspec.json.Decoder(Event)


def encode_line(message: msgspec.Struct | dict[str, Any]) -> bytes:
    """Encode one message as a JSON line (with its trailing newline)."""
    return _encoder.encode(message) + b"\n"


def encode_request(method: str, params: msgspec.Struct | None, id: RequestId) -> bytes:
    """Encode a request line; `params` None sends no params member."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        msg["params"] = params
    return encode_line(msg)


def encode_result(id: RequestId, result: msgspec.Struct) -> bytes:
    return encode_line(Response(id=id, result=result))


def encode_error(id: RequestId, error: ArgentError) -> bytes:
    return encode_line(Response(id=id, error=error.to_wire()))


def encode_event(event: Event) -> bytes:
    return encode_line(Notification(method="event", params=event))


def decode_request(line: bytes) -> Request:
    """Decode one request line.

    Raises `ParseError` for bad JSON and `InvalidRequest` for JSON that is
    not a request object (a batch array, a missing `method`, a wrong
    `jsonrpc`).
    """
    try:
        req = _request_decoder.decode(line)
    except msgspec.ValidationError as exc:
        # The typed decoder stops at the first wrong type; only a full parse
        # tells "not JSON at all" (-32700) from "JSON, but not a request".
        try:
            msgspec.json.decode(line)
        except msgspec.DecodeError as parse_exc:
            raise ParseError(f"parse error: {parse_exc}") from None
        if line.lstrip().startswith(b"["):
            raise InvalidRequest("batch requests are not supported") from None
        raise InvalidRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ParseError(f"parse error: {exc}") from None
    if req.jsonrpc != "2.0":
        raise InvalidRequest('invalid request: "jsonrpc" must be "2.0"')
    return req


def decode_params(req: Request) -> msgspec.Struct:
    """The typed params of `req`.

    Raises `MethodNotFound` or `InvalidParams` (naming the JSON path).
    """
    decoder = _params_decoders.get(req.method)
    if decoder is None:
        raise MethodNotFound(f"unknown method {req.method!r}")
    raw = req.params
    if bytes(raw).strip() == b"null":
        raw = msgspec.Raw(b"{}")
    try:
        return decoder.decode(raw)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid params: {exc}".replace("`$", "`$.params")) from None
    except msgspec.DecodeError as exc:  # pragma: no cover - Raw is already valid JSON
        raise InvalidParams(f"invalid params: {exc}") from None


def _typed_request(method: str, params: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A request Struct for one method, tagged by `method`, with typed params."""
    try:
        default: Any = msgspec.field(default_factory=params)
        params()
    except TypeError:  # required fields: a missing params member is invalid
        default = msgspec.NODEFAULT
    fields: list[Any] = [
        ("jsonrpc", str, "2.0"),
        ("params", params, default),
        ("id", RequestId | msgspec.UnsetType, msgspec.UNSET),
    ]
    return msgspec.defstruct(
        f"_{method}_request", fields, tag_field="method", tag=method, kw_only=True
    )


_TYPED: Final = {_typed_request(m, params): m for m, (params, _) in METHODS.items()}
_typed_decoder: Final = msgspec.json.Decoder(Union[tuple(_TYPED)])  # type: ignore[valid-type]  # noqa: UP007


def decode_typed(line: bytes) -> tuple[str, RequestId | msgspec.UnsetType, msgspec.Struct] | None:
    """(method, id, typed params) of a well-formed request line, in one decode.

    None when the line is anything else: then `decode_request` and
    `decode_params` say exactly what is wrong (and which id to answer).
    """
    try:
        req: Any = _typed_decoder.decode(line)
    except msgspec.DecodeError:
        return None
    if req.jsonrpc != "2.0":
        return None
    return _TYPED[type(req)], req.id, req.params


def decode_incoming(line: bytes) -> Incoming:
    """Decode a line a client reads (raises `ParseError`)."""
    try:
        return _incoming_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ParseError(f"bad line from daemon: {exc}") from None


def decode_result(method: str, raw: msgspec.Raw) -> Any:
    """Decode the raw `result` of `method` into its result Struct."""
    return _result_decoders[method].decode(raw)


def decode_event(raw: msgspec.Raw) -> Event:
    return _event_decoder.decode(raw)
