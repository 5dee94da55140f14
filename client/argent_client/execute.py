"""`argentctl exec` and `lease --env`: hand a leased secret to a program.

The secret goes into the variables the provider's own tools read
(`providers.env_vars`), the same provider's other credential variables are
removed so the child cannot pick an inherited one, and `ARGENT_LEASE_ID` /
`ARGENT_PROFILE` tell the child (and a wrapper inside it) which lease it runs
under. While the child runs a thread renews the lease at a third of its
TTL; when it exits the lease is released and its exit status is returned.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TextIO

from .protocol import ArgentError, LeaseResult, RenewResult
from .providers import conflicting_vars, env_vars


def lease_env(lease: LeaseResult) -> tuple[dict[str, str], tuple[str, ...]]:
    """(variables to set, variables to unset) for a child running under `lease`."""
    values = {
        "ARGENT_LEASE_ID": lease.lease_id,
        "ARGENT_PROFILE": lease.profile,
    }
    if lease.model:
        values["ARGENT_MODEL"] = lease.model
    for var in env_vars(lease.provider, lease.type):
        values[var] = lease.token
    return values, conflicting_vars(lease.provider, lease.type)


def child_env(base: Mapping[str, str], lease: LeaseResult) -> dict[str, str]:
    """`base` with the lease's variables set and the conflicting ones removed."""
    values, unset = lease_env(lease)
    env = {k: v for k, v in base.items() if k not in unset}
    env.update(values)
    return env


def shell_exports(lease: LeaseResult) -> str:
    """POSIX shell lines for `eval "$(argentctl lease PROVIDER --env)"`.

    The values are quoted with `shlex.quote`; this output holds the secret.
    """
    values, unset = lease_env(lease)
    lines = [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    if unset:
        lines.append("unset " + " ".join(unset))
    return "\n".join(lines) + "\n"


class Renewer(threading.Thread):
    """Renews one lease at a third of its remaining TTL until stopped.

    `renew` is the client's bound method; only this thread uses the client
    while it runs. A failed renewal is reported once on `err` and retried
    at the next tick (the child keeps running: its secret cannot be taken
    back anyway).
    """

    def __init__(
        self,
        renew: Callable[[str, float | None], RenewResult],
        lease: LeaseResult,
        ttl: float | None,
        err: TextIO,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name="argentctl-renew", daemon=True)
        self._renew = renew
        self._lease_id = lease.lease_id
        self._expires_at = lease.expires_at
        self._ttl = ttl
        self._err = err
        self._clock = clock
        self._halt = threading.Event()
        self._warned = False
        self.renewals = 0

    def interval(self) -> float:
        """Seconds until the next renewal: a third of what is left, at least 1 s."""
        return max(1.0, (self._expires_at - self._clock()) / 3)

    def run(self) -> None:
        while not self._halt.wait(self.interval()):
            try:
                self._expires_at = self._renew(self._lease_id, self._ttl).expires_at
                self.renewals += 1
            except ArgentError as exc:
                if not self._warned:
                    print(f"argentctl: cannot renew lease: {exc.code}: {exc}", file=self._err)
                    self._warned = True
                # Do not spin on a lost lease: wait a full minute or until stopped.
                self._expires_at = self._clock() + 180.0

    def stop(self) -> None:
        self._halt.set()


def _terminal_sent_it() -> bool:
    """Whether we are in the terminal's foreground process group.

    Then a Ctrl-C reached the child (our group) already, and forwarding the
    SIGINT would deliver it twice (many tools quit hard on a second Ctrl-C).
    """
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_child(argv: Sequence[str], env: Mapping[str, str], err: TextIO = sys.stderr) -> int:
    """Run `argv` with `env` in the foreground and return its exit status.

    A child killed by signal N gives 128+N, like a shell. SIGINT, SIGTERM
    and SIGHUP sent to us are forwarded (SIGINT only when it did not come
    from the terminal, which already sent it to the child). A command that
    is not found gives 127, one that cannot be executed 126.
    """
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and _terminal_sent_it():
            return
        if started and started[0].poll() is None:
            started[0].send_signal(signum)

    # Handlers first: a signal between spawn and install must not kill us
    # and orphan the child with the lease unreleased.
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        try:
            started.append(subprocess.Popen(list(argv), env=dict(env)))
        except FileNotFoundError:
            print(f"argentctl: command not found: {argv[0]}", file=err)
            return 127
        except PermissionError:
            print(f"argentctl: permission denied: {argv[0]}", file=err)
            return 126
        except OSError as exc:
            print(f"argentctl: cannot run {argv[0]}: {exc.strerror}", file=err)
            return 126
        rc = started[0].wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - rc if rc < 0 else rc
