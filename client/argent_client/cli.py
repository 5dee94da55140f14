"""argentctl: the command line for argentd (entry point `main`).

The parser (`build_parser`) holds every command, its help and examples;
the handlers live in `commands`. `--json` prints the daemon method's result
object; exit codes are stable (`commands.ExitCode`, listed in `--help`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .commands import (
    BY_ERROR_CODE,
    CliError,
    ExitCode,
    Out,
    cmd_doctor,
    cmd_exec,
    cmd_lease,
    cmd_metrics,
    cmd_profile_state,
    cmd_release,
    cmd_reload,
    cmd_report,
    cmd_service,
    cmd_status,
    cmd_watch,
    env_fix,
    stuck_fix,
)
from .exiting import exit_after
from .profile_commands import cmd_profiles_add, cmd_profiles_list, cmd_profiles_remove
from .protocol import FAILURE_KINDS, PROTOCOL_VERSION, ArgentError

__all__ = ["ExitCode", "build_parser", "main", "run", "split_exec_argv"]

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    failure: an unexpected error (the message says which)
  2    usage: bad arguments, or parameters the daemon rejected
  3    the daemon is not reachable (start it: `argentd`, or `argentctl service install`)
  4    no profile available: every matching profile is cooling down, disabled or busy
  5    not found: unknown provider, route, profile or lease id
  6    doctor found a problem
  7    refused: the profiles file cannot be parsed, the id exists (use --replace),
       the secret was rejected, or `status`/`reload` reported a config error
  8    permission denied by the daemon
  130  interrupted (Ctrl-C)
  exec exits with the command's own status (128+N when killed by signal N,
  127 not found, 126 not executable), or 3/4/5 when no lease could be taken."""

MAIN_EPILOG = f"""\
examples:
  argentctl setup                                # add a profile (asks, hides the secret)
  argentctl status                               # profiles, cooldowns, leases
  argentctl exec anthropic -- claude             # run a tool with a leased secret
  eval "$(argentctl lease anthropic --env)"      # lease into a shell script's env
  argentctl release "$ARGENT_LEASE_ID"
  argentctl report "$ARGENT_LEASE_ID" --kind rate_limit --retry-after 300
  argentctl doctor                               # what is wrong, and the fix

environment:
  ARGENT_SOCKET    the daemon's socket (default: `socket` in argentd.toml, else
                   $XDG_RUNTIME_DIR/argentos/argentd.sock on Linux)
  ARGENT_PROFILES  the profiles file (default: `profiles` in argentd.toml, else
                   ~/.argentos/agents/main/agent/auth-profiles.json)
  ARGENT_CONFIG    argentd.toml (default: ~/.config/argentos/argentd.toml on Linux)

{EXIT_CODES_HELP}"""



