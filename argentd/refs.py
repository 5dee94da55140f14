"""Resolving a profile's `token_ref`: `env:NAME`, `file:PATH` or `cmd:COMMAND`.

Theory of operation: a reference is resolved while the profiles file loads,
in a worker thread, so nothing here may block without bound. A `file:` is
opened non-blocking and refused unless it is a regular file (a FIFO or a
device planted at the path would otherwise hang the load), and at most
`MAX_SECRET_BYTES` are read. A `cmd:` runs `/bin/sh -s` with the command on
the shell's standard input, never in argv, so other users cannot read it
from `/proc/*/cmdline` (each program the command starts still shows its own
arguments); its standard input is `/dev/null`, its stderr is dropped, and a
timeout kills its whole process group.

No message raised here ever holds the secret, the command's output or the
command itself (it may embed a secret).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from argent_client.facts import MAX_SECRET_BYTES, TOKEN_RE, ReadFault, read_bounded

_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ProfileFault(Exception):
    """A fault inside one profile: `text` and the path below the profile (`.token`)."""

    def __init__(self, text: str, at: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.at = at


def checked_token(value: str, what: str, at: str) -> str:
    """`value` if it can be a token. Raises `ProfileFault` (without the value) if not."""
    if not value:
        raise ProfileFault(f"{what} is empty", at)
    if len(value) > MAX_SECRET_BYTES:
        raise ProfileFault(f"{what} is longer than {MAX_SECRET_BYTES} characters", at)
    if not TOKEN_RE.fullmatch(value):
        raise ProfileFault(f"{what} holds whitespace or characters a token cannot have", at)
    return value


class Resolver:
    """Resolves references relative to the profiles file's `folder`."""

    def __init__(self, folder: Path, environ: Mapping[str, str], cmd_timeout: float) -> None:
        self.folder = folder
        self.environ = environ
        self.cmd_timeout = cmd_timeout

    def resolve(self, ref: str, at: str = ".token_ref") -> str:
        """The secret `ref` points to. Raises `ProfileFault`."""
        scheme, sep, arg = ref.partition(":")
        arg = arg.strip()
        if not sep or scheme not in ("env", "file", "cmd"):
            raise ProfileFault('token_ref must start with "env:", "file:" or "cmd:"', at)
        if scheme == "env":
            if not _ENV_NAME_RE.fullmatch(arg):
                raise ProfileFault("token_ref env: needs a variable name", at)
            value = self.environ.get(arg, "").strip()
            if not value:
                raise ProfileFault(f"token_ref environment variable {arg} is not set or empty", at)
            return checked_token(value, f"token_ref environment variable {arg}", at)
        if scheme == "file":
            if not arg:
                raise ProfileFault("token_ref file: needs a path", at)
            return self.read_file(Path(arg).expanduser(), at)
        if not arg:
            raise ProfileFault("token_ref cmd: needs a command", at)
        return self.run(arg, at)

    def read_file(self, target: Path, at: str) -> str:
        """The secret in file `target`, minus one trailing newline. Raises `ProfileFault`."""
        target = target if target.is_absolute() else self.folder / target
        what = f"token_ref file {target}"
        try:
            data = read_bounded(target, MAX_SECRET_BYTES)
        except ReadFault as fault:
            why = None if fault.error is None else fault.error.strerror
            raise ProfileFault(what + {
                "open": f" cannot be read: {why}",
                "type": " is not a regular file",
                "read": f" cannot be read: {why}",
                "size": f" is larger than {MAX_SECRET_BYTES} bytes",
            }[fault.stage], at) from None
        if data is None:
            raise ProfileFault(f"{what} does not exist", at)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ProfileFault(f"{what} is not UTF-8 text", at) from None
        text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            raise ProfileFault(f"{what} is empty", at)
        return checked_token(text, f"{what} (one trailing newline is removed)", at)

    def run(self, command: str, at: str) -> str:
        """The stripped stdout of `command` run by `/bin/sh`. Raises `ProfileFault`."""
        # The whole command is one compound command the shell parses before it
        # runs any of it, so its stdin (/dev/null) is never the script itself.
        script = "{\n" + command + "\n} </dev/null\n"
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-s"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # stderr could echo what the command printed; it is dropped.
                stderr=subprocess.DEVNULL,
                cwd=self.folder,
                # Its own process group, so a timeout kills the shell's children
                # too and nobody keeps the pipe open.
                start_new_session=True,
            )
        except OSError as exc:
            raise ProfileFault(f"token_ref command could not start: {exc.strerror}", at) from None
        try:
            out, _ = proc.communicate(script.encode(), timeout=self.cmd_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise ProfileFault(
                f"token_ref command timed out after {self.cmd_timeout:g} s", at
            ) from None
        except BrokenPipeError:
            # The shell exited before it read the whole command; its status says why.
            proc.wait()
            out = b""
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if proc.returncode < 0:
            raise ProfileFault(f"token_ref command was killed by signal {-proc.returncode}", at)
        if proc.returncode != 0:
            raise ProfileFault(f"token_ref command exited with status {proc.returncode}", at)
        try:
            text = out.decode().strip()
        except UnicodeDecodeError:
            raise ProfileFault("token_ref command printed text that is not UTF-8", at) from None
        if not text:
            raise ProfileFault("token_ref command printed nothing", at)
        if not TOKEN_RE.fullmatch(text) or len(text) > MAX_SECRET_BYTES:
            raise ProfileFault(
                "token_ref command output is not a single token (print only the"
                " secret, e.g. end the command with `| head -n 1`)",
                at,
            )
        return text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
