"""Protocol fuzzing of one real argentd: random bytes, random JSON, random envelopes.

One daemon serves the whole module (starting one per example would be too
slow). Each example opens a fresh connection, sends its lines, then a
sentinel `hello`, and checks what came back against `expect()`, an
independent reading of the framing rules in DESIGN ("Wire protocol"):

- a blank line (ASCII whitespace only) is skipped;
- bad JSON gets one `parse_error` (-32700) with id null;
- JSON that is not a request object gets one `invalid_request` (-32600)
  with id null;
- a request with an `id` gets exactly one reply carrying that id (result or
  error, never `internal_error`); a notification (no `id`) gets none.

After each example the daemon must still be alive and another client's
`hello` must work. At the end, no secret may be in its log or state.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Daemon, RawConn, make_secret

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
MAX_WAIT = 0.2
"""A fuzzed `lease` may `wait` this long at most, so every reply comes back soon."""
REPLY_DEADLINE = 5.0

METHODS = ["hello", "lease", "renew", "release", "report_failure", "status", "reset",
           "disable", "enable", "reload", "subscribe", "metrics"]
PARAM_NAMES = ["provider", "route", "model", "session", "ttl", "wait", "detached", "client",
               "lease_id", "usage", "limits", "kind", "retry_after", "status", "message",
               "profile", "failover", "input_tokens", "requests_remaining"]
PLAUSIBLE = ["anthropic", "openai", "google", "anthropic:one", "anthropic:two", "openai:main",
             "default", "nope", "rate_limit", "quota", "auth", "overloaded", "timeout",
             "server_error", "l_0000000000000000", "claude-sonnet-4-5", ""]


# ---------------------------------------------------------------- the daemon


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One argentd for the module; stopped and leak-checked at the end."""
    sock_dir = tempfile.mkdtemp(prefix="ad-", dir="/tmp")  # AF_UNIX paths are short
    d = Daemon(tmp_path_factory.mktemp("fuzz"), Path(sock_dir))
    d.write_profiles({
        "anthropic:one": {"provider": "anthropic", "type": "setup-token",
                          "token": make_secret()},
        "anthropic:two": {"provider": "anthropic", "type": "api-key",
                          "token": make_secret("sk-ant-api03-")},
        "openai:main": {"provider": "openai", "type": "api-key",
                        "token": make_secret("sk-proj-"), "max_concurrent": 1},
    })
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text('[routes]\ndefault = ["anthropic/claude-sonnet-4-5", "openai/gpt-5"]\n')
    d.start()
    try:
        yield d
        assert d.proc is not None and d.proc.poll() is None, d.stderr()
        err = d.stderr()
        assert "Traceback" not in err and "internal error" not in err, err
    finally:
        for c in d.conns:
            c.close()
        rc = d.stop()
        d.notify.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        d.check_no_secret_leaked()
    assert rc == 0


# ---------------------------------------------------------------- the model


def expect(line: bytes) -> tuple[str, Any]:
    """What the daemon owes for one framed line.

    ("none", None), ("error", code) — an error reply with id null — or
    ("reply", id). Ids are compared with their JSON type (`1` is not `"1"`).
    """
    if not line.strip():
        return ("none", None)
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return ("error", PARSE_ERROR)
    if not isinstance(obj, dict):
        return ("error", INVALID_REQUEST)
    if obj.get("jsonrpc", "2.0") != "2.0" or not isinstance(obj.get("method"), str):
        return ("error", INVALID_REQUEST)
    if "id" not in obj:
        return ("none", None)
    rid = obj["id"]
    if rid is None or isinstance(rid, str) or (isinstance(rid, int)
                                               and not isinstance(rid, bool)):
        return ("reply", rid)
    return ("error", INVALID_REQUEST)


def key(rid: Any) -> tuple[str, Any]:
    return (type(rid).__name__, rid)


