"""`argentd`: the command line of the daemon."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

import msgspec
import trio

from argent_client.exiting import exit_after
from argent_client.paths import default_config_path, default_profiles_path, default_socket_path

from . import __version__
from .log import setup_logging

EPILOG = """\
files:
  profiles  %(profiles)s
            ($ARGENT_PROFILES, or `profiles` in argentd.toml)
  config    %(config)s  ($ARGENT_CONFIG; optional)
  socket    %(socket)s  ($ARGENT_SOCKET)

signals:  SIGHUP reloads the files; SIGTERM/SIGINT save state and exit 0.
exit codes: 0 clean stop or --check ok; 1 --check found a problem;
            2 bad command line; 3 another argentd already serves the socket;
            4 cannot bind the socket.
Talk to it with `argentctl` (see `argentctl --help`).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="argentd",
        description=(
            "Per-user credential broker for LLM agents: owns your API keys and "
            "subscription tokens, leases them to agents over a Unix socket and "
            "rotates them on rate limits. Runs in the foreground; logs go to stderr."
        ),
        epilog=EPILOG
        % {
            "profiles": default_profiles_path(),
            "config": default_config_path(),
            "socket": default_socket_path(),
        },
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profiles", type=Path, metavar="PATH",
                        help="the auth-profiles.json to serve (default: see below)")
    parser.add_argument("--socket", type=Path, metavar="PATH",
                        help="Unix socket to listen on (default: see below)")
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="argentd.toml (routes, cooldown policy, lease TTLs); "
                        "must exist when given")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="least severe log record to print (default: info)")
    parser.add_argument("--check", action="store_true",
                        help="validate the profiles file and config, print what was found "
                        "(never a secret) and exit")
    parser.add_argument("--json", action="store_true",
                        help="with --check: print the result as one JSON object")
    parser.add_argument("--version", action="version", version=f"argentd {__version__}")
    return parser


def check(opts: object, *, as_json: bool = False) -> int:
    """`--check`: print what the files hold; 0 when both are clean.

    With `as_json`, one object on stdout: `{ok, profiles_path, config_path,
    profiles: [{id, provider, type, fingerprint, source, disabled, label}],
    routes, error}`.
    """
    from .daemon import Options, load_all, profiles_path

    assert isinstance(opts, Options)
    loaded = load_all(opts, None)
    path = profiles_path(opts, loaded.config)
    if as_json:
        report = {
            "ok": loaded.error is None,
            "profiles_path": str(path),
            "config_path": str(opts.config or default_config_path()),
            "profiles": [
                {"id": p.id, "provider": p.provider, "type": p.type,
                 "fingerprint": p.secret.fingerprint, "source": p.source,
                 "disabled": p.disabled, "label": p.label}
                for p in loaded.profiles.profiles
            ],
            "routes": dict(loaded.config.routes),
            "error": loaded.error,
        }
        sys.stdout.buffer.write(msgspec.json.encode(report) + b"\n")
        return 0 if loaded.error is None else 1
    print(f"profiles file: {path}")
    for p in loaded.profiles.profiles:
        flags = " disabled" if p.disabled else ""
        print(f"  {p.id:32} {p.type:12} {p.secret.fingerprint:24} {p.source}{flags}  {p.label}")
    if not loaded.profiles.profiles:
        print("  (no profiles)")
    for name, targets in loaded.config.routes.items():
        print(f"route {name}: {' -> '.join(targets)}")
    if loaded.error:
        print(f"error: {loaded.error}", file=sys.stderr)
        return 1
    print("ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from .daemon import Daemon, Options
    from .service import AlreadyRunning

    opts = Options(profiles=args.profiles, socket=args.socket, config=args.config)
    if args.json and not args.check:
        build_parser().error("--json goes with --check")
    if args.check:
        return check(opts, as_json=args.json)
    try:
        daemon = Daemon(opts)
        trio.run(daemon.run)
    except AlreadyRunning as exc:
        logging.getLogger("argentd").error("%s", exc)
        return 3
    except OSError as exc:
        logging.getLogger("argentd").error("cannot start: %s", exc)
        return 4
    except KeyboardInterrupt:
        pass
    return 0


def run() -> NoReturn:
    """The `argentd` command: `main()` without the interpreter's teardown at exit
    (see `argent_client.exiting`). The state is on disk by then: a stopping daemon
    exits at once rather than after freeing every module."""
    exit_after(main)


if __name__ == "__main__":
    run()
