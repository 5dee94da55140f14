"""`argentctl service install|uninstall|status`: argentd as a systemd user service or LaunchAgent.

Theory of operation: the unit texts are templates in `units`. `Host.detect()`
(`machine`) gathers every fact of the machine the plan depends on (platform, home, uid,
where `argentd` is, whether user namespaces work, whether a user bus
answers); `plan_install` / `plan_uninstall` turn a `Host` into an ordered
list of `Step`s (`steps`) without touching anything; `execute` carries the
steps out with an injectable command runner, and `--dry-run` prints them
instead. `status` asks the service manager and then whether the socket
answers `hello`.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TextIO, TypeAlias

import msgspec

from .machine import (
    Host,
    Platform,
    ServiceError,
    current_platform,
    find_argentd,
    user_bus_missing,
    userns_blocked,
)
from .protocol import decode_incoming, decode_result, encode_request
from .steps import (
    Completed,
    MakeDir,
    RemoveDir,
    RemoveFile,
    Run,
    Runner,
    Step,
    StepResult,
    WriteFile,
    describe,
    execute,
    step_to_json,
    step_to_shell,
    subprocess_runner,
)
from .units import (
    LABEL,
    LAUNCHD_TEMPLATE,
    REPO_EXEC_START,
    SANDBOX_DROPIN,
    SERVICE_UNIT,
    SOCKET_UNIT,
    SYSTEMD_SANDBOX,
    SYSTEMD_SOCKET,
    render_launchd_plist,
    render_systemd_service,
    render_systemd_units,
    systemd_quote,
)

__all__ = [
    "LABEL",
    "LAUNCHD_TEMPLATE",
    "REPO_EXEC_START",
    "SYSTEMD_SANDBOX",
    "SYSTEMD_SOCKET",
    "Completed",
    "Host",
    "MakeDir",
    "Platform",
    "RemoveDir",
    "RemoveFile",
    "Run",
    "ServiceError",
    "Step",
    "StepResult",
    "WriteFile",
    "current_platform",
    "execute",
    "find_argentd",
    "plan_install",
    "plan_uninstall",
    "render_launchd_plist",
    "render_systemd_service",
    "render_systemd_units",
    "service_main",
    "step_to_json",
    "step_to_shell",
    "systemd_quote",
    "user_bus_missing",
    "userns_blocked",
]

Action: TypeAlias = Literal["install", "uninstall", "status"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""A command failed or argentd was not found (argentctl's "failure")."""
EXIT_UNREACHABLE: Final = 3
"""`status`: the socket does not answer (argentctl's "daemon not reachable")."""

_SYSTEMCTL: Final = ("systemctl", "--user")


def plan_install(host: Host) -> list[Step]:
    """The steps that install and start argentd on `host`, in order.

    Raises `ServiceError` when argentd is not installed.
    """
    argentd = host.require_argentd()
    if host.platform == "darwin":
        domain = f"gui/{host.uid}"
        return [
            MakeDir(host.plist_path.parent),
            MakeDir(host.log_dir, 0o700),
            WriteFile(host.plist_path, render_launchd_plist(argentd, host.home)),
            # Unload an older copy first: bootstrap refuses a loaded label.
            Run(("launchctl", "bootout", f"{domain}/{LABEL}"), check=False),
            Run(("launchctl", "enable", f"{domain}/{LABEL}")),
            # bootstrap right after bootout can fail while the old job winds down.
            Run(("launchctl", "bootstrap", domain, str(host.plist_path)), attempts=3),
        ]
    units = render_systemd_units(argentd)
    sandbox = Path(f"{SERVICE_UNIT}.d") / SANDBOX_DROPIN
    steps: list[Step] = [MakeDir(host.unit_dir)]
    for rel, text in units.items():
        path = host.unit_dir / rel
        if rel == sandbox:
            if host.userns_blocked is not None:
                # A drop-in that cannot work would make the service fail to start.
                if path.exists():
                    steps += [RemoveFile(path), RemoveDir(path.parent)]
                continue
            steps.append(MakeDir(path.parent))
        steps.append(WriteFile(path, text))
    return [
        *steps,
        Run((*_SYSTEMCTL, "daemon-reload")),
        Run((*_SYSTEMCTL, "enable", "--now", SOCKET_UNIT)),
        # A reinstall (new argentd path) takes effect at once; no-op when stopped.
        Run((*_SYSTEMCTL, "try-restart", SERVICE_UNIT)),
    ]