def exchange(d: Daemon, payload: bytes, conn: RawConn | None = None) -> list[dict[str, Any]]:
    """Send `payload` (complete lines) and check every reply; returns the replies.

    Uses `conn` when given (it stays open), else a fresh connection.
    """
    lines = payload.split(b"\n")
    assert lines[-1] == b""
    owed = Counter[tuple[str, Any]]()
    null_errors = Counter[int]()
    for line in lines[:-1]:
        kind, value = expect(line)
        if kind == "reply":
            owed[key(value)] += 1
        elif kind == "error":
            owed[key(None)] += 1
            null_errors[value] += 1
    own = conn is None
    c = RawConn(d.socket, timeout=REPLY_DEADLINE) if conn is None else conn
    replies: list[dict[str, Any]] = []
    try:
        got = Counter[tuple[str, Any]]()
        got_null_errors = Counter[int]()

        def take(msg: dict[str, Any]) -> None:
            assert set(msg) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), msg
            assert msg["jsonrpc"] == "2.0"
            replies.append(msg)
            got[key(msg["id"])] += 1
            if "error" in msg:
                code = msg["error"]["code"]
                assert code != INTERNAL_ERROR, msg
                if msg["id"] is None:
                    got_null_errors[code] += 1

        def until(sentinel: str) -> None:
            c.send(json.dumps({"jsonrpc": "2.0", "method": "hello",
                               "id": sentinel}).encode() + b"\n")
            while True:
                msg = c.read()
                if "method" in msg:  # an event: the payload subscribed
                    assert msg["method"] == "event" and "id" not in msg, msg
                    continue
                if msg.get("id") == sentinel:
                    assert msg["result"]["server"] == "argentd", msg
                    return
                take(msg)

        c.send(payload)
        until("sentinel-1")
        deadline = time.monotonic() + REPLY_DEADLINE
        while got != owed and time.monotonic() < deadline:
            # A reply that comes later (a lease that waits, a reload) is still owed.
            until("sentinel-more")
        until("sentinel-2")  # and nothing more turns up
        assert got == owed, (payload, got, owed)
        for code, n in null_errors.items():  # a request with id null may add to these
            assert got_null_errors[code] >= n, (payload, got_null_errors, null_errors)
    finally:
        if own:
            close_cleanly(c)
    assert d.proc is not None and d.proc.poll() is None, d.stderr()
    assert d.call("hello")["server"] == "argentd"  # another client is still served
    return replies


def close_cleanly(conn: RawConn) -> None:
    """Half-close, then read to the daemon's EOF, so no reply is left unread.

    This fuzz is about what the daemon answers, not about resets (closing
    with unread data makes the daemon's next recv fail with ECONNRESET; see
    test_chaos_peer_reset_is_not_an_error), so it hangs up politely.
    """
    try:
        conn.sock.shutdown(socket.SHUT_WR)
        while conn.sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def tidy(d: Daemon) -> None:
    """Undo what earlier examples did (leases, cooldowns, disabled profiles)."""
    c = RawConn(d.socket)
    try:
        st_ = c.call("status")
        for le in st_["leases"]:
            c.request("release", {"lease_id": le["lease_id"]})
        for p in st_["profiles"]:
            c.call("reset", {"profile": p["id"]})
            c.call("enable", {"profile": p["id"]})
    finally:
        c.close()


# ---------------------------------------------------------------- strategies

json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
plausible_values = (st.sampled_from(PLAUSIBLE) | st.integers(-5, 100_000)
                    | st.floats(-10, 1e9, allow_nan=False) | st.booleans() | json_values)


def tame(params: Any) -> Any:
    """Clamp a numeric `wait` so no fuzzed lease stays parked past the checks."""
    if isinstance(params, dict):
        wait = params.get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > MAX_WAIT:
            params = {**params, "wait": MAX_WAIT}
    return params


params_values = (
    st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=8), plausible_values,
                    max_size=6)
    | json_values
).map(tame)
ids = st.none() | st.integers() | st.text(max_size=10) | json_values
envelopes = st.fixed_dictionaries(
    {"method": st.sampled_from(METHODS) | st.text(max_size=12)},
    optional={"jsonrpc": st.just("2.0") | json_scalars, "params": params_values, "id": ids},
)




