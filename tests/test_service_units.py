"""The systemd units, the LaunchAgent and `argentctl service` (argent_client/service.py)."""

from __future__ import annotations

import io
import json
import os
import plistlib
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from argent_client import service
from argent_client.paths import default_socket_path
from argent_client.service import (
    LABEL,
    Completed,
    Host,
    render_launchd_plist,
    render_systemd_units,
    service_main,
)

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if os.path.exists("/usr/bin/systemd-analyze") else None
)
# Where systemd looks for a command given without a folder (ExecReload=kill).
SYSTEMD_EXEC_SEARCH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAMESPACE_KEYS = {
    "PrivateUsers", "PrivateTmp", "PrivateDevices", "ProtectSystem", "ProtectHome",
    "ReadWritePaths", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectHostname", "ProtectClock", "ProtectProc",
}


def unit_keys(text: str) -> dict[str, str]:
    """`Key=value` lines of a unit file (no key repeats in ours)."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            assert key not in keys, f"{key} repeated"
            keys[key] = value
    return keys


class FakeRunner:
    """Records every command; answers from `replies` (argv prefix -> Completed)."""

    def __init__(self, replies: dict[tuple[str, ...], list[Completed]] | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.replies = replies or {}

    def __call__(self, argv: Sequence[str]) -> Completed:
        self.calls.append(tuple(argv))
        for prefix, answers in self.replies.items():
            if tuple(argv[: len(prefix)]) == prefix and answers:
                return answers.pop(0)
        return Completed(0, "", "")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~104 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="argsvc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_host(tmp: Path, platform: service.Platform, **kw: object) -> Host:
    args: dict[str, object] = {
        "platform": platform,
        "home": tmp / "home",
        "uid": 501,
        "config_home": tmp / "xdg config",
        "argentd": Path("/opt/argent env/bin/argentd"),
        "userns_blocked": None,
        "socket_path": tmp / "argentd.sock",
    }
    args.update(kw)
    return Host(**args)  # type: ignore[arg-type]


def installed_argentd() -> Path:
    try:
        return service.find_argentd()
    except service.ServiceError:
        return Path("/bin/true")


# ---------------------------------------------------------------- repository copies


def test_repo_units_match_templates() -> None:
    units = render_systemd_units(Path("argentd"))
    expected = {
        REPO / "systemd" / rel: (
            service.render_systemd_service(service.REPO_EXEC_START)
            if rel.name == service.SERVICE_UNIT
            else text
        )
        for rel, text in units.items()
    }
    expected[REPO / "launchd" / f"{LABEL}.plist"] = service.LAUNCHD_TEMPLATE
    on_disk = {p for d in ("systemd", "launchd") for p in (REPO / d).rglob("*") if p.is_file()}
    assert on_disk == set(expected)
    for path, text in expected.items():
        assert path.read_text() == text, f"{path} differs from argent_client/service.py"


def test_repo_service_execstart_is_quick_start_venv() -> None:
    text = (REPO / "systemd" / "argentd.service").read_text()
    assert unit_keys(text)["ExecStart"] == "%h/.argentd/bin/argentd"


# ---------------------------------------------------------------- systemd units


def test_systemd_socket_unit_settings() -> None:
    keys = unit_keys(render_systemd_units(Path("/x/argentd"))[Path("argentd.socket")])
    assert keys["ListenStream"] == "%t/argentos/argentd.sock"
    assert keys["SocketMode"] == "0600"
    assert keys["DirectoryMode"] == "0700"
    assert keys["RemoveOnStop"] == "yes"
    assert keys["WantedBy"] == "sockets.target"


def test_systemd_socket_path_matches_client_default(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the systemd socket path is a Linux matter")
    monkeypatch.delenv("ARGENT_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    listen = unit_keys(service.SYSTEMD_SOCKET)["ListenStream"]
    assert default_socket_path() == Path(listen.replace("%t", "/run/user/4242"))


def test_systemd_service_unit_settings() -> None:
    units = render_systemd_units(Path("/opt/argentd/bin/argentd"))
    keys = unit_keys(units[Path("argentd.service")])
    assert keys["ExecStart"] == "/opt/argentd/bin/argentd"
    assert keys["Type"] == "notify"
    assert keys["NotifyAccess"] == "main"
    assert keys["ExecReload"] == "kill -HUP $MAINPID"
    assert keys["Restart"] == "on-failure"
    assert keys["WatchdogSec"] == "30s"
    assert keys["UMask"] == "0077"
    assert keys["Requires"] == keys["After"] == "argentd.socket"
    for key in ("NoNewPrivileges", "LockPersonality", "MemoryDenyWriteExecute",
                "RestrictNamespaces"):
        assert keys[key] == "yes", key
    assert keys["SystemCallFilter"] == "@system-service"
    assert keys["RestrictAddressFamilies"] == "AF_UNIX"
    # An unprivileged user manager cannot drop the bounding set (218/CAPABILITIES).
    assert "CapabilityBoundingSet" not in keys
    # The socket must not live in a folder systemd deletes when the service stops.
    assert "RuntimeDirectory" not in keys
    assert not NAMESPACE_KEYS & keys.keys()


def test_systemd_sandbox_dropin_holds_namespace_options() -> None:
    keys = unit_keys(render_systemd_units(Path("/x"))[Path("argentd.service.d/sandbox.conf")])
    assert set(keys) <= NAMESPACE_KEYS
    assert keys["PrivateUsers"] == "yes"
    assert keys["ProtectSystem"] == "strict"
    assert keys["PrivateTmp"] == "yes"


def test_systemd_quote_escapes_specifiers_and_spaces() -> None:
    assert service.systemd_quote("/usr/bin/argentd") == "/usr/bin/argentd"
    assert service.systemd_quote("/home/a b/100%/$x") == '"/home/a b/100%%/$$x"'
    assert service.systemd_quote('/o"d\\d') == '"/o\\"d\\\\d"'


def write_units(folder: Path, argentd: Path) -> None:
    for rel, text in render_systemd_units(argentd).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        if shutil.which("kill", path=SYSTEMD_EXEC_SEARCH) is None:
            # Minimal CI images lack procps; every desktop has it. Only the
            # lookup of the reload command is bypassed, not its syntax.
            text = text.replace("ExecReload=kill ", "ExecReload=/bin/kill ")
            if not os.path.exists("/bin/kill"):
                text = text.replace("ExecReload=/bin/kill -HUP", "ExecReload=/bin/true -HUP")
        (folder / rel).write_text(text)


def systemd_verify(folder: Path, runtime: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [SYSTEMD_ANALYZE, "--user", "verify", "--man=no",
         str(folder / "argentd.socket"), str(folder / "argentd.service")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )


needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


@needs_analyze
def test_systemd_units_pass_analyze_verify(short_tmp: Path) -> None:
    units = short_tmp / "units"
    write_units(units, installed_argentd())
    done = systemd_verify(units, short_tmp / "rt")
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_systemd_units_pass_analyze_verify_with_spaces_in_path(short_tmp: Path) -> None:
    odd = short_tmp / "my 100% env" / "argentd"
    odd.parent.mkdir()
    shutil.copy("/bin/true", odd)
    write_units(short_tmp / "units", odd)
    done = systemd_verify(short_tmp / "units", short_tmp / "rt")
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_analyze
def test_systemd_analyze_verify_reads_the_dropin(short_tmp: Path) -> None:
    # Proves the clean runs above checked the drop-in too: a bad key there is reported.
    units = short_tmp / "units"
    write_units(units, installed_argentd())
    with (units / "argentd.service.d" / "sandbox.conf").open("a") as f:
        f.write("ProtectNothing=yes\n")
    done = systemd_verify(units, short_tmp / "rt")
    assert "sandbox.conf" in done.stderr and "ProtectNothing" in done.stderr


# ---------------------------------------------------------------- launchd


def test_launchd_plist_renders_with_absolute_paths() -> None:
    argentd = Path("/Users/ann & bo/<env>/bin/argentd")
    home = Path("/Users/ann & bo")
    text = render_launchd_plist(argentd, home)
    assert "@ARGENTD@" not in text and "@HOME@" not in text
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [str(argentd)]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 10
    assert plist["Umask"] == 63 == 0o077
    log = "/Users/ann & bo/Library/Logs/argentos/argentd.log"
    assert plist["StandardErrorPath"] == plist["StandardOutPath"] == log


def test_launchd_plist_points_at_installed_argentd(tmp_path: Path) -> None:
    argentd = installed_argentd()
    plist = plistlib.loads(render_launchd_plist(argentd, tmp_path).encode())
    program = Path(plist["ProgramArguments"][0])
    assert program.is_absolute() and os.access(program, os.X_OK)


def test_find_argentd_prefers_this_installation() -> None:
    beside = Path(sys.executable).absolute().parent / "argentd"
    if not beside.exists():
        pytest.skip("argentd is not installed beside this interpreter")
    assert service.find_argentd() == beside


# ---------------------------------------------------------------- plans and dry runs


def run_main(action: service.Action, host: Host, runner: FakeRunner | None = None,
             *, dry_run: bool = False, json_output: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = service_main(action, dry_run=dry_run, json_output=json_output, out=out, err=err,
                        host=host, runner=runner or FakeRunner(), sleep=lambda _: None)
    return code, out.getvalue(), err.getvalue()


def test_service_install_dry_run_linux_prints_files_and_commands(tmp_path: Path) -> None:
    host = make_host(tmp_path, "linux")
    runner = FakeRunner()
    code, out, _ = run_main("install", host, runner, dry_run=True)
    assert code == 0
    assert runner.calls == []
    assert not (tmp_path / "xdg config").exists()
    unit_dir = tmp_path / "xdg config" / "systemd" / "user"
    for rel, text in render_systemd_units(host.argentd).items():  # type: ignore[arg-type]
        assert f"cat > '{unit_dir / rel}' <<'EOF'\n{text}EOF\n" in out
    assert 'ExecStart="/opt/argent env/bin/argentd"' in out
    commands = [line for line in out.splitlines() if line.startswith("systemctl")]
    assert commands == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now argentd.socket",
        "systemctl --user try-restart argentd.service",
    ]


def test_service_install_dry_run_darwin_prints_plist_and_commands(tmp_path: Path) -> None:
    host = make_host(tmp_path, "darwin")
    code, out, _ = run_main("install", host, dry_run=True)
    assert code == 0
    plist = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    text = render_launchd_plist(host.argentd, host.home)  # type: ignore[arg-type]
    assert f"cat > {plist} <<'EOF'\n{text}EOF\n" in out
    assert f"mkdir -p -m 0700 {tmp_path}/home/Library/Logs/argentos" in out
    commands = [line for line in out.splitlines() if line.startswith("launchctl")]
    assert commands == [
        f"launchctl bootout gui/501/{LABEL} || true",
        f"launchctl enable gui/501/{LABEL}",
        f"launchctl bootstrap gui/501 {plist}",
    ]
    assert not plist.exists()


def test_service_install_dry_run_json_lists_steps(tmp_path: Path) -> None:
    code, out, _ = run_main("install", make_host(tmp_path, "darwin"), dry_run=True,
                            json_output=True)
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] is True and doc["platform"] == "darwin"
    ops = [s["op"] for s in doc["steps"]]
    assert ops == ["mkdir", "mkdir", "write", "run", "run", "run"]
    write = doc["steps"][2]
    assert write["mode"] == "0644"
    assert plistlib.loads(write["content"].encode())["ProgramArguments"] == [
        "/opt/argent env/bin/argentd"
    ]
    assert doc["steps"][-1]["argv"][:2] == ["launchctl", "bootstrap"]


def test_service_uninstall_dry_run_linux(tmp_path: Path) -> None:
    code, out, _ = run_main("uninstall", make_host(tmp_path, "linux"), dry_run=True)
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == "systemctl --user disable --now argentd.socket argentd.service || true"
    assert lines[-2:] == [
        "systemctl --user daemon-reload",
        "systemctl --user reset-failed argentd.socket argentd.service || true",
    ]
    assert sum(line.startswith("rm -f ") for line in lines) == 3


def test_service_status_dry_run_runs_nothing(tmp_path: Path) -> None:
    runner = FakeRunner()
    code, out, _ = run_main("status", make_host(tmp_path, "linux"), runner, dry_run=True)
    assert code == 0 and runner.calls == []
    assert "systemctl --user is-active argentd.socket argentd.service || true" in out


# ---------------------------------------------------------------- real-ish installs


def test_service_install_linux_writes_units_and_enables_socket(tmp_path: Path) -> None:
    host = make_host(tmp_path, "linux")
    runner = FakeRunner()
    code, out, err = run_main("install", host, runner)
    assert (code, err) == (0, "")
    for rel, text in render_systemd_units(host.argentd).items():  # type: ignore[arg-type]
        path = host.unit_dir / rel
        assert path.read_text() == text
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert runner.calls == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "--now", "argentd.socket"),
        ("systemctl", "--user", "try-restart", "argentd.service"),
    ]
    assert "argentctl service status" in out


def test_service_uninstall_linux_removes_units(tmp_path: Path) -> None:
    host = make_host(tmp_path, "linux")
    assert run_main("install", host)[0] == 0
    runner = FakeRunner({("systemctl", "--user", "disable"): [Completed(1, "", "not loaded")]})
    code, _, _ = run_main("uninstall", host, runner)
    assert code == 0
    assert host.unit_dir.is_dir() and list(host.unit_dir.iterdir()) == []
    assert runner.calls == [
        ("systemctl", "--user", "disable", "--now", "argentd.socket", "argentd.service"),
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "reset-failed", "argentd.socket", "argentd.service"),
    ]


def test_service_install_linux_skips_sandbox_when_userns_blocked(tmp_path: Path) -> None:
    host = make_host(tmp_path, "linux")
    assert run_main("install", host)[0] == 0
    blocked = make_host(tmp_path, "linux", userns_blocked="user.max_user_namespaces is 0")
    code, out, _ = run_main("install", blocked)
    assert code == 0
    assert not (host.unit_dir / "argentd.service.d").exists()
    assert (host.unit_dir / "argentd.service").exists()
    assert "sandbox drop-in left out (user.max_user_namespaces is 0)" in out


def test_service_install_linux_stops_at_failed_command(tmp_path: Path) -> None:
    failure = Completed(1, "", "Failed to connect to bus: No medium found")
    runner = FakeRunner({("systemctl", "--user", "enable"): [failure]})
    code, out, _ = run_main("install", make_host(tmp_path, "linux"), runner, json_output=True)
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert doc["steps"][-1]["output"] == "Failed to connect to bus: No medium found"
    assert runner.calls[-1] == ("systemctl", "--user", "enable", "--now", "argentd.socket")


def test_service_install_darwin_writes_plist_and_bootstraps(tmp_path: Path) -> None:
    host = make_host(tmp_path, "darwin")
    # bootstrap right after bootout may fail once while the old job winds down.
    runner = FakeRunner({
        ("launchctl", "bootout"): [Completed(3, "", "No such process")],
        ("launchctl", "bootstrap"): [Completed(5, "", "Bootstrap failed: 5: Input/output error")],
    })
    code, _, err = run_main("install", host, runner)
    assert (code, err) == (0, "")
    plist = plistlib.loads(host.plist_path.read_bytes())
    assert plist["ProgramArguments"] == ["/opt/argent env/bin/argentd"]
    assert stat.S_IMODE(host.log_dir.stat().st_mode) == 0o700
    bootstrap = ("launchctl", "bootstrap", "gui/501", str(host.plist_path))
    assert runner.calls == [
        ("launchctl", "bootout", f"gui/501/{LABEL}"),
        ("launchctl", "enable", f"gui/501/{LABEL}"),
        bootstrap,
        bootstrap,
    ]


def test_service_uninstall_darwin_boots_out_and_removes_plist(tmp_path: Path) -> None:
    host = make_host(tmp_path, "darwin")
    assert run_main("install", host)[0] == 0
    runner = FakeRunner()
    assert run_main("uninstall", host, runner)[0] == 0
    assert not host.plist_path.exists()
    assert host.log_dir.exists()  # logs are kept
    assert runner.calls == [("launchctl", "bootout", f"gui/501/{LABEL}")]


def test_service_install_without_argentd_fails(tmp_path: Path) -> None:
    runner = FakeRunner()
    code, out, err = run_main("install", make_host(tmp_path, "linux", argentd=None), runner)
    assert code == 1 and out == ""
    assert err.startswith("argentctl service install: argentd not found beside ")
    assert runner.calls == []


# ---------------------------------------------------------------- host detection


def test_host_detect_respects_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    host = Host.detect("linux", environ=env)
    assert host.unit_dir == tmp_path / "cfg" / "systemd" / "user"
    relative = Host.detect("linux", environ={"HOME": str(tmp_path), "XDG_CONFIG_HOME": "cfg"})
    assert relative.unit_dir == tmp_path / ".config" / "systemd" / "user"
    mac = Host.detect("darwin", environ={"HOME": str(tmp_path)})
    assert mac.plist_path == tmp_path / "Library" / "LaunchAgents" / f"{LABEL}.plist"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
        ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0"),
        ("kernel/apparmor_restrict_unprivileged_userns", "1",
         "AppArmor restricts unprivileged user namespaces"),
        ("user/max_user_namespaces", "63432", None),
    ],
)
def test_userns_blocked_reads_sysctls(
    tmp_path: Path, name: str, value: str, reason: str | None
) -> None:
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(value + "\n")
    assert service.userns_blocked(tmp_path) == reason


# ---------------------------------------------------------------- status


def serve_hello_once(path: Path) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                request = conn.makefile("rb").readline()
                assert json.loads(request) == {"jsonrpc": "2.0", "method": "hello", "id": 1}
                conn.sendall(b'{"jsonrpc":"2.0","id":1,"result":{"server":"argentd",'
                             b'"version":"0.1.0","protocol":1,"pid":4242}}\n')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_service_status_linux_reports_manager_and_socket(short_tmp: Path) -> None:
    host = make_host(short_tmp, "linux")
    thread = serve_hello_once(host.socket_path)
    runner = FakeRunner({
        ("systemctl", "--user", "is-enabled"): [Completed(0, "enabled\nindirect\n", "")],
        ("systemctl", "--user", "is-active"): [Completed(3, "active\ninactive\n", "")],
    })
    code, out, _ = run_main("status", host, runner, json_output=True)
    thread.join(5)
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True
    assert doc["manager"] == {
        "argentd.socket": {"enabled": "enabled", "active": "active"},
        "argentd.service": {"enabled": "indirect", "active": "inactive"},
    }
    assert doc["socket"] == {"path": str(host.socket_path), "answers": True,
                             "server": "argentd", "version": "0.1.0", "pid": 4242}
    assert set(doc["files"].values()) == {False}


def test_service_status_reports_silent_socket(short_tmp: Path) -> None:
    host = make_host(short_tmp, "linux")
    runner = FakeRunner({
        ("systemctl",): [Completed(1, "", "Failed to connect to bus: No medium found")] * 2,
    })
    code, out, _ = run_main("status", host, runner)
    assert code == 3
    assert "error: Failed to connect to bus: No medium found" in out
    assert f"socket {host.socket_path}: no answer (FileNotFoundError" in out


def test_service_status_darwin_parses_launchctl_print(short_tmp: Path) -> None:
    host = make_host(short_tmp, "darwin")
    printed = (f"gui/501/{LABEL} = {{\n\tactive count = 1\n\tstate = running\n"
               "\tpid = 812\n\tlast exit code = 0\n}\n")
    runner = FakeRunner({("launchctl", "print"): [Completed(0, printed, "")]})
    thread = serve_hello_once(host.socket_path)
    code, out, _ = run_main("status", host, runner, json_output=True)
    thread.join(5)
    assert code == 0
    assert json.loads(out)["manager"] == {"label": LABEL, "loaded": True, "state": "running",
                                          "pid": "812", "last_exit_code": "0"}
    assert runner.calls == [("launchctl", "print", f"gui/501/{LABEL}")]


def test_service_main_writes_to_current_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # argentctl calls service_main without `out`: it must find sys.stdout at call time.
    code = service_main("uninstall", dry_run=True, json_output=True,
                        host=make_host(tmp_path, "darwin"))
    assert code == 0
    assert json.loads(capsys.readouterr().out)["action"] == "uninstall"


# ---------------------------------------------------------------- no user bus


def test_service_install_without_user_bus_writes_nothing_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    reason = f"no user bus at {tmp_path / 'run' / 'bus'}: no systemd user manager runs for you"
    host = make_host(tmp_path, "linux", no_user_bus=reason)
    runner = FakeRunner()
    code, out, err = run_main("install", host, runner)
    assert (code, out) == (1, "")
    assert err == (
        f"argentctl service install: {reason}; nothing was written. Run argentd by hand"
        " instead (`argentd`, e.g. in tmux or with `nohup argentd &`), or give your user a"
        " manager that outlives logins: `sudo loginctl enable-linger $USER`, log in again and"
        " rerun `argentctl service install`\n"
    )
    assert runner.calls == []
    assert not host.unit_dir.exists()
    # --dry-run still shows the plan
    code, out, _ = run_main("install", host, runner, dry_run=True)
    assert code == 0 and "systemctl --user enable --now argentd.socket" in out


def test_user_bus_missing_looks_for_the_bus_socket(tmp_path: Path) -> None:
    if shutil.which("systemctl") is None:
        assert service.user_bus_missing({}, 4242) == (
            "systemctl is not installed (no systemd here)"
        )
        return
    run = tmp_path / "run"
    run.mkdir()
    env = {"XDG_RUNTIME_DIR": str(run)}
    assert service.user_bus_missing(env, 4242) == (
        f"no user bus at {run / 'bus'}: no systemd user manager runs for you"
    )
    (run / "bus").write_text("")  # a plain file is not a bus
    assert service.user_bus_missing(env, 4242) is not None
    (run / "bus").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(run / "bus"))
        assert service.user_bus_missing(env, 4242) is None
    assert service.user_bus_missing({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"}, 4242) is None
