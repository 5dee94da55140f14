"""`argentctl service install|uninstall|status`: argentd as a systemd user service or LaunchAgent.

Theory of operation: the unit texts live here as templates (the copies in the
repository's `systemd/` and `launchd/` folders are checked against them by
`tests/test_service_units.py`, so they cannot drift, and a pip install carries
them without package data). `Host.detect()` gathers every fact of the machine
the plan depends on (platform, home, uid, where `argentd` is, whether user
namespaces work); `plan_install` / `plan_uninstall` turn a `Host` into an
ordered list of `Step`s without touching anything; `execute` carries the steps
out with an injectable command runner, and `--dry-run` prints them instead.
`status` asks the service manager and then whether the socket answers `hello`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TextIO, TypeAlias
from xml.sax.saxutils import escape as xml_escape

import msgspec

from .paths import default_socket_path
from .protocol import decode_incoming, decode_result, encode_request

Platform: TypeAlias = Literal["linux", "darwin"]
Action: TypeAlias = Literal["install", "uninstall", "status"]

LABEL: Final = "org.argentos.argentd"
"""The LaunchAgent's label (reverse-DNS, as launchd expects)."""
SOCKET_UNIT: Final = "argentd.socket"
SERVICE_UNIT: Final = "argentd.service"
SANDBOX_DROPIN: Final = "sandbox.conf"
REPO_EXEC_START: Final = "%h/.argentd/bin/argentd"
"""ExecStart of the repository's copy of the unit: the README quick start's venv."""

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""A command failed or argentd was not found (argentctl's "failure")."""
EXIT_UNREACHABLE: Final = 3
"""`status`: the socket does not answer (argentctl's "daemon not reachable")."""

# ---------------------------------------------------------------- unit texts

SYSTEMD_SOCKET: Final = """\
# argentd's socket, created by systemd (socket activation): the first client
# that connects starts argentd.service, which adopts this socket.
# Installed by `argentctl service install`; see docs/service.md.

[Unit]
Description=argentd credential broker socket

[Socket]
# Where argentd and argentctl look by default: $XDG_RUNTIME_DIR/argentos/.
# Not under the service's RuntimeDirectory=, which systemd deletes on stop.
ListenStream=%t/argentos/argentd.sock
SocketMode=0600
DirectoryMode=0700
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""

_SYSTEMD_SERVICE: Final = """\
# argentd as a systemd user service, started through argentd.socket.
# Installed by `argentctl service install`; see docs/service.md.
# Namespace sandboxing lives in argentd.service.d/sandbox.conf, which can be
# removed where unprivileged user namespaces are blocked.

[Unit]
Description=argentd credential broker for LLM agents
Requires=argentd.socket
After=argentd.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=@EXEC_START@
# notify-reload needs systemd 253; SIGHUP works everywhere.
ExecReload=kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
# Exit 2 is a bad command line: restarting cannot fix it.
RestartPreventExitStatus=2
# argentd pings every half interval.
WatchdogSec=30s
TimeoutStopSec=20s
UMask=0077

# Hardening that needs no user namespace, so it works in any user unit.
# CapabilityBoundingSet= is left out on purpose: an unprivileged user manager
# cannot drop the bounding set (the service would fail with 218/CAPABILITIES),
# and with NoNewPrivileges= the process can gain no capability anyway.
NoNewPrivileges=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
# argentd itself only speaks AF_UNIX and never contacts a provider, so a
# compromised daemon cannot send a secret over the network. `cmd:` token refs
# run with the same filter: one that needs the network (vault, a cloud secret
# manager) needs a drop-in adding AF_INET AF_INET6 AF_NETLINK (docs/service.md).
RestrictAddressFamilies=AF_UNIX

[Install]
Also=argentd.socket
"""

SYSTEMD_SANDBOX: Final = """\
# Namespace sandboxing for argentd.service. In a user unit these options need
# an unprivileged user namespace (PrivateUsers=); where the kernel or AppArmor
# blocks those, the service fails with status 224/USER or 226/NAMESPACE.
# Then remove this file:
#   rm ~/.config/systemd/user/argentd.service.d/sandbox.conf
#   systemctl --user daemon-reload && systemctl --user restart argentd.socket
# `argentctl service install` leaves it out when it sees user namespaces blocked.

[Service]
PrivateUsers=yes
PrivateTmp=yes
ProtectSystem=strict
# The state folder and any helper a `cmd:` token ref runs live in $HOME or the
# runtime folder; everything else (/usr, /etc, /var, /opt) is read-only.
ReadWritePaths=-%h -%t -%S
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
"""

LAUNCHD_TEMPLATE: Final = """\
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" \
"http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!--
  argentd as a macOS LaunchAgent. launchd expands neither ~ nor variables, so
  this is a template: argentctl service install writes it to
  ~/Library/LaunchAgents/org.argentos.argentd.plist with the absolute path of
  argentd and of the log file filled in. See docs/service.md.
-->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>org.argentos.argentd</string>
	<key>ProgramArguments</key>
	<array>
		<string>@ARGENTD@</string>
	</array>
	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ThrottleInterval</key>
	<integer>10</integer>
	<key>Umask</key>
	<integer>63</integer>
	<key>EnvironmentVariables</key>
	<dict>
		<key>PATH</key>
		<string>/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin</string>
	</dict>
	<key>StandardOutPath</key>
	<string>@HOME@/Library/Logs/argentos/argentd.log</string>
	<key>StandardErrorPath</key>
	<string>@HOME@/Library/Logs/argentos/argentd.log</string>
</dict>
</plist>
"""


def systemd_quote(path: str) -> str:
    """`path` as one systemd command-line word: `%` and `$` doubled, quoted if needed."""
    word = path.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_systemd_service(exec_start: str) -> str:
    """argentd.service with `exec_start` (an already-quoted systemd word) as ExecStart."""
    return _SYSTEMD_SERVICE.replace("@EXEC_START@", exec_start)


def render_systemd_units(argentd_path: Path) -> dict[Path, str]:
    """The systemd unit files for `argentd_path`, keyed by path relative to the unit folder."""
    return {
        Path(SOCKET_UNIT): SYSTEMD_SOCKET,
        Path(SERVICE_UNIT): render_systemd_service(systemd_quote(str(argentd_path))),
        Path(f"{SERVICE_UNIT}.d") / SANDBOX_DROPIN: SYSTEMD_SANDBOX,
    }


def render_launchd_plist(argentd_path: Path, home: Path) -> str:
    """The LaunchAgent plist with absolute paths filled in (XML-escaped)."""
    return LAUNCHD_TEMPLATE.replace("@ARGENTD@", xml_escape(str(argentd_path))).replace(
        "@HOME@", xml_escape(str(home))
    )


# ---------------------------------------------------------------- the machine


class ServiceError(Exception):
    """A service action cannot be planned or carried out; the message says why."""


def find_argentd() -> Path:
    """The `argentd` of this installation: beside `sys.executable`, else on PATH.

    Raises `ServiceError` when neither exists.
    """
    # The venv's own script comes first: it is the argentd that matches this
    # argentctl, whatever PATH says. sys.executable is not resolved, because a
    # venv's python is a symlink to the base interpreter.
    beside = Path(sys.executable).absolute().parent / "argentd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("argentd")
    if found:
        return Path(found).absolute()
    raise ServiceError(
        f"argentd not found beside {sys.executable} or on PATH; install the argentd package first"
    )


def userns_blocked(proc_sys: Path = Path("/proc/sys")) -> str | None:
    """Why unprivileged user namespaces are blocked here, or None when they look usable."""
    checks = (
        ("user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
        ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0"),
        (
            "kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "AppArmor restricts unprivileged user namespaces",
        ),
    )
    for name, bad, reason in checks:
        try:
            value = (proc_sys / name).read_text().strip()
        except OSError:
            continue
        if value == bad:
            return reason
    return None


@dataclass(frozen=True)
class Host:
    """Every fact about this machine that a plan depends on."""

    platform: Platform
    home: Path
    uid: int
    config_home: Path
    """`$XDG_CONFIG_HOME` (when absolute), else `~/.config`: systemd's user unit root."""
    argentd: Path | None
    """None when not found (install then fails; uninstall and status do not need it)."""
    userns_blocked: str | None = None
    socket_path: Path = field(default_factory=default_socket_path)

    @classmethod
    def detect(
        cls, platform: Platform | None = None, *, environ: Mapping[str, str] | None = None
    ) -> Host:
        """The running machine; `platform` overrides `sys.platform` (tests).

        Raises `ServiceError` on a platform that is neither Linux nor macOS.
        """
        env = os.environ if environ is None else environ
        plat = platform or current_platform()
        home = Path(env.get("HOME") or Path.home())
        xdg = env.get("XDG_CONFIG_HOME", "")
        config_home = Path(xdg) if os.path.isabs(xdg) else home / ".config"
        try:
            argentd: Path | None = find_argentd()
        except ServiceError:
            argentd = None
        return cls(
            platform=plat,
            home=home,
            uid=os.getuid(),
            config_home=config_home,
            argentd=argentd,
            userns_blocked=userns_blocked() if plat == "linux" else None,
        )

    @property
    def unit_dir(self) -> Path:
        return self.config_home / "systemd" / "user"

    @property
    def plist_path(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def log_dir(self) -> Path:
        return self.home / "Library" / "Logs" / "argentos"

    def unit_files(self) -> list[Path]:
        """Every file an install may write on this platform."""
        if self.platform == "darwin":
            return [self.plist_path]
        return [self.unit_dir / rel for rel in render_systemd_units(Path("argentd"))]

    def require_argentd(self) -> Path:
        if self.argentd is None:
            raise ServiceError(
                f"argentd not found beside {sys.executable} or on PATH; "
                "install the argentd package first"
            )
        return self.argentd


def current_platform() -> Platform:
    """`linux` or `darwin`; raises `ServiceError` elsewhere."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "darwin"
    raise ServiceError(f"no service support on {sys.platform}: only Linux (systemd) and macOS")


# ---------------------------------------------------------------- plans


class MakeDir(msgspec.Struct, frozen=True, tag="mkdir"):
    path: Path
    mode: int = 0o755


class WriteFile(msgspec.Struct, frozen=True, tag="write"):
    path: Path
    content: str
    mode: int = 0o644


class RemoveFile(msgspec.Struct, frozen=True, tag="remove"):
    """Remove a file if it exists."""

    path: Path


class RemoveDir(msgspec.Struct, frozen=True, tag="rmdir"):
    """Remove a folder if it exists and is empty."""

    path: Path


class Run(msgspec.Struct, frozen=True, tag="run"):
    argv: tuple[str, ...]
    check: bool = True
    """False: a failure is expected in some states (e.g. unloading what is not loaded)."""
    attempts: int = 1


Step: TypeAlias = MakeDir | WriteFile | RemoveFile | RemoveDir | Run

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


# ---------------------------------------------------------------- doing it


class Completed(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


Runner: TypeAlias = Callable[[Sequence[str]], Completed]


def subprocess_runner(argv: Sequence[str]) -> Completed:
    """Run `argv` and capture its output; a missing program is exit 127."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError:
        return Completed(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Completed(124, "", f"{shlex.join(argv)}: timed out after 60 s")
    return Completed(done.returncode, done.stdout, done.stderr)


class StepResult(msgspec.Struct, omit_defaults=True):
    step: Step
    ok: bool = True
    returncode: int | None = None
    output: str | None = None


def _write_file(path: Path, content: str, mode: int) -> None:
    # Temp file + rename: a service manager reading the folder never sees half a unit.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def execute(
    steps: Sequence[Step],
    runner: Runner = subprocess_runner,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[StepResult]:
    """Carry out `steps` in order, stopping after the first failure that counts.

    Returns one result per step attempted; the last one has `ok` False when a
    step failed. Raises `OSError` only for a file step that fails.
    """
    results: list[StepResult] = []
    for step in steps:
        match step:
            case MakeDir(path, mode):
                path.mkdir(mode=mode, parents=True, exist_ok=True)
            case WriteFile(path, content, mode):
                _write_file(path, content, mode)
            case RemoveFile(path):
                path.unlink(missing_ok=True)
            case RemoveDir(path):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            case Run(argv, check, attempts):
                for attempt in range(attempts):
                    if attempt:
                        sleep(1.0)
                    done = runner(argv)
                    if done.returncode == 0:
                        break
                output = (done.stdout + done.stderr).strip() or None
                failed = check and done.returncode != 0
                results.append(StepResult(step, not failed, done.returncode, output))
                if failed:
                    return results
                continue
        results.append(StepResult(step))
    return results


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


# ---------------------------------------------------------------- output


def step_to_json(step: Step) -> dict[str, Any]:
    """`step` as a JSON object: `op` plus its fields, modes as octal strings."""
    match step:
        case MakeDir(path, mode):
            return {"op": "mkdir", "path": str(path), "mode": f"{mode:04o}"}
        case WriteFile(path, content, mode):
            return {"op": "write", "path": str(path), "mode": f"{mode:04o}", "content": content}
        case RemoveFile(path):
            return {"op": "remove", "path": str(path)}
        case RemoveDir(path):
            return {"op": "rmdir", "path": str(path)}
        case Run(argv, check, _):
            return {"op": "run", "argv": list(argv), "check": check}


def step_to_shell(step: Step) -> str:
    """`step` as the shell a user could type to do the same by hand."""
    match step:
        case MakeDir(path, mode):
            return f"mkdir -p -m {mode:04o} {shlex.quote(str(path))}"
        case WriteFile(path, content, mode):
            p = shlex.quote(str(path))
            return f"cat > {p} <<'EOF'\n{content}EOF\nchmod {mode:04o} {p}"
        case RemoveFile(path):
            return f"rm -f {shlex.quote(str(path))}"
        case RemoveDir(path):
            return f"rmdir {shlex.quote(str(path))} 2>/dev/null || true"
        case Run(argv, check, _):
            return shlex.join(argv) + ("" if check else " || true")


def _describe(step: Step) -> str:
    match step:
        case MakeDir(path, _):
            return f"made   {path}"
        case WriteFile(path, _, _):
            return f"wrote  {path}"
        case RemoveFile(path) | RemoveDir(path):
            return f"removed {path}"
        case Run(argv, _, _):
            return f"ran    {shlex.join(argv)}"


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
        out.write(_describe(r.step) + "\n")
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