def mostly(typed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`typed` seven times in eight, else any JSON value (most likely a wrong type)."""
    return st.integers(0, 7).flatmap(lambda i: json_values if i == 0 else typed)


texts = st.sampled_from(PLAUSIBLE) | st.text(max_size=12)
numbers = (st.floats(-1, 1e6, allow_nan=False) | st.integers(-10, 10**6)
           | st.sampled_from([0, 0.001, 0.05, 1e300, -1e300, 2**64]))
waits = st.floats(-1, MAX_WAIT, allow_nan=False) | st.sampled_from([0, MAX_WAIT])
providers = st.sampled_from(["anthropic", "openai", "google", "z.ai", "Anthropic"]) | texts
profiles = st.sampled_from(["anthropic:one", "anthropic:two", "openai:main", "openai:nope"])
kinds = st.sampled_from(["rate_limit", "quota", "auth", "overloaded", "timeout",
                         "server_error", "bogus"])
usage = st.fixed_dictionaries({}, optional={
    f: mostly(st.integers(-1, 10**7)) for f in
    ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")})
limits = st.fixed_dictionaries({}, optional={
    "requests_limit": mostly(st.integers(-1, 10**6)),
    "requests_remaining": mostly(st.integers(-1, 10**6)),
    "requests_reset": mostly(numbers.map(lambda x: time.time() + x if abs(x) < 1e9 else x)),
    "tokens_limit": mostly(st.integers(-1, 10**9)),
    "tokens_remaining": mostly(st.integers(-1, 10**9)),
    "tokens_reset": mostly(numbers),
    "unified_status": mostly(st.sampled_from(["allowed", "allowed_warning", "rejected", "x"])),
    "unified_5h_utilization": mostly(st.floats(-1, 2, allow_nan=False)),
    "unified_7d_utilization": mostly(st.floats(-1, 2, allow_nan=False)),
    "unified_reset": mostly(numbers.map(lambda x: time.time() + x if abs(x) < 1e9 else x)),
})


def typed_params(method: str, lease_ids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Params for `method` with mostly the right names and types."""
    by_method: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "lease": {"provider": providers, "route": st.sampled_from(["default", "nope"]),
                  "model": texts, "session": texts, "ttl": numbers, "wait": waits,
                  "detached": st.booleans(), "client": texts},
        "renew": {"lease_id": lease_ids, "ttl": numbers},
        "release": {"lease_id": lease_ids, "usage": usage, "limits": limits},
        "report_failure": {"kind": kinds, "lease_id": lease_ids, "profile": profiles,
                           "retry_after": numbers, "status": st.integers(-1, 1000),
                           "message": st.text(max_size=40), "model": texts,
                           "limits": limits, "failover": st.booleans()},
        "reset": {"profile": profiles},
        "disable": {"profile": profiles},
        "enable": {"profile": profiles},
    }
    fields = by_method.get(method, {})
    required = {"renew": ["lease_id"], "release": ["lease_id"], "report_failure": ["kind"],
                "reset": ["profile"], "disable": ["profile"], "enable": ["profile"]}
    need = required.get(method, [])
    base = st.fixed_dictionaries(
        {k: mostly(v) for k, v in fields.items() if k in need},
        optional={k: mostly(v) for k, v in fields.items() if k not in need},
    )
    extra = st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=6), json_values,
                            max_size=1)
    # Requests the engine accepts, so leases are granted, renewed, released and reported.
    good: st.SearchStrategy[Any] | None = {
        "lease": st.fixed_dictionaries(
            {"provider": st.sampled_from(["anthropic", "openai"])},
            optional={"ttl": st.floats(0.01, 600), "detached": st.booleans(),
                      "model": texts, "session": texts, "client": texts, "wait": waits}),
        "renew": st.fixed_dictionaries({"lease_id": lease_ids},
                                       optional={"ttl": st.floats(0.01, 600)}),
        "release": st.fixed_dictionaries({"lease_id": lease_ids},
                                         optional={"usage": usage, "limits": limits}),
        "report_failure": st.tuples(st.fixed_dictionaries(
            {"kind": kinds.filter(lambda k: k != "bogus")},
            optional={"retry_after": st.floats(0, 3600), "failover": st.booleans(),
                      "status": st.integers(400, 599), "limits": limits},
        ), st.one_of(st.fixed_dictionaries({"lease_id": lease_ids}),
                     st.fixed_dictionaries({"profile": profiles}))).map(
            lambda t: {**t[0], **t[1]}),
    }.get(method)
    if good is not None:
        base = st.one_of(good, good, base)
    # Mostly well-formed; sometimes an unknown key, sometimes nothing at all.
    return st.one_of(base, base, base, st.tuples(base, extra).map(lambda t: {**t[0], **t[1]}),
                     st.none()).map(tame)


