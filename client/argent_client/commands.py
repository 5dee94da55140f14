"""argentctl's command handlers, its exit codes and its output helpers.

Each `cmd_*` takes the parsed arguments and an `Out`, does one command and
returns an `ExitCode` (or, for `exec`, the child's status). Daemon errors
are raised as `ArgentError` and mapped to exit codes by `cli.main`. Every
daemon command uses `Client` with the environment fallback off: the CLI
works with the daemon or fails clearly. `profiles list|add|remove`
live in `profile_commands`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console
from rich.text import Text

from . import paths
from .protocol import ArgentError

if TYPE_CHECKING:
    from .client import Client


class ExitCode(IntEnum):
    """argentctl's exit codes: part of the contract, never renumber."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    UNAVAILABLE = 3
    NO_PROFILE = 4
    NOT_FOUND = 5
    DOCTOR = 6
    REFUSED = 7
    DENIED = 8
    INTERRUPTED = 130


BY_ERROR_CODE: dict[str, ExitCode] = {
    "daemon_unavailable": ExitCode.UNAVAILABLE,
    "no_profile_available": ExitCode.NO_PROFILE,
    "unknown_provider": ExitCode.NOT_FOUND,
    "unknown_route": ExitCode.NOT_FOUND,
    "unknown_profile": ExitCode.NOT_FOUND,
    "lease_not_found": ExitCode.NOT_FOUND,
    "invalid_params": ExitCode.USAGE,
    "method_not_found": ExitCode.USAGE,
    "permission_denied": ExitCode.DENIED,
}

