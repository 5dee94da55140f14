"""argentd.log: the one redaction function and the one-line stderr format."""

from __future__ import annotations

import io
import logging
import re
import secrets
import sys
import threading
from collections.abc import Iterator

import pytest

from argentd import log as logmod
from argentd.log import RedactingFormatter, redact, register_secrets, setup_logging
from argentd.model import fingerprint


def rand(n: int = 40) -> str:
    """Random base64url text without `-`/`_`, so it is one token."""
    return secrets.token_urlsafe(n).replace("-", "x").replace("_", "y")[:n]


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = (set(logmod._registered), logmod._registered_re)
    logmod._registered.clear()
    logmod._redacted.clear()
    logmod._registered_re = None
    yield
    logmod._redacted.clear()
    logmod._registered.clear()
    logmod._registered.update(saved[0])
    logmod._registered_re = saved[1]


@pytest.mark.parametrize(
    "prefix",
    ["sk-ant-oat01-", "sk-ant-api03-", "sk-or-v1-", "sk-cp-", "sk-proj-", "sk-", "AIza"],
)
def test_redact_known_shapes(prefix: str) -> None:
    secret = prefix + rand(40)
    out = redact(f"using {secret} now")
    assert secret not in out
    assert secret[-12:] not in out
    assert out == f"using {fingerprint(secret)} now"


def test_redact_bearer_header() -> None:
    token = rand(24).lower()  # no digits needed: the Bearer context is enough
    out = redact(f"Authorization: Bearer {token}")
    assert out == f"Authorization: Bearer {fingerprint(token)}"


@pytest.mark.parametrize(
    "template",
    [
        '{{"token": "{}"}}',
        "token={}",
        "x-api-key: {}",
        "api_key={}",
        '"access": "{}"',
        "'refresh_token': '{}'",
        "password={}",
    ],
)
def test_redact_key_value(template: str) -> None:
    value = "abc.def~" + rand(6)  # not secret-shaped: only the key tells
    out = redact(template.format(value))
    assert value not in out
    assert fingerprint(value) in out


def test_redact_long_high_entropy_token() -> None:
    token = rand(48)
    assert token not in redact(f"weird {token} value")
    hexes = secrets.token_hex(20)
    assert hexes not in redact(f"hex {hexes}")


def test_redact_dotted_tokens_whole() -> None:
    zai = secrets.token_hex(16) + "." + rand(16)
    jwt = ".".join(rand(36) for _ in range(3))
    for token in (zai, jwt):
        out = redact(f"key {token} end")
        assert token.split(".")[-1] not in out
        assert out == f"key {fingerprint(token)} end"


@pytest.mark.parametrize(
    "text",
    [
        "lease l_0123abcd4567ef89 granted to agent-7",
        "profile anthropic:titanium is cooling down until 2026-11-26T23:00:00Z",
        "fingerprint sk-ant-oat01-…3f9a6b and sk-proj-…00aa11 and …abcdef",
        "Authorization: Bearer sk-ant-oat01-…3f9a6b",
        "token: sk-ant-oat01-…3f9a6b",
        "loaded /tmp/pytest-of-root/pytest-12/test_watch_files_atomic_rename0/auth-profiles.json",
        "moved it to state.json.corrupt-20261126T230000Z",
        "a_rather_long_snake_case_identifier_name_2 and task-runner-for-everything-else",
        "key 3f9a6b0c1d2e3f4a5b6c7d8e state",  # a 24-hex state key
        "token_ref env:ANTHROPIC_API_KEY",
        "retry in 60 s; 3 ready, 1 cooling, 2 leases",
    ],
)
def test_redact_leaves_ordinary_text(text: str) -> None:
    assert redact(text) == text


def test_redact_is_idempotent() -> None:
    secret = "sk-ant-oat01-" + rand(40)
    once = redact(f"Bearer {secret} and token={rand(30)} and {rand(50)}")
    assert redact(once) == once


