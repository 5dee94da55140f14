"""argentctl's `profiles list|add|remove` and `setup`: the profiles file, and which one.

`add` (the setup wizard, `wizard`) and `remove` write the file the running
daemon serves unless a file is named explicitly, and say plainly when the
daemon serves another one; `list` asks the daemon, or reads the file when
the daemon is down. Ids that may be secrets are shown as `#N`.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import struct
import sys
import time
from pathlib import Path

import msgspec

from .commands import CliError, ExitCode, Out, _call, _profiles_path, _socket_path
from .protocol import ArgentError


def cmd_profiles_list(args: argparse.Namespace, out: Out) -> int:
    from .facts import shown_id
    from .profiles_file import read_profiles, summarise
    from .protocol import DaemonUnavailable
    from .render import daemon_profiles_table, file_profiles_table

    if not args.file and not args.profiles:
        try:
            status = _call(args, lambda c: c.status(), name="argentctl profiles")
        except DaemonUnavailable:
            out.note("argentctl: the daemon is not reachable; reading the file", style="dim")
        else:
            if out.json:
                # An id that may be a secret pasted in the wrong place shows as #N.
                shown = [
                    msgspec.structs.replace(p, id=shown_id(p.id, i))
                    for i, p in enumerate(status.profiles)
                ]
                out.print_json({"source": "daemon", "profiles": shown})
            else:
                daemon_profiles_table(status.profiles, time.time()).print(out.console)
            return ExitCode.OK
    path = _profiles_path(args)
    doc = read_profiles(path)
    items = summarise(doc)
    if out.json:
        out.print_json({"source": "file", "path": str(path), "profiles": items})
    elif not doc.exists:
        out.note(f"{path} does not exist: add a profile with `argentctl setup`")
    else:
        file_profiles_table(items).print(out.console)
    return ExitCode.OK


def _ask(prompt: str) -> str:
    from .wizard import WizardAborted

    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise WizardAborted("end of input")
    return line.rstrip("\n")


def _read_secret_stdin() -> str:
    return sys.stdin.read(64 * 1024 + 1)


def _served_path(args: argparse.Namespace) -> Path | None:
    """The profiles file the running daemon serves, or None when it does not answer.

    A daemon started with a relative `--profiles` reports the path as given:
    it is taken from the daemon's working folder, never from ours.
    """
    from .client import Client

    try:
        client = Client(_socket_path(args), timeout=5.0, client_name="argentctl profiles",
                        fallback_env=False)
        try:
            served = Path(client.status().config.profiles_path)
            if served.is_absolute():
                return served
            pid = client.hello().pid
        finally:
            client.close()
    except ArgentError:
        return None
    return _in_working_folder(served, pid, _socket_path(args))


def _in_working_folder(served: Path, pid: int, socket_path: Path) -> Path:
    """`served` taken from the working folder of the daemon, when that can be known.

    Linux only, and only when the kernel's SO_PEERCRED pid of the socket is the
    pid the daemon gave (`hello`): a pid from another pid namespace, or a socket
    systemd listens on, stays unknown. Unknown: `served`, still relative.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(socket_path))
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        peer_pid = struct.unpack("3i", creds)[0]
        if peer_pid == pid:
            return Path(os.readlink(f"/proc/{pid}/cwd")) / served
    except (OSError, AttributeError):
        pass
    return served


def _target_path(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """Where `profiles add|remove` writes, and the file the daemon serves (None: down).

    Without --profiles or $ARGENT_PROFILES it is the daemon's file, so the
    change reaches the daemon that runs.
    """
    served = _served_path(args)
    explicit = bool(getattr(args, "profiles", None) or os.environ.get("ARGENT_PROFILES"))
    if served is not None and not explicit:
        if not served.is_absolute():
            raise CliError(
                f"the running daemon serves {served}, a path relative to its own working"
                " folder, which argentctl cannot see",
                ExitCode.FAILURE,
                fix="name the file in full with --profiles PATH (and start argentd with a"
                    " full --profiles path)",
            )
        return served, served
    return _profiles_path(args), served


def _after_write(out: Out, path: Path, served: Path | None) -> None:
    """Say whether the daemon will see the change: never promise what will not happen."""
    from .profiles_file import real_path

    if served is None:
        out.note("the daemon is not running: start it with `argentd` (or `argentctl service"
                 " install`) to use this file", style="dim")
    elif not served.is_absolute():
        out.note(f"warning: the running daemon serves {served}, relative to its own working"
                 " folder: argentctl cannot tell whether it sees this change", style="bold yellow")
    elif real_path(served) == real_path(path):
        out.note("argentd reloads the file on its own; `argentctl status` shows it in a moment",
                 style="dim")
    else:
        out.note(
            f"warning: the running daemon serves {served}, not {path}: it will not see this"
            f" change. Write to its file (--profiles {served}) or restart argentd with"
            f" --profiles {path}",
            style="bold yellow",
        )


def cmd_profiles_add(args: argparse.Namespace, out: Out) -> int:
    from .wizard import SetupOptions, WizardIO, run_setup

    path, served = _target_path(args)
    opts = SetupOptions(
        path=path,
        provider=args.provider,
        type=args.type,
        name=args.name,
        label=args.label,
        priority=args.priority,
        secret_stdin=args.secret_stdin,
        force=args.force,
        replace=args.replace,
    )
    interactive = sys.stdin.isatty() and not args.secret_stdin
    io = WizardIO(
        interactive=interactive,
        ask=_ask,
        ask_secret=getpass.getpass,
        read_stdin=_read_secret_stdin,
        err=sys.stderr,
    )
    result = run_setup(opts, io)
    if out.json:
        out.print_json(result)
    else:
        verb = "replaced" if result.replaced else "added"
        out.line(f"{verb} {result.id} ({result.fingerprint}) in {result.path}")
    _after_write(out, path, served)
    return ExitCode.OK


def cmd_profiles_remove(args: argparse.Namespace, out: Out) -> int:
    from .profiles_file import remove_profile

    path, served = _target_path(args)
    remove_profile(path, args.profile)
    if out.json:
        out.print_json({"removed": args.profile, "path": str(path)})
    else:
        out.line(f"removed {args.profile} from {path}")
    _after_write(out, path, served)
    return ExitCode.OK