def plan_uninstall(host: Host) -> list[Step]:
    """The steps that stop argentd and remove its unit files from `host`, in order."""
    if host.platform == "darwin":
        return [
            Run(("launchctl", "bootout", f"gui/{host.uid}/{LABEL}"), check=False),
            RemoveFile(host.plist_path),
        ]
    files = host.unit_files()
    return [
        Run((*_SYSTEMCTL, "disable", "--now", SOCKET_UNIT, SERVICE_UNIT), check=False),
        *(RemoveFile(p) for p in files),
        RemoveDir(host.unit_dir / f"{SERVICE_UNIT}.d"),
        Run((*_SYSTEMCTL, "daemon-reload")),
        Run((*_SYSTEMCTL, "reset-failed", SOCKET_UNIT, SERVICE_UNIT), check=False),
    ]


def status_commands(host: Host) -> list[Run]:
    """The read-only commands `status` runs to ask the service manager."""
    if host.platform == "darwin":
        return [Run(("launchctl", "print", f"gui/{host.uid}/{LABEL}"), check=False)]
    units = (SOCKET_UNIT, SERVICE_UNIT)
    return [
        Run((*_SYSTEMCTL, "is-enabled", *units), check=False),
        Run((*_SYSTEMCTL, "is-active", *units), check=False),
    ]


# ---------------------------------------------------------------- status


class SocketProbe(msgspec.Struct, omit_defaults=True):
    path: str
    answers: bool
    server: str | None = None
    version: str | None = None
    pid: int | None = None
    error: str | None = None


