"""The connection to Redis under trio (coredis, anyio-native): sessions, timeouts, backoff.

A *session* is one coredis client from connect to failure. Every call goes
through `Session.call`, bounded by `OP_TIMEOUT`; a call that fails or
times out ends the session (its nursery is cancelled: a subscriber that
would never notice a dead server goes with it), and `Link.run` connects
again after a backoff (`BACKOFF_MIN` doubling to `BACKOFF_MAX`, jittered).
coredis' own retries are off: one policy, here.

coredis is imported only when a session starts, so a daemon without
`[cluster]` never loads it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import trio

log = logging.getLogger("argentd")

OP_TIMEOUT: Final = 1.0
"""Seconds any one Redis call may take before the session is declared lost."""
BATCH: Final = 256
"""Scripts per pipeline round trip."""
BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 5.0
"""Seconds between connection attempts: doubling from MIN to MAX, jittered."""


class SessionLost(Exception):
    """A Redis call failed or timed out: the session ends and the link reconnects."""


def display_url(url: str) -> str:
    """`url` without its password (for status, logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect(url: str, password: str | None) -> AbstractAsyncContextManager[Any]:
    """A coredis client for `url` (entered as an async context manager)."""
    import coredis
    from coredis.retry import NoRetryPolicy

    kwargs: dict[str, Any] = {
        "stream_timeout": OP_TIMEOUT,
        "connect_timeout": OP_TIMEOUT,
        "retry_policy": NoRetryPolicy(),
        "decode_responses": False,
        "client_name": "argentd",
    }
    if password is not None:
        kwargs["password"] = password
    if url.startswith("unix://"):
        parts = urlsplit(url)
        if parts.password and password is None:
            kwargs["password"] = parts.password
        return coredis.Redis(unix_socket_path=parts.path, **kwargs)
    client: AbstractAsyncContextManager[Any] = coredis.Redis.from_url(url, **kwargs)
    return client


class Session:
    """One connected client; `call` runs a command within `OP_TIMEOUT`."""

    def __init__(self, client: Any, scrub: Callable[[str], str]) -> None:
        self.client = client
        self._scrub = scrub
        self.latency = 0.0
        """Seconds the last call took."""

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """`await fn(*args, **kwargs)` within OP_TIMEOUT; raises SessionLost otherwise."""
        start = time.perf_counter()
        try:
            with trio.fail_after(OP_TIMEOUT):
                result = await fn(*args, **kwargs)
        except trio.TooSlowError:
            raise SessionLost(f"Redis did not answer within {OP_TIMEOUT:g} s") from None
        except Exception as exc:
            raise SessionLost(self._scrub(describe(exc))) from None
        self.latency = time.perf_counter() - start
        return result


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def describe(exc: BaseException) -> str:
    """A short text for an error of the Redis client (groups unwrapped: our own
    SessionLost first, then whatever came first)."""
    leaves = _leaves(exc) or [exc]
    exc = next((e for e in leaves if isinstance(e, SessionLost)), leaves[0])
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


class Link:
    """Keeps one session alive: connects, runs `body(session)`, reconnects after faults."""

    def __init__(self, url: str, password: str | None) -> None:
        self.url = url
        self._password = password
        self.error: str | None = None
        """Why the last session ended or could not start (never a password)."""

    def scrub(self, text: str) -> str:
        for secret in (self._password, urlsplit(self.url).password):
            if secret:
                text = text.replace(secret, "***")
        return text.replace(self.url, display_url(self.url))

    async def run(self, body: Callable[[Session], Awaitable[None]],
                  on_down: Callable[[str], None]) -> None:
        """Run sessions until cancelled; `on_down(error)` after each one ends."""
        delay = BACKOFF_MIN
        while True:
            began = time.monotonic()
            try:
                async with connect(self.url, self._password) as client:
                    session = Session(client, self.scrub)
                    await session.call(client.ping)
                    await body(session)
                self.error = "the session ended"
            except SessionLost as exc:
                self.error = str(exc)
            except BaseExceptionGroup as group:
                # Cancelled while coredis cleans up, it may add errors of its own
                # (a closed stream): the cancellation goes on, the rest is noise.
                fatal, rest = group.split((trio.Cancelled, KeyboardInterrupt, SystemExit))
                if fatal is not None:
                    raise fatal from None
                self.error = self.scrub(describe(rest or group))
            except Exception as exc:  # whatever the client raised: log, back off, retry
                self.error = self.scrub(describe(exc))
            on_down(self.error)
            if time.monotonic() - began > 10 * BACKOFF_MAX:
                delay = BACKOFF_MIN  # it had been up a while: a fresh fault, retry soon
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)


async def heartbeat(session: Session, sha: str, hosts_key: str, host: str,
                    stale: float) -> tuple[list[str], float, float]:
    """Run the HEARTBEAT script: (the live hosts, the round trip, Redis' TIME minus
    this host's clock at the middle of the round trip), all seconds."""
    before = time.time()
    hosts, secs, usecs = await session.call(session.client.evalsha, sha, keys=[hosts_key],
                                            args=[host, str(int(stale * 1000))])
    after = time.time()
    redis_now = int(secs) + int(usecs) / 1e6
    names = sorted(h.decode() if isinstance(h, bytes) else str(h) for h in hosts)
    return names, after - before, redis_now - (before + after) / 2


async def scripts(session: Session, shas: dict[str, str],
                  calls: list[tuple[str, list[str], list[str]]]) -> list[Any]:
    """Run (script name, keys, args) calls (`shas`: each name's loaded SHA) in
    pipelines of BATCH; their replies in order. Raises SessionLost."""
    out: list[Any] = []
    client = session.client
    for i in range(0, len(calls), BATCH):
        chunk = calls[i : i + BATCH]

        async def run(chunk: list[tuple[str, list[str], list[str]]] = chunk) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pending = [pipe.evalsha(shas[s], keys=k, args=a) for s, k, a in chunk]
            return [await p for p in pending]

        out.extend(await session.call(run))
    return out
