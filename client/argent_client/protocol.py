"""The argentd wire protocol: JSON-RPC 2.0, one JSON object per line.

Every request, result, event and error of DESIGN's wire-protocol table is
defined once, here or in one of the two parts below; the daemon and the
client both import this module. It
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

Two parts live in their own modules and are re-exported here, so every
name is still `protocol.X`: the errors (`protocol_errors.py`) and the types
that describe profiles, their limits and the `status` reply
(`protocol_status.py`). Import them from here.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias, Union, get_args

import msgspec

# Parts of this module, re-exported: `protocol.X` is the one name of each.
from .protocol_errors import ERRORS as ERRORS
from .protocol_errors import ArgentError as ArgentError
from .protocol_errors import DaemonUnavailable as DaemonUnavailable
from .protocol_errors import ErrorObject as ErrorObject
from .protocol_errors import InternalError as InternalError
from .protocol_errors import InvalidParams as InvalidParams
from .protocol_errors import InvalidRequest as InvalidRequest
from .protocol_errors import LeaseNotFound as LeaseNotFound
from .protocol_errors import LimitExceeded as LimitExceeded
from .protocol_errors import MethodNotFound as MethodNotFound
from .protocol_errors import NoProfileAvailable as NoProfileAvailable
from .protocol_errors import ParseError as ParseError
from .protocol_errors import PermissionDenied as PermissionDenied
from .protocol_errors import UnknownProfile as UnknownProfile
from .protocol_errors import UnknownProvider as UnknownProvider
from .protocol_errors import UnknownRoute as UnknownRoute
from .protocol_errors import error_from_wire as error_from_wire
from .protocol_status import Budget as Budget
from .protocol_status import ClusterStatus as ClusterStatus
from .protocol_status import ConfigStatus as ConfigStatus
from .protocol_status import GatewayStatus as GatewayStatus
from .protocol_status import LeaseStatus as LeaseStatus
from .protocol_status import Limits as Limits
from .protocol_status import ProfileState as ProfileState
from .protocol_status import ProfileStatus as ProfileStatus
from .protocol_status import ProfileType as ProfileType
from .protocol_status import Source as Source
from .protocol_status import StatusResult as StatusResult
from .protocol_status import WindowStatus as WindowStatus

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
# (`status` has its own: StatusResult and its parts are in protocol_status.py.)


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
