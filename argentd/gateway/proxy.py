"""One gateway request: lease → swap credentials → forward → stream back → release/report.

Theory of operation (DESIGN, Gateway, "Per request"): `Proxy.handle` checks
the local token, plans where the request goes (`upstreams.Plan`), reads the
body (bounded) and then loops over upstream attempts, at most
`[gateway] attempts`:

- a lease for the current target (`Leases.acquire`: now, else waiting for any
  target of the plan until `[gateway] wait` is spent → 429 in the dialect's
  shape, with `retry-after`);
- one upstream try (`_attempt`). Its outcome, decided before any byte
  reached the client, is one of: done (the answer was streamed back and the
  lease released or reported), a profile fault (429/401/403/402/quota body:
  reported with failover, so the engine hands over the next profile of the
  same provider; with none, a route moves to its next target), a provider
  fault (529/503, a timeout, a refused or broken connection: reported; a
  route moves to its next target at once, a provider URL answers).

Every lease is held under its own negative connection id (`leasing`), so
whatever a request still holds when it ends (a client gone mid-stream, a
cancelled daemon) is ended without claiming success by `engine.disconnect(id)`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from argent_client import protocol as P
from argent_client.classify import Failure, classify, limits_of

from ..server import Server
from . import dialects as D
from .hangups import Hangups
from .http import BodyTooLarge, ClientGone, Exchange
from .leasing import Buffered, Fault, Held, Leases
from .pool import Pool, Response, Timeout, Timeouts, UpstreamError
from .stats import Record, Stats
from .swap import KEEP_BACK, forward_headers, guess_dialect, strip_key, without_length
from .upstreams import Dialect, NotFound, Plan, Target, Upstreams

log = logging.getLogger("argentd.gateway")

LEASE_TTL: Final = 3600.0
"""A gateway lease ends with its request; the TTL only bounds a bug."""


class _Answer:
    """An upstream answer as `classify` reads it (status, headers, parsed body)."""

    def __init__(self, status: int, headers: dict[str, str], body: object) -> None:
        self.status_code = status
        self.headers = headers
        self._body = body

    def json(self) -> object:
        return self._body


@dataclass
class Context:
    ex: Exchange
    plan: Plan
    body: bytes
    params: P.LeaseParams
    rec: Record
    open: set[int] = field(default_factory=set)
    """Connection ids that may still hold a lease or a waiter."""
    bodies: dict[int, bytes] = field(default_factory=dict)
    sse: bool = False
    """Whether the answer streaming back is an event stream."""


class Proxy:
    """The request path of the gateway, around the daemon's one engine."""

    def __init__(self, server: Server, pool: Pool, stats: Stats,
                 token_ok: Callable[[Exchange, str | None], bool], hangups: Hangups) -> None:
        self.server = server
        self.hangups = hangups
        self.engine = server.engine
        self.pool = pool
        self.stats = stats
        self._token_ok = token_ok
        self.leases = Leases(server)
        self._upstreams: Upstreams | None = None

    def upstreams(self) -> Upstreams:
        config = self.engine.config
        if self._upstreams is None or self._upstreams.config is not config:
            self._upstreams = Upstreams(config)
        return self._upstreams

    # ------------------------------------------------------------ entry

    async def handle(self, ex: Exchange) -> None:
        """Answer one request; never raises but `ClientGone` handling ends quietly."""
        path, _, query = ex.target.partition("?")
        rec = Record(ex.method, path)
        ctx: Context | None = None
        try:
            ctx = await self._prepare(ex, path, query, rec)
            if ctx is not None:
                await self._serve_while_there(ctx)
        except ClientGone:
            rec.note = rec.note or "client gone"
            if not rec.status:
                rec.status = 499
        except Exception:
            log.exception("gateway request failed")
            rec.status = rec.status or 500
            if not ex.started:
                dialect = ctx.plan.dialect if ctx else guess_dialect(path)
                with contextlib.suppress(ClientGone):
                    await self._error(ex, dialect, 500, "upstream", "internal error in argentd")
        finally:
            if ctx is not None:
                self.leases.let_go(ctx.open)
            self.stats.done(rec)

    async def _prepare(self, ex: Exchange, path: str, query: str, rec: Record) -> Context | None:
        query, key = strip_key(query)
        if not self._token_ok(ex, key):
            rec.status = 401
            await self._error(ex, guess_dialect(path), 401, "auth",
                              "missing or wrong local token: send the token of "
                              "`argentctl gateway token` as the API key")
            return None
        try:
            plan = self.upstreams().plan(path, query)
        except NotFound as exc:
            rec.status = 404
            await self._error(ex, exc.dialect, 404, "not_found", str(exc))
            return None
        try:
            body = await ex.body(self.engine.config.gateway.max_body)
        except BodyTooLarge:
            rec.status = 413
            limit = self.engine.config.gateway.max_body
            await self._error(ex, plan.dialect, 413, "too_large",
                              f"request body over {limit} bytes ([gateway] max_body)")
            return None
        probe = D.Probe()
        if ex.method == "POST" and D.needs_json(plan.rest):
            try:
                probe = D.probe(body)
            except D.NotJson as exc:
                rec.status = 400
                await self._error(ex, plan.dialect, 400, "invalid", str(exc))
                return None
        session = (ex.header(b"x-claude-code-session-id") or probe.user_id
                   or ex.header(b"x-argent-session"))
        params = P.LeaseParams(
            model=probe.model,
            session=session[:200] if session else None,
            ttl=LEASE_TTL,
            client=(ex.header(b"x-argent-client") or "gateway")[:100],
        )
        return Context(ex, plan, body, params, rec)

    # ------------------------------------------------------------ attempts

    async def _serve_while_there(self, ctx: Context) -> None:
        """`_serve`, cancelled (waiting, upstream and all) when the client hangs up
        (noticed from `WATCH_AFTER` seconds in, see `hangups`)."""
        flight = self.hangups.add(ctx.ex)
        gone = False
        try:
            with flight.scope:
                await self._serve(ctx)
        except ClientGone:
            gone = True  # a write that failed or timed out
        finally:
            await self.hangups.remove(flight)
        if gone or flight.gone:
            raise ClientGone("the client hung up")

    async def _serve(self, ctx: Context) -> None:
        config = self.engine.config.gateway
        wait_until = self.server.now() + config.wait
        plan, rec = ctx.plan, ctx.rec
        held: Held | None = None
        index = 0
        last: Fault | None = None
        while rec.attempts < config.attempts:
            if held is None:
                try:
                    held = await self.leases.acquire(ctx.open, ctx.params, plan.targets,
                                                     index, wait_until)
                except P.NoProfileAvailable as exc:
                    await self._nothing_ready(ctx, exc)
                    return
                except (P.UnknownProvider, P.UnknownRoute) as exc:
                    if last is not None:
                        break
                    rec.status = 404
                    await self._error(ctx.ex, plan.dialect, 404, "not_found",
                                      f"{exc.message} (add a profile: `argentctl setup`)")
                    return
                except P.ArgentError as exc:  # e.g. a model name the engine refuses
                    if last is not None:
                        break
                    rec.status = 400
                    await self._error(ctx.ex, plan.dialect, 400, "invalid", exc.message)
                    return
            rec.attempts += 1
            rec.profile = held.lease.profile
            target = plan.targets[held.index]
            self.stats.count("attempts", target.provider)
            fault = await self._attempt(ctx, target, held)
            if fault is None:
                return
            last = fault
            self.stats.count("attempts_failed", target.provider)
            here = held.index
            more = plan.route is not None and here + 1 < len(plan.targets)
            if fault.kind == "profile":
                result = self.leases.report(ctx.open, held, fault, failover=True)
                self.stats.count("rotations", target.provider)
                held = None if result.next is None else Held(result.next, here, held.conn)
                index = here + 1 if held is None and more else here
                continue
            self.leases.report(ctx.open, held, fault, failover=False)
            held = None
            if not more:
                break
            index = here + 1
            self.stats.count("rotations", target.provider)
        assert last is not None
        await self._pass_back(ctx, last)

    def _body_for(self, ctx: Context, held: Held, target: Target) -> bytes:
        if target.model is None or ctx.plan.route is None or not D.needs_json(ctx.plan.rest):
            return ctx.body
        body = ctx.bodies.get(held.index)
        if body is None:
            body = D.rewrite_model(ctx.body, target.model)
            ctx.bodies[held.index] = body
        return body

    # ------------------------------------------------------------ one try

    async def _attempt(self, ctx: Context, target: Target, held: Held) -> Fault | None:
        """One upstream try; None when the answer went back to the client."""
        ex = ctx.ex
        body = self._body_for(ctx, held, target)
        headers = forward_headers(ex.headers, held.lease.headers)
        t = self.engine.config.gateway.timeouts
        timeouts = Timeouts(connect=t.connect, read=t.read, write=t.read, pool=t.read)
        started = time.perf_counter()
        try:
            async with self.pool.stream(ex.method, target.url, headers=headers, content=body,
                                        timeouts=timeouts) as resp:
                self.stats.upstream(target.provider, time.perf_counter() - started)
                return await self._answer(ctx, target, held, resp)
        except UpstreamError as exc:
            kind: P.FailureKind = "timeout" if isinstance(exc, Timeout) else "server_error"
            what = f"{type(exc).__name__}: {exc}"
            if ex.started:
                # Mid-stream: bytes went out, the answer cannot go again.
                self.leases.report(ctx.open, held, Fault("provider", Failure(
                    kind=kind, message=f"upstream broke mid-answer: {what}"), None, None),
                    failover=False)
                ctx.rec.note = "upstream broke mid-answer"
                await self._break_off(ctx)
                return None
            return Fault("provider", Failure(kind=kind, message=f"upstream {what}"), None, None)

    async def _answer(self, ctx: Context, target: Target, held: Held,
                      resp: Response) -> Fault | None:
        ex, rec = ctx.ex, ctx.rec
        status = resp.status
        # As `lower_headers` has them (the pool strips values): the first of a name wins.
        header_map = {k.decode("latin-1").lower(): v.decode("latin-1")
                      for k, v in reversed(resp.headers)}
        back = [(k, v) for k, v in resp.headers if k.lower() not in KEEP_BACK]
        now = self.server.now()
        if status >= 400:
            limits = limits_of(header_map, now)
            watch = D.BodyWatch()
            async for chunk in resp.aiter_stream():
                watch.feed(chunk)
            failure = classify(_Answer(status, header_map, watch.json()), now=now)
            answer = Buffered(status, back, watch.data())
            if failure is not None and failure.kind in P.PROFILE_FAULTS:
                return Fault("profile", failure, limits, answer)
            if failure is not None and failure.kind == "overloaded":
                return Fault("provider", failure, limits, answer)
            rec.status = status
            if failure is not None:  # 5xx: counted against the profile, no cooldown
                self.leases.report(ctx.open, held, Fault("provider", failure, limits, answer),
                                   failover=False)
            else:  # a 4xx about the request itself: the credential worked
                self.leases.release(ctx.open, held, None, limits)
            await ex.answer(status, without_length(back), answer.body)
            return None
        rec.status = status
        await ex.start(status, back)
        ctype = header_map.get("content-type", "")
        sse = D.SseWatch() if "text/event-stream" in ctype else None
        ctx.sse = sse is not None
        whole = D.BodyWatch() if sse is None and "json" in ctype else None
        last = b""
        async for chunk in resp.aiter_stream():
            if sse is not None:
                sse.feed(chunk)
            elif whole is not None:
                # A JSON answer is read whole: each part waits for the next, so the
                # last one goes out with the end (chunked framing: one write, not two).
                whole.feed(chunk)
                chunk, last = last, chunk
            await ex.send(chunk)
        await ex.end(last)
        # Read after the answer went out (as of its head): the client does not wait for it.
        limits = limits_of(header_map, now)
        usage = sse.usage if sse is not None else D.usage_of(whole.json() if whole else None)
        if sse is not None and sse.error is not None:
            failure = classify(_Answer(200, header_map, {"error": sse.error}), now=now)
            if failure is not None:
                failure = msgspec.structs.replace(failure, status=None)  # the 200 says nothing
                rec.note = f"stream error {failure.kind}"
                self.leases.report(ctx.open, held, Fault("provider", failure, limits, None),
                                   failover=False)
                return None
        self.leases.release(ctx.open, held, usage, limits)
        return None

    async def _break_off(self, ctx: Context) -> None:
        """End an answer whose upstream broke: an SSE error event, else a cut connection."""
        ex = ctx.ex
        try:
            if ctx.sse:
                await ex.send(D.sse_error_event(ctx.plan.dialect, "upstream",
                                                "the upstream connection broke mid-stream"))
                await ex.end()
        except ClientGone:
            pass

    # ------------------------------------------------------------ answers

    async def _nothing_ready(self, ctx: Context, exc: P.NoProfileAvailable) -> None:
        retry = exc.data.get("retry_after")
        seconds = max(1, math.ceil(retry)) if isinstance(retry, int | float) else 30
        what = (ctx.plan.route and f"route {ctx.plan.route!r}") or f"{ctx.plan.provider}"
        ctx.rec.status = 429
        await self._error(ctx.ex, ctx.plan.dialect, 429, "rate_limit",
                          f"no profile of {what} is ready (cooling down, busy or disabled); "
                          f"one may be ready in {seconds} s",
                          [(b"retry-after", str(seconds).encode())])

    async def _pass_back(self, ctx: Context, fault: Fault) -> None:
        """Give the client the last upstream answer (or say why there was none)."""
        if fault.answer is not None:
            ctx.rec.status = fault.answer.status
            await ctx.ex.answer(fault.answer.status, without_length(fault.answer.headers),
                                fault.answer.body)
            return
        timeout = fault.failure.kind == "timeout"
        ctx.rec.status = 504 if timeout else 502
        await self._error(ctx.ex, ctx.plan.dialect, ctx.rec.status,
                          "timeout" if timeout else "upstream",
                          f"upstream did not answer ({fault.failure.message})")

    async def _error(self, ex: Exchange, dialect: Dialect, status: int, kind: D.ErrorKind,
                     message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = D.error_body(dialect, kind, message)
        headers = [(b"content-type", b"application/json"), *(extra or [])]
        if status in (401, 404, 413) or status >= 500:
            headers.append((b"x-should-retry", b"false" if status < 500 else b"true"))
        await ex.answer(status, headers, body)