class CliError(Exception):
    """A failure the CLI reports with its own exit code (not a daemon error)."""

    def __init__(self, message: str, code: ExitCode, fix: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.fix = fix



# ---------------------------------------------------------------- output


class Out:
    """Where a command writes: rich consoles for humans, plain JSON for scripts."""

    def __init__(self, json_output: bool) -> None:
        self.json = json_output
        # Piped output is for grep and scripts: do not wrap table rows at 80
        # columns (tables are only as wide as their content anyway).
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
        self.console = Console(highlight=False, width=width)
        self.err = Console(stderr=True, highlight=False)

    def print_json(self, obj: Any) -> None:
        data = msgspec.json.format(msgspec.json.encode(obj), indent=2)
        sys.stdout.write(data.decode() + "\n")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        """A plain line on stdout (no markup, no wrapping: safe to copy and parse)."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def note(self, text: str, style: str = "") -> None:
        """A human message on stderr."""
        self.err.print(Text(text, style=style), soft_wrap=True)


def _client(args: argparse.Namespace, *, timeout: float | None = 30.0, name: str) -> Client:
    from .client import Client

    return Client(_socket_path(args), timeout=timeout, client_name=name, fallback_env=False)


def _socket_path(args: argparse.Namespace) -> Path:
    socket = getattr(args, "socket", None)
    if socket:
        return Path(socket).expanduser()
    return paths.default_socket_path()


def _profiles_path(args: argparse.Namespace) -> Path:
    path = getattr(args, "profiles", None)
    if path:
        return Path(path).expanduser()
    return paths.default_profiles_path()


def _call(args: argparse.Namespace, fn: Callable[[Client], Any], *, name: str) -> Any:
    client = _client(args, name=name)
    try:
        return fn(client)
    finally:
        client.close()


# ---------------------------------------------------------------- daemon commands


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    from .facts import normalise_provider
    from .render import status_tables

    status = _call(args, lambda c: c.status(), name="argentctl status")
    if out.json:
        out.print_json(status)
    else:
        provider = normalise_provider(args.provider) if args.provider else None
        status_tables(status, time.time(), out.console, provider=provider, show_all=args.all)
    # A broken file is a failure even though the daemon answered.
    return ExitCode.REFUSED if status.config.error else ExitCode.OK


def cmd_lease(args: argparse.Namespace, out: Out) -> int:
    from .execute import shell_exports
    from .render import lease_line

    _need_target(args)
    client = _client(args, name=f"argentctl lease[{os.getpid()}]")
    try:
        lease = client.acquire(
            args.provider,
            route=args.route,
            model=args.model,
            session=args.session,
            ttl=args.ttl,
            wait=args.wait,
            detached=True,
        )
    finally:
        client.close()
    if out.json:
        out.print_json(lease)  # the one place a secret is printed: asked for explicitly
        return ExitCode.OK
    out.note(f"argentctl: {lease_line(lease, time.time())}")
    if args.env:
        sys.stdout.write(shell_exports(lease))
        sys.stdout.flush()
    else:
        out.line(lease.lease_id)
        out.note(f"release it with: argentctl release {lease.lease_id}", style="dim")
    return ExitCode.OK


def _need_target(args: argparse.Namespace) -> None:
    if not args.provider and not args.route:
        raise CliError("give a PROVIDER or --route ROUTE", ExitCode.USAGE)
    if args.provider and args.route:
        raise CliError("give a PROVIDER or --route ROUTE, not both", ExitCode.USAGE)


def cmd_release(args: argparse.Namespace, out: Out) -> int:
    result = _call(args, lambda c: c.release(args.lease_id), name="argentctl release")
    if out.json:
        out.print_json(result)
    else:
        out.line(f"released {args.lease_id}")
    return ExitCode.OK


def cmd_report(args: argparse.Namespace, out: Out) -> int:
    from .render import clock, duration

    if bool(args.lease_id) == bool(args.profile):
        raise CliError("give a LEASE_ID or --profile PROFILE (one of them)", ExitCode.USAGE)
    result = _call(
        args,
        lambda c: c.report_failure(
            args.lease_id,
            kind=args.kind,
            profile=args.profile,
            retry_after=args.retry_after,
            status=args.status,
            message=args.message,
            model=args.model,
            failover=args.failover,
        ),
        name="argentctl report",
    )
    if out.json:
        out.print_json(result)
        return ExitCode.OK
    who = args.profile or f"lease {args.lease_id}"
    text = f"reported {args.kind} for {who}: profile is {result.profile_state}"
    if result.cooldown_until is not None:
        left = duration(result.cooldown_until - time.time())
        text += f" until {clock(result.cooldown_until)} ({left})"
    out.line(text)
    if result.next is not None:
        out.line(f"next lease {result.next.lease_id} on {result.next.profile}")
        out.note(f"release it with: argentctl release {result.next.lease_id}", style="dim")
    return ExitCode.OK


def cmd_profile_state(args: argparse.Namespace, out: Out) -> int:
    verb: str = args.command
    result = _call(args, lambda c: getattr(c, verb)(args.profile), name=f"argentctl {verb}")
    if out.json:
        out.print_json(result)
    else:
        out.line(f"{args.profile}: {result.profile_state}")
    return ExitCode.OK


def cmd_reload(args: argparse.Namespace, out: Out) -> int:
    result = _call(args, lambda c: c.reload(), name="argentctl reload")
    if out.json:
        out.print_json(result)
    else:
        out.line(f"reloaded: {result.profiles} profile(s)")
    if result.error:
        if not out.json:
            lines = result.error.splitlines()
            if len(lines) == 1:
                out.note(f"config error: {lines[0]}", style="bold red")
            else:
                out.note(f"config errors ({len(lines)}):", style="bold red")
                for line in lines:
                    out.note(f"  {line}", style="red")
        return ExitCode.REFUSED
    return ExitCode.OK


def cmd_metrics(args: argparse.Namespace, out: Out) -> int:
    result = _call(args, lambda c: c.metrics(), name="argentctl metrics")
    if out.json:
        out.print_json(result)
    else:
        text: str = result.text
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        sys.stdout.flush()
    return ExitCode.OK


def cmd_watch(args: argparse.Namespace, out: Out) -> int:
    from .render import event_line

    client = _client(args, name="argentctl watch")
    try:
        with client.subscribe() as events:
            if not out.json:
                out.note(f"watching {_socket_path(args)} (Ctrl-C to stop)", style="dim")
            for event in events:
                if out.json:
                    out.line(msgspec.json.encode(event).decode())
                else:
                    out.line(event_line(event))
    except KeyboardInterrupt:
        return ExitCode.OK
    finally:
        client.close()
    raise CliError("the daemon closed the connection", ExitCode.UNAVAILABLE)


# ---------------------------------------------------------------- exec


def cmd_exec(args: argparse.Namespace, out: Out) -> int:
    from .execute import Renewer, child_env, run_child
    from .render import lease_line

    command: list[str] = args.cmd
    stray: list[str] = getattr(args, "stray", [])
    if not command and args.route and args.provider:
        stray = [args.provider, *stray]  # `exec --route R env`: env is not a provider
        args.provider = None
    if not command and stray:
        target = f"--route {args.route}" if args.route else args.provider
        raise CliError(
            f"put the command after --: argentctl exec {target} -- {shlex.join(stray)}",
            ExitCode.USAGE,
        )
    _need_target(args)
    if not command:
        raise CliError(
            "no command: put it after --, e.g. argentctl exec anthropic -- claude",
            ExitCode.USAGE,
        )
    if getattr(args, "gateway", False):
        from .gateway_cmd import exec_gateway

        return exec_gateway(args, out)
    client = _client(args, name=f"argentctl exec {Path(command[0]).name}[{os.getpid()}]")
    try:
        lease = client.acquire(
            args.provider,
            route=args.route,
            model=args.model,
            session=args.session,
            ttl=args.ttl,
            wait=args.wait,
            detached=False,  # bound to this connection: dies with us if we are killed
        )
        if args.verbose:
            out.note(f"argentctl: {lease_line(lease, time.time())}")
        renewer = Renewer(client.renew, lease, args.ttl, sys.stderr)
        renewer.start()
        try:
            rc = run_child(command, child_env(os.environ, lease))
        finally:
            renewer.stop()
            renewer.join()
        try:
            # Only a clean exit says the credential worked; a failed or killed
            # child may have failed on it (e.g. Claude Code after eleven 429s).
            client.release(lease.lease_id, success=rc == 0)
        except ArgentError as exc:
            out.note(f"argentctl: could not release {lease.lease_id}: {exc.code}: {exc}")
    finally:
        client.close()
    if out.json:
        summary = {
            "lease_id": lease.lease_id,
            "profile": lease.profile,
            "provider": lease.provider,
            "type": lease.type,
            "model": lease.model,
            "exit_code": rc,
        }
        sys.stderr.write(msgspec.json.encode(summary).decode() + "\n")
    return rc


# ---------------------------------------------------------------- files


def cmd_doctor(args: argparse.Namespace, out: Out) -> int:
    from .doctor import failed, render, run_doctor

    # Without --profiles, doctor checks the file the daemon reports it reads.
    profiles = Path(args.profiles).expanduser() if args.profiles else None
    checks = run_doctor(
        profiles_path=profiles,
        socket_path=_socket_path(args),
        fallback_profiles_path=_profiles_path(args),
    )
    if out.json:
        out.print_json(checks)
    else:
        render(checks, out.console)
    return ExitCode.DOCTOR if failed(checks) else ExitCode.OK


def cmd_service(args: argparse.Namespace, out: Out) -> int:
    try:
        from .service import service_main
    except ImportError as exc:
        raise CliError(
            f"service management is not available in this install: {exc}", ExitCode.FAILURE
        ) from None
    rc: int = service_main(args.action, dry_run=args.dry_run, json_output=out.json)
    return rc


