"""Logging for argentd: one line per record on stderr, every line redacted.

`redact` is the one function every log line passes through (the formatter
installed by `setup_logging` applies it to the fully formatted record,
traceback included). It replaces, in this order:

1. each exact secret given to `register_secrets` (the daemon registers every
   loaded profile's secret) by its `fingerprint`;
2. values after a credential-looking key (`token=`, `"api_key": "..."`,
   `x-api-key: ...`, `"access": "..."`) and after `Bearer `;
3. known secret shapes (`sk-...`, `AIza...`);
4. long high-entropy tokens (a run of `[A-Za-z0-9_-]` of 32 characters or
   more that mixes letters and digits), together with any `.`-joined tail
   (JWTs, `id.secret` keys).

Every replacement is `argentd.model.fingerprint` of what it replaces, so a
redacted secret reads like the fingerprint `status` shows for it
(`sk-ant-oat01-…3f9a6b`). Fingerprints, lease ids (`l_` + 16 hex), paths,
timestamps and ordinary words stay readable, and `redact` is idempotent.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Final

from .model import fingerprint

__all__ = ["LEVELS", "PRE_REDACTED", "RedactingFormatter", "redact", "redact_field",
           "register_secrets", "setup_logging"]

LEVELS: Final = ("debug", "info", "warning", "error", "critical")

MIN_REGISTERED: Final = 8
"""Shorter registered values are ignored: they would blank out ordinary words."""

_TOKEN_CHARS: Final = r"A-Za-z0-9_\-"

_KEY_VALUE: Final = re.compile(
    r"(?i)(?<![A-Za-z0-9_\-])"
    r"((?:x-)?(?:goog-)?api[-_]?key|(?:access|refresh|id|auth|session)[-_]?token"
    r"|token|secret|client[-_]?secret|password|passwd|\"access\"|\"refresh\")"
    r"(\"?'?\s*[:=]\s*\"?'?)"
    r"([^\s\"'`,;}\])…]{8,})"
)
_BEARER: Final = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/=\-]{8,})")
_SHAPES: Final = re.compile(
    rf"(?<![A-Za-z0-9])(?:sk-[{_TOKEN_CHARS}]{{16,}}|AIza[{_TOKEN_CHARS}]{{20,}})"
)
_LONG: Final = re.compile(
    rf"(?<![{_TOKEN_CHARS}.])(?=[{_TOKEN_CHARS}.]{{32}})"
    rf"[{_TOKEN_CHARS}]+(?:\.[{_TOKEN_CHARS}]+)*"
)
_FP_PREFIX_MAX: Final = 16
"""A fingerprint is a prefix of at most this many characters, `…`, a hash."""
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_lock = threading.Lock()
_registered: set[str] = set()
_odd: set[str] = set()
"""Registered values the shape patterns would not replace whole."""
_registered_re: re.Pattern[str] | None = None


def register_secrets(values: Iterable[str]) -> None:
    """Remember exact secret values so `redact` replaces them wherever they appear.

    Values shorter than `MIN_REGISTERED` characters are ignored. Registered
    values stay registered for the life of the process (a secret removed
    from the profiles file is still a secret). A value the shape patterns
    already replace whole (`sk-…`, long random tokens: nearly every real
    secret) joins the exact-match list only if the shapes would miss it, so
    10,000 profiles do not compile into one 10,000-way regex.
    """
    global _registered_re
    new = {v for v in values if len(v) >= MIN_REGISTERED} - _registered
    if not new:
        return
    with _lock:
        _registered.update(new)
        _redacted.clear()
        odd = {v for v in new if _by_shape(v) != fingerprint(v)}
        if not odd:
            return
        _odd.update(odd)
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(_odd, key=len, reverse=True)
        _registered_re = re.compile("|".join(re.escape(v) for v in ordered))


_redacted: dict[str, str] = {}
_REDACTED_MAX: Final = 4096
PRE_REDACTED: Final = "argentd_redacted"
"""A record with this attribute true had each of its string arguments passed
through `redact_field`: the formatter does not redact its line again."""


def redact_field(text: str) -> str:
    """`redact` for a short value that repeats (a path, a profile id, a method),
    remembered until the next secret is registered: a log line built only of
    such fields and numbers needs no redaction of its own (`PRE_REDACTED`)."""
    done = _redacted.get(text)
    if done is None:
        done = redact(text)
        if len(_redacted) >= _REDACTED_MAX:
            _redacted.clear()
        _redacted[text] = done
    return done


def _is_high_entropy(segment: str) -> bool:
    """Whether one `.`-free run looks like a random token rather than a word or id."""
    if len(segment) < 32:
        return False
    digits = sum(c.isdigit() for c in segment)
    has_upper = any(c.isupper() for c in segment)
    has_lower = any(c.islower() for c in segment)
    if not digits or not (has_upper or has_lower):
        return False
    # Mixed case with a digit is base64-like; single-case needs several
    # digits (hex), so `a_long_snake_case_name_2` is left alone.
    return (has_upper and has_lower) or digits >= 4


def _is_fingerprint_prefix(match: re.Match[str], group: int) -> bool:
    """Whether group `group` is a fingerprint prefix (`sk-ant-oat01-` of `sk-ant-oat01-…3f9a`)."""
    value = match.group(group)
    return len(value) <= _FP_PREFIX_MAX and match.string.startswith("…", match.end(group))


def _key_value(match: re.Match[str]) -> str:
    if _is_fingerprint_prefix(match, 3):
        return match.group(0)
    return match.group(1) + match.group(2) + fingerprint(match.group(3))


def _bearer(match: re.Match[str]) -> str:
    if _is_fingerprint_prefix(match, 2):
        return match.group(0)
    return match.group(1) + fingerprint(match.group(2))


def _long_token(match: re.Match[str]) -> str:
    text = match.group(0)
    if len(text) < 32 or not any(_is_high_entropy(s) for s in text.split(".")):
        return text
    return fingerprint(text)


def redact(text: str) -> str:
    """`text` with everything that looks like a credential replaced by a fingerprint.

    Never raises; returns `text` itself when nothing matched.
    """
    registered = _registered_re
    if registered is not None:
        text = registered.sub(lambda m: fingerprint(m.group(0)), text)
    return _by_shape(text)


def _by_shape(text: str) -> str:
    """`redact` without the registered values: keys, Bearer, known shapes, long tokens."""
    text = _KEY_VALUE.sub(_key_value, text)
    text = _BEARER.sub(_bearer, text)
    text = _SHAPES.sub(lambda m: fingerprint(m.group(0)), text)
    return _LONG.sub(_long_token, text)


def _escape_controls(text: str) -> str:
    """Newlines and other control characters as visible escapes: one record, one line."""

    def escape(m: re.Match[str]) -> str:
        c = m.group(0)
        if c == "\n":
            return "\\n"
        if c == "\r":
            return "\\r"
        return f"\\x{ord(c):02x}"

    return _CONTROL.sub(escape, text)


class RedactingFormatter(logging.Formatter):
    """Formats a record (with its traceback) as one redacted line.

    With `journald=True` the line starts with a syslog priority (`<3>`) that
    journald turns into the record's level, and carries no timestamp (the
    journal adds its own).
    """

    _PRIORITY: Final = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def __init__(self, *, journald: bool = False) -> None:
        fmt = "%(name)s %(levelname)s %(message)s"
        if not journald:
            fmt = "%(asctime)s " + fmt
        super().__init__(fmt)
        self.journald = journald
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """UTC, ISO 8601, to the second: `2026-11-26T23:00:00Z` (remembered for the
        second: a busy gateway logs hundreds of lines in it)."""
        second = int(record.created)
        if datefmt is None and second == self._second:
            return self._stamp
        stamp = time.strftime(datefmt or "%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        if datefmt is None:
            self._second, self._stamp = second, stamp
        return stamp

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if not getattr(record, PRE_REDACTED, False) or record.exc_info or record.stack_info:
            line = redact(line)
        line = _escape_controls(line)
        if self.journald:
            level = max((lv for lv in self._PRIORITY if lv <= record.levelno), default=0)
            line = f"<{self._PRIORITY.get(level, 7)}>{line}"
        return line


def _stderr_is_journal() -> bool:
    """Whether stderr is connected to journald (systemd sets `JOURNAL_STREAM=dev:ino`)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return bool(ino) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


_HANDLER_MARK: Final = "_argentd_handler"


def setup_logging(level: str) -> None:
    """Send every log record (any logger) to stderr as one redacted line.

    `level` is one of `LEVELS` (any case). Also routes `warnings` and
    uncaught exceptions (main and other threads) through the same handler,
    so no traceback reaches stderr unredacted. Calling it again replaces
    the handler it installed before. Raises `ValueError` for an unknown level.
    """
    name = level.strip().lower()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(journald=_stderr_is_journal()))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(name.upper())
    # No line shows them: not worth a stack walk, a getpid() and a thread lookup per
    # record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    logging.captureWarnings(True)
    log = logging.getLogger("argentd")

    def excepthook(
        tp: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        log.critical("uncaught exception", exc_info=(tp, value, tb))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        thread = args.thread.name if args.thread is not None else "?"
        log.critical(
            "uncaught exception in thread %s",
            thread,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
