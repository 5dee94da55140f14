"""The unit texts argentd is installed with: systemd user units and a LaunchAgent.

The copies in the repository's `systemd/` and `launchd/` folders are checked
against these templates by `tests/test_service_units.py`, so they cannot
drift, and a pip install carries them without package data.
`argentctl service install` (`service.py`) renders them for this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape as xml_escape

LABEL: Final = "org.argentos.argentd"
"""The LaunchAgent's label (reverse-DNS, as launchd expects)."""
SOCKET_UNIT: Final = "argentd.socket"
SERVICE_UNIT: Final = "argentd.service"
SANDBOX_DROPIN: Final = "sandbox.conf"
REPO_EXEC_START: Final = "%h/.argentd/bin/argentd"
"""ExecStart of the repository's copy of the unit: the README quick start's venv."""

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
