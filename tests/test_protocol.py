"""The wire types and framing of `argent_client.protocol`."""

from __future__ import annotations

import msgspec
import pytest

from argent_client import protocol as P


def line(obj: object) -> bytes:
    return msgspec.json.encode(obj)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json", P.ParseError),
        (b'{"jsonrpc": "2.0", "method": ', P.ParseError),
        (b"0\x00", P.ParseError),
        (b"[1", P.ParseError),
        (b"[]", P.InvalidRequest),
        (b'[{"jsonrpc":"2.0","method":"hello","id":1}]', P.InvalidRequest),
        (b"3", P.InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1}', P.InvalidRequest),
        (b'{"jsonrpc":"1.0","method":"hello","id":1}', P.InvalidRequest),
        (b'{"jsonrpc":"2.0","method":7,"id":1}', P.InvalidRequest),
    ],
)
def test_protocol_decode_request_errors(raw: bytes, error: type[P.ArgentError]) -> None:
    with pytest.raises(error):
        P.decode_request(raw)
    assert P.decode_typed(raw) is None


def test_protocol_decode_params_errors_name_the_path() -> None:
    req = P.decode_request(line({"jsonrpc": "2.0", "method": "lease", "id": 1,
                                 "params": {"provider": 5}}))
    with pytest.raises(P.InvalidParams) as err:
        P.decode_params(req)
    assert "`$.params.provider`" in str(err.value)
    req = P.decode_request(line({"jsonrpc": "2.0", "method": "nope", "id": 1}))
    with pytest.raises(P.MethodNotFound):
        P.decode_params(req)


@pytest.mark.parametrize("method", sorted(P.METHODS))
def test_protocol_typed_decode_agrees_with_two_step(method: str) -> None:
    params = {"lease": {"provider": "anthropic", "wait": 1.5},
              "renew": {"lease_id": "l_1", "ttl": 5},
              "release": {"lease_id": "l_1", "usage": {"input_tokens": 3}},
              "report_failure": {"lease_id": "l_1", "kind": "quota", "failover": True},
              "reset": {"profile": "a:b"}, "disable": {"profile": "a:b"},
              "enable": {"profile": "a:b"}}.get(method, {})
    raw = line({"jsonrpc": "2.0", "method": method, "params": params, "id": "x"})
    typed = P.decode_typed(raw)
    req = P.decode_request(raw)
    assert typed == (method, "x", P.decode_params(req))


def test_protocol_notification_has_no_id() -> None:
    typed = P.decode_typed(b'{"jsonrpc":"2.0","method":"hello"}')
    assert typed is not None and typed[1] is msgspec.UNSET


def test_protocol_errors_round_trip_by_code() -> None:
    for code, cls in P.ERRORS.items():
        err = cls("message", retry_after=3.0)
        wire = msgspec.json.decode(P.encode_error(7, err))
        assert wire["jsonrpc"] == "2.0" and wire["id"] == 7
        assert wire["error"]["data"]["code"] == code
        back = P.error_from_wire(msgspec.convert(wire["error"], P.ErrorObject))
        assert type(back) is cls
        assert back.data == {"retry_after": 3.0}


def test_protocol_rpc_codes_are_stable() -> None:
    assert {c: e.rpc_code for c, e in P.ERRORS.items()} == {
        "parse_error": -32700, "invalid_request": -32600, "method_not_found": -32601,
        "invalid_params": -32602, "internal_error": -32603, "no_profile_available": -32001,
        "unknown_provider": -32002, "unknown_route": -32003, "lease_not_found": -32004,
        "unknown_profile": -32005, "permission_denied": -32006, "limit_exceeded": -32010,
        "daemon_unavailable": -32099,
    }


def test_protocol_lease_repr_hides_the_token() -> None:
    lease = P.LeaseResult(lease_id="l_1", profile="a:b", provider="a", type="api-key",
                          token="sk-secret-value-0123456789", label="", headers={},
                          expires_at=1.0, source="profile")
    assert "sk-secret" not in repr(lease) and "sk-secret" not in str(lease)


def test_protocol_event_line_is_a_notification() -> None:
    wire = msgspec.json.decode(P.encode_event(P.Event(type="lease", at=1.0, profile="a:b")))
    assert wire == {"jsonrpc": "2.0", "method": "event",
                    "params": {"type": "lease", "at": 1.0, "profile": "a:b"}}


def test_protocol_result_decoding_by_method() -> None:
    inc = P.decode_incoming(P.encode_result(1, P.RenewResult(5.0)))
    assert P.decode_result("renew", inc.result) == P.RenewResult(5.0)
    with pytest.raises(P.ParseError):
        P.decode_incoming(b"{")


def test_release_params_success_is_left_out_unless_false() -> None:
    from argent_client import protocol as P

    assert P.encode_line(P.ReleaseParams(lease_id="L")) == b'{"lease_id":"L"}\n'
    assert P.encode_line(P.ReleaseParams(lease_id="L", success=False)) == (
        b'{"lease_id":"L","success":false}\n')
