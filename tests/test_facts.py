"""The facts the daemon and the client share (`argent_client/facts.py`)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from argent_client import facts

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Modules `path` imports at run time (imports under `if TYPE_CHECKING:` excluded)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
            if node.module is None:
                out.update("." * node.level + alias.name for alias in node.names)
    return out


def test_daemon_imports_only_protocol_facts_and_paths_of_the_client() -> None:
    used: dict[str, set[str]] = {}
    for path in sorted((ROOT / "argentd").rglob("*.py")):
        for name in _imports(path):
            if name.startswith("argent_client"):
                used.setdefault(name, set()).add(path.name)
    allowed = {"argent_client.protocol", "argent_client.facts", "argent_client.paths",
               # the gateway: its token file (shared with argentctl) and the one
               # classification of provider answers (stdlib + protocol only)
               "argent_client.gateway", "argent_client.classify",
               # The tools' login file formats (OAuth imports and the daemon's sync).
               "argent_client.oauth_sources",
               # Leaving the process without teardown (stdlib only, see below).
               "argent_client.exiting"}
    # `from argent_client import protocol as P` imports the package and a module of it.
    extra = set(used) - allowed - {"argent_client"}
    assert not extra, {name: used[name] for name in extra}


def test_daemon_loads_only_protocol_facts_and_paths_at_run_time() -> None:
    import subprocess
    import sys

    code = ("import sys, argentd.daemon, argentd.main; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('argent_client'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # The package binds `classify` eagerly (stdlib + msgspec, see its __init__);
    # `gateway` is the gateway's token file (stdlib only at import);
    # never the clients, anyio or argentctl.
    assert set(out.stdout.split()) - {"argent_client.classify", "argent_client.headers",
                                      "argent_client.gateway"} == {
        "argent_client", "argent_client.exiting", "argent_client.facts",
        "argent_client.oauth_sources", "argent_client.paths", "argent_client.protocol",
        # protocol's two parts (re-exported by it; nothing imports them directly)
        "argent_client.protocol_errors", "argent_client.protocol_status",
    }


def test_exiting_loads_nothing_but_the_standard_library() -> None:
    names = _imports(ROOT / "client" / "argent_client" / "exiting.py")
    assert names <= {"__future__", "collections.abc", "contextlib", "logging", "os", "sys",
                     "typing"}, names


def test_oauth_sources_loads_nothing_but_the_standard_library() -> None:
    names = _imports(ROOT / "client" / "argent_client" / "oauth_sources.py")
    stdlib = {"__future__", "base64", "dataclasses", "datetime", "json", "pathlib", "typing"}
    assert names <= stdlib, names


def test_facts_loads_nothing_but_the_standard_library() -> None:
    names = _imports(ROOT / "client" / "argent_client" / "facts.py")
    stdlib = {"__future__", "collections.abc", "difflib", "hashlib", "json", "os", "re", "stat",
              "typing"}
    assert names <= stdlib, names


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("antrhopic", "anthropic"),
        ("antropic", "anthropic"),
        ("Anthropic ", None),  # itself, once normalised
        ("opnai", "openai"),
        ("openrouer", "openrouter"),
        ("gemni", "google"),  # an alias's typo gives the canonical name
        ("z.ai", None),
        ("mistral", None),
        ("sk-ant-oat01-0123456789abcdef", None),
    ],
)
def test_suggest_provider(name: str, suggestion: str | None) -> None:
    assert facts.suggest_provider(name) == suggestion


def test_did_you_mean() -> None:
    assert facts.did_you_mean("antrhopic") == " (did you mean anthropic?)"
    assert facts.did_you_mean("mistral") == ""


@pytest.mark.parametrize(
    ("key", "index", "shown"),
    [
        ("anthropic:work", 0, "anthropic:work"),
        ("env", 3, "env"),
        ("sk-ant-oat01-" + "a" * 80, 2, "#3"),
        ("x" * 25, 0, "#1"),
        ("anthropic:" + "a" * 65, 4, "#5"),
        ("a\nb", 0, "#1"),
    ],
)
def test_shown_id(key: str, index: int, shown: str) -> None:
    assert facts.shown_id(key, index) == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1,}', "line 1 column 9: a trailing comma before } (JSON allows none): remove it"),
        ("[1,\n]", "line 2 column 1: a trailing comma before ] (JSON allows none): remove it"),
        ('{"a" 1}', "line 1 column 6: expecting ':' delimiter; likely a missing ':' after a key"),
        ('{"a": "x}', "line 1 column 7: unterminated string; likely a missing closing quote"),
        (
            '{"a": "x\n"}',
            "line 1 column 9: invalid control character;"
            " likely a line break or tab inside a string (a missing quote?)",
        ),
        (
            '{"a": ',
            "line 1 column 7: the text ends early; likely a missing } or ], or a cut-off file",
        ),
        (
            "{'a': 1}",
            "line 1 column 2: expecting property name enclosed in double quotes;"
            " likely a key without double quotes (JSON has no single quotes)",
        ),
        (
            '{"a": 1,\n ,"b": 2}',
            "line 2 column 2: a doubled comma (JSON wants one between items): remove one",
        ),
        ("[1,,2]", "line 1 column 4: a doubled comma (JSON wants one between items): remove one"),
        ("   ", "line 1 column 4: the file is empty (an empty set of profiles is {})"),
        ('{"a": 1}', None),
        ("[" * 100_000, "line 1 column 1: nested too deeply"),
    ],
)
def test_json_syntax_error(text: str, message: str | None) -> None:
    assert facts.json_syntax_error(text) == message


def test_json_syntax_error_never_shows_the_text() -> None:
    secret = "sk-ant-oat01-" + "f" * 40
    message = facts.json_syntax_error('{"anthropic:a": {"token": "' + secret + '" "x": 1}}')
    assert message is not None
    assert secret not in message


def test_token_problem() -> None:
    assert facts.token_problem("sk-ant-oat01-ok") is None
    assert facts.token_problem("sk-ant oat01") == (
        "the secret contains whitespace (a copy-paste accident?)"
    )
    assert facts.token_problem("sk-ant-é") == (
        "the secret has characters a token cannot have (only printable ASCII)"
    )
    assert facts.token_problem("") == "the secret is empty"


def test_utf8_error() -> None:
    assert facts.utf8_error(b'{\n "a": "caf\xe9"}') == (
        "not UTF-8 text at line 2 column 11 (byte 12): save the file as UTF-8"
    )
    assert facts.utf8_error(b"{}") is None


def test_read_bounded(tmp_path: Path) -> None:
    from argent_client.facts import ReadFault, read_bounded

    assert read_bounded(tmp_path / "missing", 10) is None
    ok = tmp_path / "ok"
    ok.write_bytes(b"0123456789")
    assert read_bounded(ok, 10) == b"0123456789"
    with pytest.raises(ReadFault) as info:
        read_bounded(ok, 9)
    assert (info.value.stage, info.value.error) == ("size", None)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ReadFault) as info:
        read_bounded(fifo, 10)  # at once: no writer is waited for
    assert info.value.stage == "type"
    with pytest.raises(ReadFault) as info:
        read_bounded(tmp_path, 10)  # a folder opens, then is not a regular file
    assert info.value.stage == "type"
    with pytest.raises(ReadFault) as info:
        read_bounded(ok / "below", 10)
    assert info.value.stage == "open" and isinstance(info.value.error, NotADirectoryError)

    seen: list[int] = []

    def check(st: os.stat_result) -> None:
        seen.append(st.st_size)
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        read_bounded(ok, 10, check=check)
    assert seen == [10]