def split_exec_argv(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Split `argentctl … exec … -- CMD…` at its `--`: (our arguments, CMD or None).

    argparse cannot mix an optional positional with a trailing command, so
    everything after the first `--` following `exec` is the command verbatim.
    """
    argv = list(argv)
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("--socket", "--profiles"):
            i += 2
            continue
        if tok.startswith("-"):
            i += 1
            continue
        if tok != "exec":
            return argv, None
        rest = argv[i + 1 :]
        if "--" not in rest:
            return argv, None
        j = rest.index("--")
        return argv[: i + 1] + rest[:j], rest[j + 1 :]
    return argv, None



# ---------------------------------------------------------------- parser


class UsageError(Exception):
    """A command line argparse refused; `parser` is the (sub)parser that saw it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so `--json` gets JSON."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    """The whole argentctl command line (exposed for tests and docs)."""
    # Options accepted before or after the command; SUPPRESS keeps a
    # subcommand's default from overwriting a value given before it.
    common = _Parser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS,
        help="print the result object as JSON on stdout",
    )
    common.add_argument(
        "--socket", metavar="PATH", default=argparse.SUPPRESS,
        help="the daemon's socket (default: $ARGENT_SOCKET or the per-user runtime dir)",
    )
    files = _Parser(add_help=False)
    files.add_argument(
        "--profiles", metavar="PATH", default=None,
        help="the profiles file (default: $ARGENT_PROFILES or "
        "~/.argentos/agents/main/agent/auth-profiles.json)",
    )

    parser = _Parser(
        prog="argentctl",
        description="Control argentd, the per-user daemon that leases LLM credentials "
        "(API keys, subscription tokens) to agents and rotates them on rate limits.",
        epilog=MAIN_EPILOG,
        formatter_class=_formatter,
        parents=[common],
    )
    parser.add_argument(
        "--version", action="version",
        version=f"argentctl {__version__} (protocol {PROTOCOL_VERSION})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, epilog: str = "", **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, description=help, epilog=(epilog + "\n\n" + EXIT_CODES_HELP).strip(),
            formatter_class=_formatter, parents=[common, *kw.pop("parents", [])], **kw,
        )
        return p

    p = add("status", "show profiles (state, cooldown left, leases, errors, last use) and leases",
            "A config error (a broken or refused profiles file, a skipped profile) is\n"
            "printed first and makes the exit code 7. Above 50 profiles, one summary\n"
            "line per provider is printed instead of every profile.\n\n"
            "examples:\n  argentctl status\n  argentctl status --provider anthropic\n"
            "  argentctl status --json | jq '.profiles[].state'")
    p.add_argument("--provider", metavar="NAME", help="only this provider's profiles and leases")
    p.add_argument("--all", action="store_true",
                   help="list every profile, however many (default: a summary above 50)")
    p.set_defaults(func=cmd_status)

    def target(p: argparse.ArgumentParser) -> None:
        p.add_argument("provider", nargs="?", metavar="PROVIDER",
                       help="provider to lease from: anthropic, openai, openrouter, minimax, ...")
        p.add_argument("--route", metavar="ROUTE", help="a route from argentd.toml instead")
        p.add_argument("--model", metavar="MODEL", help="the model you will call")
        p.add_argument("--session", metavar="ID",
                       help="session id: the same session gets the same profile (prompt caches)")
        p.add_argument("--ttl", type=float, metavar="SECONDS",
                       help="lease lifetime (default: the daemon's, 600 s)")
        p.add_argument("--wait", type=float, metavar="SECONDS",
                       help="wait up to this long for a profile to become ready (default 0)")

    p = add(
        "lease", "take a detached lease: it lives until `release` or its TTL",
        "By default prints the lease id on stdout (the secret is not shown);\n"
        "--env prints shell exports with the secret, --json the whole lease.\n"
        "The lease is detached: it outlives argentctl, and the profile counts as\n"
        "in use until you release it or its TTL (default 600 s) runs out.\n\n"
        "examples:\n"
        '  eval "$(argentctl lease anthropic --env --ttl 1800)"\n'
        '  curl -H "x-api-key: $ANTHROPIC_API_KEY" ...\n'
        '  argentctl release "$ARGENT_LEASE_ID"\n\n'
        "  id=$(argentctl lease --route default --wait 60)\n"
        "  argentctl lease openrouter --json | jq -r .token",
    )
    target(p)
    p.add_argument("--env", action="store_true",
                   help="print `export VAR=...` lines (secret included) for eval; the lease "
                   "stays out (detached) until `argentctl release \"$ARGENT_LEASE_ID\"` or its "
                   "TTL (default 600 s) ends, whatever the shell does")
    p.set_defaults(func=cmd_lease)

    p = add("release", "end a lease", "example:\n  argentctl release \"$ARGENT_LEASE_ID\"")
    p.add_argument("lease_id", metavar="LEASE_ID")
    p.set_defaults(func=cmd_release)

    p = add(
        "report", "report a failure of a lease (or profile): cooldowns, rotation",
        "kinds: rate_limit (429), quota (402, credit/weekly cap), auth (401/403),\n"
        "overloaded (529/503), timeout (408), server_error (5xx)\n\n"
        "examples:\n"
        '  argentctl report "$ARGENT_LEASE_ID" --kind rate_limit --retry-after 300\n'
        "  argentctl report --profile anthropic:work --kind quota",
    )
    p.add_argument("lease_id", nargs="?", metavar="LEASE_ID")
    p.add_argument("--kind", required=True, choices=FAILURE_KINDS)
    p.add_argument("--profile", metavar="PROFILE", help="report against a profile, no lease")
    p.add_argument("--retry-after", type=float, metavar="SECONDS",
                   help="what the provider said (Retry-After): the cooldown length")
    p.add_argument("--status", type=int, metavar="HTTP", help="the HTTP status seen")
    p.add_argument("--message", metavar="TEXT", help="a short note (never put a secret here)")
    p.add_argument("--model", metavar="MODEL", help="the model that failed (model cooldowns)")
    p.add_argument("--failover", action="store_true",
                   help="ask for the next lease at once (printed; release it when done)")
    p.set_defaults(func=cmd_report)

    for verb, text in (
        ("reset", "clear a profile's cooldown, error counts and invalid mark"),
        ("disable", "stop leasing a profile until `enable`"),
        ("enable", "lease a disabled profile again"),
    ):
        p = add(verb, text, f"example:\n  argentctl {verb} anthropic:work")
        p.add_argument("profile", metavar="PROFILE", help="profile id, e.g. anthropic:work")
        p.set_defaults(func=cmd_profile_state)

    p = add("reload", "reload the profiles file and argentd.toml now "
            "(the daemon also does it on change)")
    p.set_defaults(func=cmd_reload)
    p = add("metrics", "print the daemon's Prometheus metrics")
    p.set_defaults(func=cmd_metrics)
    p = add("watch", "print live events (leases, failures, cooldowns, reloads) until Ctrl-C",
            "examples:\n  argentctl watch\n"
            "  argentctl watch --json | jq -c 'select(.type==\"cooldown_start\")'")
    p.set_defaults(func=cmd_watch)

    p = add(
        "exec", "run a command with a leased secret in its environment",
        "The secret goes where the provider's tools look: anthropic api-key ->\n"
        "ANTHROPIC_API_KEY; anthropic setup-token or oauth -> CLAUDE_CODE_OAUTH_TOKEN;\n"
        "openai OPENAI_API_KEY; openrouter OPENROUTER_API_KEY; minimax MINIMAX_API_KEY;\n"
        "zai ZAI_API_KEY; google GEMINI_API_KEY and GOOGLE_API_KEY; plus ARGENT_LEASE_ID\n"
        "and ARGENT_PROFILE. The provider's other credential variables (for anthropic\n"
        "also ANTHROPIC_AUTH_TOKEN) are removed. The lease is renewed while the command\n"
        "runs and released when it exits, as a success only if it exited 0; argentctl\n"
        "exits with the command's status. --json prints a summary on stderr at the end.\n\n"
        "examples:\n"
        "  argentctl exec anthropic -- claude -p 'hello'\n"
        "  argentctl exec --route default --wait 120 -- ./agent.py",
        usage="argentctl exec [options] (PROVIDER | --route ROUTE) -- COMMAND [ARG ...]",
    )
    target(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say which profile was leased (on stderr)")
    p.add_argument("--gateway", action="store_true",
                   help="point the command at argentd's HTTP gateway instead (base URL +"
                        " local token): it rotates on every request (docs/gateway.md)")
    # Words given without `--` land here, so the error can say where they go.
    p.add_argument("stray", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_exec, cmd=[])

    p = add(
        "doctor", "check the profiles file, config, socket and daemon; print each fix",
        "checks: profiles file exists, parses, has mode 0600, is not in a git work\n"
        "tree that would commit it; argentd.toml parses; the socket answers; the\n"
        "daemon's version; the daemon loaded its config without error.",
        parents=[files],
    )
    p.set_defaults(func=cmd_doctor)

    add_help = (
        "add a profile (the setup wizard): asks for provider, type, name, label and\n"
        "the secret (hidden input, checked against the provider's token shape).\n"
        "Non-interactive: give the flags and pipe the secret on stdin. The file is\n"
        "merged (never clobbered) and written atomically with mode 0600.\n\n"
        "examples:\n"
        "  argentctl setup\n"
        "  argentctl profiles add --provider anthropic --type setup-token \\\n"
        "      --name work --label 'Work Max' < token.txt\n"
        "  pass show openrouter | argentctl profiles add --provider openrouter --name main"
    )

    def wizard_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--provider", metavar="NAME", help="anthropic, openai, openrouter, ...")
        p.add_argument("--type", metavar="TYPE", help="setup-token or api-key "
                       "(default: guessed from the secret)")
        p.add_argument("--name", metavar="NAME", help="the id becomes PROVIDER:NAME")
        p.add_argument("--label", metavar="TEXT", help="a human label (default: the name)")
        p.add_argument("--priority", type=int, metavar="N", help="lower is tried first")
        p.add_argument("--secret-stdin", action="store_true",
                       help="read the secret from stdin (automatic when stdin is not a tty)")
        p.add_argument("--force", action="store_true",
                       help="save a secret that does not look like the provider's")
        p.add_argument("--replace", action="store_true", help="replace an existing id")
        p.set_defaults(func=cmd_profiles_add)

    p = add("setup", "add a profile (the setup wizard; same as `profiles add`)",
            add_help, parents=[files])
    wizard_flags(p)

    p = add("profiles", "list, add or remove profiles in the profiles file")
    psub = p.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)

    def padd(name: str, help: str, epilog: str = "") -> argparse.ArgumentParser:
        return psub.add_parser(
            name, help=help, description=help,
            epilog=(epilog + "\n\n" + EXIT_CODES_HELP).strip(),
            formatter_class=_formatter, parents=[common, files],
        )

    q = padd("list", "list profiles with fingerprints (never secrets)",
             "Asks the daemon (live state); reads the file when the daemon is down,\n"
             "with --file, or with --profiles.")
    q.add_argument("--file", action="store_true", help="read the file, not the daemon")
    q.set_defaults(func=cmd_profiles_list)
    q = padd("add", "add a profile (the setup wizard)", add_help)
    wizard_flags(q)
    q = padd("remove", "remove a profile from the file",
             "example:\n  argentctl profiles remove anthropic:old")
    q.add_argument("profile", metavar="PROFILE")
    q.set_defaults(func=cmd_profiles_remove)
    q = padd("import", "import a tool's OAuth login (Claude Code, Codex, Gemini CLI): "
             "argentd then refreshes it and keeps the tool's file in step",
             "reads ~/.claude/.credentials.json (claude-code), ~/.codex/auth.json (codex)\n"
             "or ~/.gemini/oauth_creds.json (gemini), or PATH; the id is PROVIDER:NAME\n"
             "(anthropic, openai-codex, google; NAME defaults to the format). Importing\n"
             "again from the same file (after logging in again) replaces the profile.\n\n"
             "examples:\n  argentctl profiles import claude-code\n"
             "  argentctl profiles import codex ~/work/.codex/auth.json --name work")
    q.add_argument("format", choices=("claude-code", "codex", "gemini"), metavar="FORMAT",
                   help="claude-code, codex or gemini")
    q.add_argument("path", nargs="?", metavar="PATH", help="the tool's login file")
    q.add_argument("--name", metavar="NAME", help="the id becomes PROVIDER:NAME")
    q.add_argument("--label", metavar="TEXT", help="a human label")
    q.add_argument("--replace", action="store_true", help="replace an existing id")
    q.set_defaults(func=_profiles_import)

    p = add("service", "install, uninstall or inspect argentd as a user service "
            "(systemd user units or a LaunchAgent)",
            "examples:\n  argentctl service install --dry-run\n  argentctl service install\n"
            "  argentctl service status")
    p.add_argument("action", choices=("install", "uninstall", "status"))
    p.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
    p.set_defaults(func=cmd_service)
    from .gateway_cmd import add_parser as add_gateway_parser

    add_gateway_parser(add)
    return parser


def _profiles_import(args: argparse.Namespace, out: Out) -> int:
    from .importers import cmd_profiles_import

    return cmd_profiles_import(args, out)


# ---------------------------------------------------------------- main


def _fail(out: Out, message: str, code: ExitCode, *, error_code: str, fix: str | None = None,
          data: dict[str, Any] | None = None) -> int:
    if out.json:
        err: dict[str, Any] = {"code": error_code, "message": message}
        if data:
            err["data"] = data
        if fix:
            err["fix"] = fix
        out.print_json({"error": err, "exit_code": int(code)})
    else:
        out.note(f"argentctl: error: {message}", style="bold red")
        if fix:
            out.note(f"fix: {fix}")
    return int(code)


def _argent_error(
    out: Out, exc: ArgentError, waited: float | None = None, provider: str | None = None
) -> int:
    from .facts import did_you_mean
    from .render import duration

    code = BY_ERROR_CODE.get(exc.code, ExitCode.FAILURE)
    message = f"{exc.code}: {exc.message}"
    if exc.code == "unknown_provider" and provider and "did you mean" not in message:
        message += did_you_mean(provider)
    retry = exc.data.get("retry_after")
    if exc.code == "no_profile_available":
        # The daemon says when in seconds; say it once, readably, and only
        # suggest --wait to someone who did not wait.
        message = re.sub(r"; one may be in \d+s$", "", message)
        if waited:
            message += f" after waiting {waited:g}s"
        if isinstance(retry, int | float):
            message += f"; one may be ready in {duration(retry)}"
            if not waited:
                message += " (or use --wait SECONDS)"
    fix = None
    if code == ExitCode.UNAVAILABLE and exc.data.get("reason") == "untrusted":
        # The client refused the socket: its message already says how to fix it.
        message, _, fix_text = message.partition(" Fix: ")
        fix = fix_text or None
    elif code == ExitCode.UNAVAILABLE:
        from .doctor import START_FIX

        fix = START_FIX
    elif exc.code == "unknown_provider" and provider:
        fix = env_fix(provider)
    elif exc.code == "no_profile_available" and not isinstance(retry, int | float):
        fix = stuck_fix(exc.data.get("profiles"))
    return _fail(out, message, code, error_code=exc.code, fix=fix, data=exc.data or None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run argentctl with `argv` (default `sys.argv[1:]`); returns the exit code."""
    from .profiles_file import ProfileExists, ProfileNotFound, ProfilesFileError
    from .wizard import WizardAborted

    raw = list(sys.argv[1:] if argv is None else argv)
    ours, command = split_exec_argv(raw)
    parser = build_parser()
    try:
        args = parser.parse_args(ours)
    except UsageError as exc:
        if str(exc).startswith("unrecognized arguments") and "exec" in ours:
            exc = UsageError(exc.parser, f"{exc}: put the command after --, e.g."
                             " argentctl exec anthropic -- env -u X")
        if "--json" in ours:
            return _fail(Out(True), str(exc), ExitCode.USAGE, error_code="usage",
                         fix=f"see `{exc.parser.prog} --help`")
        exc.parser.print_usage(sys.stderr)
        sys.stderr.write(f"{exc.parser.prog}: error: {exc}\n")
        return ExitCode.USAGE
    if command is not None:
        args.cmd = command
    out = Out(bool(getattr(args, "json", False)))
    func: Callable[[argparse.Namespace, Out], int] = args.func
    try:
        return int(func(args, out))
    except CliError as exc:
        return _fail(out, str(exc), exc.code, error_code="cli", fix=exc.fix)
    except ArgentError as exc:
        return _argent_error(out, exc, getattr(args, "wait", None),
                             getattr(args, "provider", None))
    except ProfileExists as exc:
        return _fail(out, str(exc), ExitCode.REFUSED,
                     error_code="profile_exists")
    except ProfileNotFound as exc:
        return _fail(out, str(exc), ExitCode.NOT_FOUND, error_code="unknown_profile")
    except ProfilesFileError as exc:
        return _fail(out, f"{exc}; the file was not changed", ExitCode.REFUSED,
                     error_code="profiles_file",
                     fix="fix the file by hand, or run `argentctl doctor`")
    except WizardAborted as exc:
        return _fail(out, str(exc), ExitCode.REFUSED, error_code="aborted")
    except ValueError as exc:
        return _fail(out, str(exc), ExitCode.USAGE, error_code="usage")
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `argentctl status | head`: the reader left; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    except OSError as exc:
        return _fail(out, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                     ExitCode.FAILURE, error_code="os_error")


def run() -> NoReturn:
    """The `argentctl` command: `main()` without the interpreter's teardown at exit,
    which would cost tens of milliseconds of CPU per command (see `exiting`)."""
    exit_after(main)


if __name__ == "__main__":  # pragma: no cover
    run()

