"""argent_client: talk to argentd (wire types, clients, argentctl).

The clients and the wire types are loaded on first use (PEP 562), so
`import argent_client.protocol` — what the daemon imports — loads the wire
types and `classify` (both light: msgspec and the standard library), never
the clients, anyio or argentctl. `Client` (blocking) loads the
standard library and msgspec; `AsyncClient` loads anyio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

# Not lazy: importing the submodule `classify` sets the package attribute of
# that name to the module, so the function must be bound here, after it.
from .classify import Failure, classify, parse_limits

if TYPE_CHECKING:
    from .aio import AsyncClient, AsyncEventStream, AsyncLease
    from .client import Client, EventStream, Lease
    from .protocol import (
        ArgentError,
        DaemonUnavailable,
        Event,
        InvalidParams,
        LeaseNotFound,
        LeaseResult,
        Limits,
        NoProfileAvailable,
        PermissionDenied,
        ReportResult,
        StatusResult,
        UnknownProfile,
        UnknownProvider,
        UnknownRoute,
        Usage,
    )

__version__ = "0.1.0"

_WHERE: Final = {
    **dict.fromkeys(("AsyncClient", "AsyncEventStream", "AsyncLease"), "aio"),
    **dict.fromkeys(("Client", "EventStream", "Lease"), "client"),
    **dict.fromkeys(
        ("ArgentError", "DaemonUnavailable", "Event", "InvalidParams", "LeaseNotFound",
         "LeaseResult", "Limits", "NoProfileAvailable", "PermissionDenied", "ReportResult",
         "StatusResult", "UnknownProfile", "UnknownProvider", "UnknownRoute", "Usage"),
        "protocol",
    ),
}
"""Public name -> the submodule that defines it."""

__all__ = [
    "ArgentError",
    "AsyncClient",
    "AsyncEventStream",
    "AsyncLease",
    "Client",
    "DaemonUnavailable",
    "Event",
    "EventStream",
    "Failure",
    "InvalidParams",
    "Lease",
    "LeaseNotFound",
    "LeaseResult",
    "Limits",
    "NoProfileAvailable",
    "PermissionDenied",
    "ReportResult",
    "StatusResult",
    "UnknownProfile",
    "UnknownProvider",
    "UnknownRoute",
    "Usage",
    "classify",
    "parse_limits",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'argent_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
