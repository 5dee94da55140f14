"""The protocol's errors: one `ArgentError` subclass per stable `data.code`.

Part of the wire protocol (`protocol.py` re-exports every name here, so
`protocol.NoProfileAvailable` is this class). An error travels as an
`ErrorObject`: its JSON-RPC code (-32700..-32600 for the JSON-RPC errors,
-32000..-32099 for argentd's own) and `data.code`, from which the client
raises the same class again (`error_from_wire`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec


class ErrorObject(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: dict[str, Any] | None = None



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

