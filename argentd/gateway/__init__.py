"""The HTTP gateway: rotation inside the request path, for tools that cannot speak the socket.

`service` (lifetime, token, listener), `http` (httptools on trio), `proxy` (one
request: lease, forward, stream back, release or report), `leasing` (its
calls on the engine), `pool` (upstream connections), `swap` (the header
swap), `upstreams` (the URL space and the upstream table), `dialects`
(provider shapes), `stats` (access log and metrics). See DESIGN.md, "Gateway", and docs/gateway.md.
"""

from __future__ import annotations

from .service import Gateway

__all__ = ["Gateway"]