def test_register_secrets_replaces_exact_values(clean_registry: None) -> None:
    odd = "hunter2-is-my-password"  # no known shape, low entropy
    assert redact(f"x {odd} y") == f"x {odd} y"
    register_secrets([odd, "short"])
    assert redact(f"x {odd} y") == f"x {fingerprint(odd)} y"
    assert redact("a short word") == "a short word"  # under MIN_REGISTERED


def test_register_secrets_longest_first(clean_registry: None) -> None:
    inner = "abcdefgh12"
    outer = inner + "XYZ-more-text"
    register_secrets([inner, outer])
    assert redact(outer) == fingerprint(outer)


def make_record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(msg % args)
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("argentd", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_formatter_one_line_with_timestamp() -> None:
    line = RedactingFormatter().format(make_record("two\nlines\r and \x1b[31m"))
    assert "\n" not in line
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ argentd WARNING two\\nlines\\r and \\x1b\[31m", line
    ), line


def test_formatter_timestamp_follows_each_records_second() -> None:
    formatter = RedactingFormatter()
    stamps = []
    for created in (1795734000.2, 1795734000.9, 1795734001.0, 1795734000.5):
        record = make_record("x")
        record.created = created
        stamps.append(formatter.format(record).split()[0])
    assert stamps == ["2026-11-26T23:00:00Z", "2026-11-26T23:00:00Z", "2026-11-26T23:00:01Z",
                      "2026-11-26T23:00:00Z"]


def test_formatter_redacts_traceback() -> None:
    secret = "sk-ant-oat01-" + rand(40)
    line = RedactingFormatter().format(make_record("failed with %s", secret, exc=True))
    assert "Traceback" in line
    assert "RuntimeError" in line
    assert "\n" not in line
    assert secret not in line
    assert secret[-20:] not in line
    assert line.count(fingerprint(secret)) == 2  # the message and the exception


def test_redact_field_is_remembered_until_the_next_secret_is_registered(
        clean_registry: None) -> None:
    odd = "hunter2-is-my-password"
    assert logmod.redact_field(f"/p/{odd}") == f"/p/{odd}"  # remembered as harmless
    register_secrets([odd])
    assert logmod.redact_field(f"/p/{odd}") == f"/p/{fingerprint(odd)}"
    secret = "sk-ant-api03-" + rand(40)
    assert logmod.redact_field(secret) == fingerprint(secret)


def test_formatter_trusts_a_pre_redacted_record_but_not_its_traceback() -> None:
    secret = "sk-ant-oat01-" + rand(40)
    record = make_record("%s and %s", logmod.redact_field(secret), "x\ny")
    setattr(record, logmod.PRE_REDACTED, True)
    line = RedactingFormatter().format(record)
    assert secret not in line and fingerprint(secret) in line and line.endswith("x\\ny")
    record = make_record("failed with %s", secret, exc=True)  # the traceback is not
    setattr(record, logmod.PRE_REDACTED, True)              # pre-redacted: redact all
    line = RedactingFormatter().format(record)
    assert secret not in line and "Traceback" in line


def test_formatter_journald_priority() -> None:
    line = RedactingFormatter(journald=True).format(make_record("hello"))
    assert line == "<4>argentd WARNING hello"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = (sys.excepthook, threading.excepthook)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)


def test_setup_logging_stderr_level_and_redaction(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("INFO")
    setup_logging("info")  # twice: still one handler
    secret = "sk-or-v1-" + secrets.token_hex(32)
    logging.getLogger("argentd.test").debug("hidden")
    logging.getLogger("argentd.test").info("lease for %s", secret)
    logging.getLogger("other.lib").error("boom %s", secret)
    lines = err.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(f"argentd.test INFO lease for {fingerprint(secret)}")
    assert lines[1].endswith(f"other.lib ERROR boom {fingerprint(secret)}")
    assert secret not in err.getvalue()


def test_setup_logging_uncaught_exception_redacted(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    setup_logging("warning")
    secret = "sk-proj-" + rand(40)
    try:
        raise ValueError(secret)
    except ValueError:
        sys.excepthook(*sys.exc_info())
    out = err.getvalue()
    assert "uncaught exception" in out
    assert "ValueError" in out
    assert secret not in out
    assert len(out.splitlines()) == 1


def test_setup_logging_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud")