def requests(lease_ids: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    weighted = METHODS + ["lease"] * 3 + ["release", "report_failure", "renew"]
    by_method = {m: st.fixed_dictionaries(
        {"jsonrpc": st.just("2.0"), "method": st.just(m),
         "params": typed_params(m, lease_ids)},
        optional={"id": st.integers(0, 50) | st.text(max_size=4)},
    ) for m in set(weighted)}
    return st.sampled_from(weighted).flatmap(by_method.__getitem__)


@dataclass(frozen=True)
class LeasePick:
    """A drawn lease id not yet known: the `index`-th (mod its length) of the pool of
    ids a session may name (`resolve`), so one strategy serves every round."""

    index: int


KNOWN_LEASE_IDS = ("l_0000000000000000", "", "x" * 40)
POOL_DRAW = 64
"""More than a session's pool can hold (3 known + at most 3 rounds x 8 x 2 granted)."""
SESSION_REQUESTS = st.lists(
    requests(st.sampled_from(range(POOL_DRAW)).map(LeasePick)), min_size=1, max_size=8)
"""Built once: a strategy built per draw spends most of the test's time in Hypothesis'
own validation of the new strategy objects, not in the daemon."""


def resolve(value: Any, pool: list[str]) -> Any:
    """`value` with each LeasePick replaced by its id from `pool` (uniform over it)."""
    if isinstance(value, LeasePick):
        return pool[value.index % len(pool)]
    if isinstance(value, dict):
        return {k: resolve(v, pool) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, pool) for v in value]
    return value


def lines_of(values: list[Any]) -> bytes:
    return b"".join(json.dumps(v).encode() + b"\n" for v in values)


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("line", [b"0\x00", b"[1", b'"x" y'])
def test_fuzz_garbage_after_json_prefix_is_parse_error(fuzzed: Daemon, line: bytes) -> None:
    conn = RawConn(fuzzed.socket)
    try:
        conn.send(line + b"\n")
        reply = conn.read()
    finally:
        conn.close()
    assert reply["id"] is None and reply["error"]["code"] == PARSE_ERROR


@SETTINGS
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(fuzzed: Daemon, data: bytes) -> None:
    exchange(fuzzed, data + b"\n")


@SETTINGS
@given(st.lists(json_values, min_size=1, max_size=5))
def test_fuzz_random_json(fuzzed: Daemon, values: list[Any]) -> None:
    exchange(fuzzed, lines_of(values))


@SETTINGS
@given(st.lists(envelopes, min_size=1, max_size=6))
def test_fuzz_envelopes_random_method_and_params(fuzzed: Daemon, values: list[Any]) -> None:
    exchange(fuzzed, lines_of(values))


@SETTINGS
@given(st.lists(st.sampled_from(METHODS).flatmap(
    lambda m: st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "method": st.just(m),
                                     "params": params_values, "id": st.integers(0, 20)})),
    min_size=1, max_size=8))
def test_fuzz_known_methods_random_params(fuzzed: Daemon, values: list[Any]) -> None:
    exchange(fuzzed, lines_of(values))


@SETTINGS
@given(st.data())
def test_fuzz_sessions_typed_params(fuzzed: Daemon, data: st.DataObject) -> None:
    """Several rounds on one connection; later rounds may name the leases granted earlier."""
    tidy(fuzzed)
    granted: list[str] = []
    conn = RawConn(fuzzed.socket, timeout=REPLY_DEADLINE)
    try:
        for _ in range(data.draw(st.integers(1, 3), label="rounds")):
            pool = [*KNOWN_LEASE_IDS, *granted]
            batch = resolve(data.draw(SESSION_REQUESTS, label="batch"), pool)
            for reply in exchange(fuzzed, lines_of(batch), conn):
                result = reply.get("result")
                if isinstance(result, dict):
                    for lease in (result, result.get("next")):
                        if isinstance(lease, dict) and "lease_id" in lease:
                            granted.append(lease["lease_id"])
    finally:
        close_cleanly(conn)


def test_fuzz_model_matches_known_lines(fuzzed: Daemon) -> None:
    """The model itself, on lines whose answer is in DESIGN and test_server."""
    assert expect(b"   \t") == ("none", None)
    assert expect(b"not json") == ("error", PARSE_ERROR)
    assert expect(b"[1]") == ("error", INVALID_REQUEST)
    assert expect(b'{"jsonrpc":"1.0","method":"hello","id":1}') == ("error", INVALID_REQUEST)
    assert expect(b'{"jsonrpc":"2.0","method":"hello"}') == ("none", None)
    assert expect(b'{"method":"nope","id":"x"}') == ("reply", "x")
    assert expect(b'{"method":"hello","id":true}') == ("error", INVALID_REQUEST)
    exchange(fuzzed, b'not json\n[1]\n{"method":"nope","id":"x"}\n'
                     b'{"jsonrpc":"2.0","method":"hello"}\n\n{"method":"hello","id":null}\n')
