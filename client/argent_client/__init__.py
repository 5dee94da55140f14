"""argent_client: talk to argentd (wire types, clients, argentctl).

`Client` (blocking) and `Lease` load only the standard library and msgspec;
`AsyncClient` (anyio) is imported on first use, so `import argent_client`
never loads anyio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .classify import Failure, classify, parse_limits
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

if TYPE_CHECKING:
    from .aio import AsyncClient, AsyncEventStream, AsyncLease

__version__ = "0.1.0"

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

_ASYNC = frozenset({"AsyncClient", "AsyncEventStream", "AsyncLease"})


def __getattr__(name: str) -> Any:
    if name in _ASYNC:
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'argent_client' has no attribute {name!r}")
