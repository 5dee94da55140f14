"""`ClientBase`: what `Client` and `AsyncClient` hold and build before any I/O.

Like httpx's `BaseClient`: the settings, the params of each method, the
answers for a local env lease and the environment fallback live here once;
the two subclasses add only their transport (`_call`, `_run`) and the
blocking or awaitable method bodies that call it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import _core as C
from . import protocol as P
from .paths import default_socket_path


class ClientBase:
    """The settings of a client (see `Client` for what each means)."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = 30.0,
        client_name: str | None = None,
        fallback_env: bool = True,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.timeout = timeout
        self.client_name = client_name or C.default_client_name()
        self.fallback_env = fallback_env
        self._setup()

    def _setup(self) -> None:
        """The transport's own state (no connection is opened before the first call)."""

    def _lease_params(
        self, provider: str | None, route: str | None, model: str | None, session: str | None,
        ttl: float | None, wait: float | None, detached: bool,
    ) -> P.LeaseParams:
        return C.lease_params(self.client_name, provider, route, model, session, ttl, wait,
                              detached)

    def _fallback(self, exc: P.DaemonUnavailable, params: P.LeaseParams) -> P.LeaseResult:
        """The env fallback lease for a `lease` the daemon could not be reached for.

        Raises `exc` again when the fallback is off, the daemon was reached
        (a timeout, a refused socket) or the environment has no variable.
        """
        if self.fallback_env and exc.data.get("reason") == "unreachable":
            result = C.env_lease(params.provider, params.model, params.ttl)
            if result is not None:
                return result
        raise exc

    @staticmethod
    def _local_renew(ttl: float | None) -> P.RenewResult:
        return P.RenewResult(expires_at=time.time() + (ttl or C.ENV_TTL))

    @staticmethod
    def _report_params(
        lease_id: str | None, kind: str, profile: str | None, retry_after: float | None,
        status: int | None, message: str | None, model: str | None, limits: P.Limits | None,
        failover: bool,
    ) -> P.ReportParams:
        return P.ReportParams(
            kind=kind,  # type: ignore[arg-type]
            lease_id=lease_id, profile=profile, retry_after=retry_after, status=status,
            message=message, model=model, limits=limits, failover=failover,
        )