def probe_socket(path: Path, timeout: float = 5.0) -> SocketProbe:
    """Connect to `path`, send `hello` and read one reply line.

    Never raises: a failure is reported in `error`. The generous timeout
    covers socket activation, where the connect starts the daemon.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(encode_request("hello", None, 1))
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the daemon closed the connection without a reply")
                buf += chunk
    except (OSError, ConnectionError) as exc:
        return SocketProbe(str(path), False, error=f"{type(exc).__name__}: {exc}")
    try:
        reply = decode_incoming(buf.split(b"\n", 1)[0])
        if not isinstance(reply.error, msgspec.UnsetType):
            return SocketProbe(str(path), False, error=reply.error.message)
        hello = decode_result("hello", reply.result)
    except Exception as exc:
        return SocketProbe(str(path), False, error=f"bad hello reply: {exc}")
    return SocketProbe(str(path), True, hello.server, hello.version, hello.pid)


def parse_manager(host: Host, results: Sequence[Completed]) -> dict[str, Any]:
    """What the service manager said, from the outputs of `status_commands(host)`."""
    if host.platform == "darwin":
        (done,) = results
        info: dict[str, Any] = {"label": LABEL, "loaded": done.returncode == 0}
        if done.returncode == 0:
            for line in done.stdout.splitlines():
                key, sep, value = line.strip().partition(" = ")
                if sep and key in ("state", "pid", "last exit code"):
                    info[key.replace(" ", "_")] = value
        else:
            info["error"] = (done.stderr or done.stdout).strip() or None
        return info
    enabled, active = results
    units = (SOCKET_UNIT, SERVICE_UNIT)
    info = {}
    for name, done in (("enabled", enabled), ("active", active)):
        lines = done.stdout.split()
        if len(lines) == len(units):
            for unit, value in zip(units, lines, strict=True):
                info.setdefault(unit, {})[name] = value
        else:
            # No answer per unit: systemctl missing or no user bus to talk to.
            info["error"] = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
    return info


def _manager_name(host: Host) -> str:
    return "launchd LaunchAgent" if host.platform == "darwin" else "systemd user units"


def _print_json(obj: Mapping[str, Any], out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2) + "\n")


def _change(
    action: Literal["install", "uninstall"],
    host: Host,
    *,
    dry_run: bool,
    json_output: bool,
    out: TextIO,
    runner: Runner,
    sleep: Callable[[float], None],
) -> int:
    if action == "install" and host.platform == "linux" and host.no_user_bus and not dry_run:
        # Checked first: without a user manager the units would be written and
        # then `systemctl --user` would fail with "Failed to connect to bus".
        raise ServiceError(
            f"{host.no_user_bus}; nothing was written. Run argentd by hand instead"
            " (`argentd`, e.g. in tmux or with `nohup argentd &`), or give your user a"
            " manager that outlives logins: `sudo loginctl enable-linger $USER`, log in"
            " again and rerun `argentctl service install`"
        )
    steps = plan_install(host) if action == "install" else plan_uninstall(host)
    head: dict[str, Any] = {"action": action, "platform": host.platform, "dry_run": dry_run}
    if action == "install" and host.platform == "linux":
        head["sandbox"] = host.userns_blocked is None
        head["sandbox_skipped_because"] = host.userns_blocked
    if dry_run:
        if json_output:
            _print_json({**head, "steps": [step_to_json(s) for s in steps]}, out)
        else:
            out.write(f"# argentctl service {action} ({_manager_name(host)}), dry run:\n")
            if head.get("sandbox_skipped_because"):
                out.write(f"# sandbox drop-in left out: {host.userns_blocked}\n")
            for s in steps:
                out.write(step_to_shell(s) + "\n")
        return EXIT_OK
    results = execute(steps, runner, sleep=sleep)
    ok = all(r.ok for r in results)
    if json_output:
        done = [
            {**step_to_json(r.step), "ok": r.ok, "returncode": r.returncode, "output": r.output}
            for r in results
        ]
        _print_json({**head, "ok": ok, "steps": done}, out)
        return EXIT_OK if ok else EXIT_FAILED
    for r in results:
        out.write(describe(r.step) + "\n")
        if not r.ok:
            out.write(f"failed (exit {r.returncode}): {r.output or 'no output'}\n")
    if not ok:
        return EXIT_FAILED
    if action == "uninstall":
        out.write("argentd's service is removed (logs and state are kept).\n")
    elif host.platform == "darwin":
        out.write(f"argentd runs as LaunchAgent {LABEL} and starts at login; logs in "
                  f"{host.log_dir / 'argentd.log'}.\nCheck it: argentctl service status\n")
    else:
        if host.userns_blocked is not None:
            out.write(f"note: sandbox drop-in left out ({host.userns_blocked}).\n")
        out.write("argentd.socket is enabled: it starts argentd on the first connection, "
                  "at every login.\nCheck it: argentctl service status; "
                  "logs: journalctl --user -u argentd\n")
    return EXIT_OK


def _status(
    host: Host, *, dry_run: bool, json_output: bool, out: TextIO, runner: Runner
) -> int:
    commands = status_commands(host)
    if dry_run:
        if json_output:
            steps = [step_to_json(c) for c in commands]
            steps.append({"op": "probe", "path": str(host.socket_path), "method": "hello"})
            _print_json({"action": "status", "platform": host.platform, "dry_run": True,
                         "steps": steps}, out)
        else:
            out.write(f"# argentctl service status ({_manager_name(host)}), dry run:\n")
            for c in commands:
                out.write(step_to_shell(c) + "\n")
            out.write(f"# then send hello to {host.socket_path}\n")
        return EXIT_OK
    manager = parse_manager(host, [runner(c.argv) for c in commands])
    files = {str(p): p.is_file() for p in host.unit_files()}
    probe = probe_socket(host.socket_path)
    if json_output:
        _print_json({"action": "status", "platform": host.platform, "manager": manager,
                     "files": files, "socket": msgspec.to_builtins(probe), "ok": probe.answers},
                    out)
        return EXIT_OK if probe.answers else EXIT_UNREACHABLE
    out.write(f"service manager: {_manager_name(host)}\n")
    for path, present in files.items():
        out.write(f"  {'installed' if present else 'missing  '}  {path}\n")
    for key, value in manager.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        out.write(f"  {key}: {value}\n")
    if probe.answers:
        out.write(f"socket {probe.path}: answers ({probe.server} {probe.version}, "
                  f"pid {probe.pid})\n")
    else:
        out.write(f"socket {probe.path}: no answer ({probe.error})\n")
    return EXIT_OK if probe.answers else EXIT_UNREACHABLE


def service_main(
    action: Action,
    *,
    dry_run: bool,
    json_output: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
    host: Host | None = None,
    platform: Platform | None = None,
    runner: Runner = subprocess_runner,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """`argentctl service ACTION`: print (or with `json_output`, a JSON object) to `out`.

    `out` and `err` default to the current `sys.stdout` / `sys.stderr`;
    `host`, `platform`, `runner` and `sleep` exist for tests. Returns the exit
    code: 0 done (status: the socket answers), 3 (status) the socket does not
    answer, 1 anything else failed. Never raises for an expected failure: it
    is reported on `err` (or in the JSON object on `out`).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        host = host or Host.detect(platform)
        if action == "status":
            return _status(host, dry_run=dry_run, json_output=json_output, out=out,
                           runner=runner)
        return _change(action, host, dry_run=dry_run, json_output=json_output, out=out,
                       runner=runner, sleep=sleep)
    except (ServiceError, OSError) as exc:
        if json_output:
            _print_json({"action": action, "ok": False, "error": str(exc)}, out)
        else:
            err.write(f"argentctl service {action}: {exc}\n")
        return EXIT_FAILED
