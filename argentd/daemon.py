"""The daemon's lifetime: load, bind, serve, reload, persist, stop.

`Daemon.__init__` loads the files and the state (before `trio.run`);
`Daemon.run` binds (or adopts) the socket and owns one nursery with every
task of the daemon (server, state saver, usage saver, STATUS= updates, file
watcher, watchdog, signals). Readiness (`READY=1`) is sent once they have
all started; SIGTERM/SIGINT send `STOPPING=1` and cancel the nursery, and
the state is saved on the way out. Every time comes from one `Clock`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from argent_client import protocol as P
from argent_client.gateway import token_path
from argent_client.paths import (
    default_config_path,
    home_profiles_path,
    runtime_socket_path,
    state_dir,
)

from . import log as logmod
from .clock import Clock
from .config import DEFAULT_CONFIG, Config, ConfigError, load_config
from .credentials import CredentialsStore
from .engine import Engine
from .model import ProfileSet
from .oauth import Refresher
from .profiles import ProfilesError, env_profiles, load_profiles, profiles_file_exists
from .reload import watch_files
from .server import Server
from .service import (
    Notifier,
    adopt_systemd_socket,
    bind_unix_socket,
    lock_socket,
    peer_uid,
    raise_fd_limit,
)
from .snapshot import KeySnapshot, ProfileSnapshot, Snapshot
from .state import Saver, StateStore

if TYPE_CHECKING:
    from .cluster import Cluster
    from .gateway import Gateway

log = logging.getLogger("argentd")

STATUS_EVERY = 1.0
"""Seconds between STATUS= updates to systemd while profiles change state."""
USAGE_SAVE_EVERY = 60.0
"""Seconds between saves of usage counters (last use, request counts)."""


@dataclass
class Options:
    profiles: Path | None = None
    socket: Path | None = None
    config: Path | None = None
    state: Path | None = None
    save_delay: float = 0.5


@dataclass
class Loaded:
    config: Config
    profiles: ProfileSet
    error: str | None
    kept_profiles: bool = False
    """The profiles file was refused: `profiles` are the previous ones."""
    kept_config: bool = False
    """argentd.toml was refused: `config` is the previous one."""


def _fault(path: Path, exc: Exception) -> str:
    """A file fault the loader did not name itself (a bug there): never fatal, never a secret."""
    return f"{path}: could not be loaded ({type(exc).__name__}: {logmod.redact(str(exc))})"


def load_all(opts: Options, last: Loaded | None) -> Loaded:
    """Read argentd.toml and the profiles file (blocking; run in a thread).

    A file-level fault keeps `last` (or, with none, the defaults and the
    environment fallback) and returns the fault as `error`. Any exception
    from a loader is such a fault: this never raises.
    """
    config_path = opts.config or default_config_path()
    errors: list[str] = []
    kept_config = kept_profiles = False
    try:
        config = load_config(config_path, required=opts.config is not None)
    except Exception as exc:
        errors.append(str(exc) if isinstance(exc, ConfigError) else _fault(config_path, exc))
        config = last.config if last else DEFAULT_CONFIG
        kept_config = True
    path = profiles_path(opts, config)
    try:
        profiles = load_profiles(path, os.environ)
    except Exception as exc:
        errors.append(str(exc) if isinstance(exc, ProfilesError) else _fault(path, exc))
        profiles = last.profiles if last else ProfileSet(env_profiles(os.environ))
        kept_profiles = True
    else:
        errors.extend(profiles.errors)
    # One line per problem: argentctl status and doctor print each on its own.
    return Loaded(config, profiles, "\n".join(errors) or None, kept_profiles, kept_config)


def _first_path(flag: Path | None, env: str, configured: str | None, default: Path) -> Path:
    """The one precedence: the flag, else the environment, else argentd.toml, else default.

    Always absolute (against the daemon's working folder at start), so that
    `status.config` names a file a client in another folder can find.
    """
    if flag is not None:
        path = flag.expanduser()
    elif os.environ.get(env):
        path = Path(os.environ[env]).expanduser()
    elif configured:
        path = Path(configured).expanduser()
    else:
        path = default
    return path.absolute()


def profiles_path(opts: Options, config: Config) -> Path:
    """--profiles, else $ARGENT_PROFILES, else `profiles` in the config, else the default."""
    return _first_path(opts.profiles, "ARGENT_PROFILES", config.profiles, home_profiles_path())


def socket_path(opts: Options, config: Config) -> Path:
    """--socket, else $ARGENT_SOCKET, else `socket` in the config, else the default."""
    return _first_path(opts.socket, "ARGENT_SOCKET", config.socket, runtime_socket_path())


def state_path(opts: Options, config: Config) -> Path:
    """The state file of the daemon on this socket: two daemons never share one.

    `state.json` for the default socket; for any other,
    `state-<first 8 hex digits of sha256(absolute socket path)>.json` beside it.
    """
    folder = opts.state or state_dir()
    sock = os.path.abspath(socket_path(opts, config))
    if sock == os.path.abspath(runtime_socket_path()):
        return folder / "state.json"
    digest = hashlib.sha256(os.fsencode(sock)).hexdigest()[:8]
    return folder / f"state-{digest}.json"


def decode_state(raw: dict[str, object]) -> tuple[Snapshot, list[str]]:
    """The entries of a state file that decode, and a message per entry that does not.

    One wrong-typed field costs its own entry (a key's books or a
    profile's flags), not the whole file.
    """
    problems: list[str] = []

    def entries(name: str, kind: type[KeySnapshot] | type[ProfileSnapshot]) -> dict[str, Any]:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"`$.{name}` is not an object")
            return {}
        good: dict[str, Any] = {}
        for key, value in table.items():
            try:
                good[key] = msgspec.convert(value, kind)
            except msgspec.ValidationError as exc:
                problems.append(f"{exc}".replace("`$", f"`$.{name}[{key!r}]"))
        return good

    keys = entries("keys", KeySnapshot)
    profiles = entries("profiles", ProfileSnapshot)
    return Snapshot(keys=keys, profiles=profiles), problems


class Daemon:
    def __init__(self, opts: Options, *, clock: Clock | None = None) -> None:
        self.opts = opts
        self.clock = clock or Clock()
        self.loaded = load_all(opts, None)
        self._log_load(self.loaded)
        now = self.clock.now()
        self.loaded_at: float | None = now
        self.store = StateStore(state_path(opts, self.loaded.config))
        self.store.prepare()
        self.oauth = Refresher(
            lambda: self.engine,
            # Beside state.json; one per user: daemons of one user share its lock.
            CredentialsStore(self.store.path.parent / "credentials.json"),
            lambda: self.loaded.config.oauth,
            lambda: self.server.after_change(),
            clock=self.clock.now,
            cluster=lambda: self.cluster,  # one host refreshes each login (oauth_claims)
        )
        self.engine = Engine(self.oauth.overlay(self.loaded.profiles), self.loaded.config,
                             now=now)
        raw = self.store.load()
        if raw is not None:
            snapshot, problems = decode_state(raw)
            if problems:
                self.store.move_aside(
                    "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)"
                                               if len(problems) > 5 else ""),
                    kept=f"kept the {len(snapshot.keys)} key(s) and "
                         f"{len(snapshot.profiles)} profile(s) that were readable")
            self.engine.restore(snapshot, now=now)
        self.engine.take_outbox()
        self.saver = Saver(self.store, self.engine.snapshot, delay=opts.save_delay)
        self.notifier = Notifier()
        self.server = Server(
            self.engine,
            reload=self.reload,
            config_status=self.config_status,
            on_change=self._changed,
            clock=self.clock,
            peer_uid=peer_uid,
            gateway_status=self._gateway_status,
            extra_metrics=lambda: self.gateway.metrics() if self.gateway else "",
        )
        self.gateway = self._make_gateway()
        self._reload_lock = trio.Lock()
        self._status_dirty = trio.Event()
        self.cluster = self._make_cluster()

    def _make_gateway(self) -> Gateway | None:
        """The HTTP gateway, or None when it is off (`listen = ""`): then neither it nor
        its HTTP stack is imported, which saves a good part of the daemon's start-up.

        Its listen address is read once, at start; the rest of [gateway] follows reloads.
        $ARGENT_GATEWAY_LISTEN wins over it (tests and a second daemon take port 0).
        """
        listen = os.environ.get("ARGENT_GATEWAY_LISTEN", self.loaded.config.gateway.listen)
        if not listen:
            return None
        from .gateway import Gateway

        return Gateway(self.server, listen=listen, token_path=token_path())

    def _gateway_status(self) -> P.GatewayStatus:
        # What an idle gateway reports, for one that is off.
        return self.gateway.status() if self.gateway else P.GatewayStatus(url=None, error=None)

    def _make_cluster(self) -> Cluster | None:
        """The `[cluster]` task, or None without one (coredis is then never imported)."""
        cfg = self.loaded.config.cluster
        if cfg.url is None:
            return None
        from .cluster import Cluster
        from .refs import ProfileFault, Resolver

        password, error = None, None
        if cfg.password_ref is not None:
            folder = (self.opts.config or default_config_path()).parent
            try:
                password = Resolver(folder, os.environ, 10.0).resolve(cfg.password_ref,
                                                                      ".cluster.password_ref")
            except ProfileFault as exc:
                error = f"[cluster] password_ref: {exc.text.replace('token_ref', 'password_ref')}"
                log.error("cluster: %s; not connecting", error)

        def saved() -> None:
            self.saver.mark_dirty()
            self._status_dirty.set()

        cluster = Cluster(cfg, self.engine, after_change=self.server.after_change,
                          on_change=saved, clock=self.clock.now, password=password,
                          broken=error)
        self.server.status_extras.append(cluster.add_status)
        self.server.metrics_extras.append(cluster.metrics)
        return cluster

    def _log_load(self, loaded: Loaded) -> None:
        logmod.register_secrets(p.secret.reveal() for p in loaded.profiles.profiles)
        n = len(loaded.profiles.profiles)
        path = profiles_path(self.opts, loaded.config)
        if not loaded.kept_profiles:
            log.info("loaded %d profile(s) from %s", n, path)
            if not profiles_file_exists(path):
                log.warning("no profiles file at %s (serving the environment fallback only); "
                            "add a profile with `argentctl setup`", path)
        if loaded.error:
            log.error("profiles/config problem: %s", loaded.error)

    def config_status(self) -> P.ConfigStatus:
        return P.ConfigStatus(
            profiles_path=str(profiles_path(self.opts, self.loaded.config)),
            loaded_at=self.loaded_at,
            error="\n".join(e for e in (self.loaded.error, self.oauth.error) if e) or None,
            config_path=str(self.opts.config or default_config_path()),
            state_path=str(self.store.path),
        )

    def _changed(self) -> None:
        self.oauth.notice_changes()
        self.saver.mark_dirty()
        self._status_dirty.set()

    async def _keep_status_current(self) -> None:
        """STATUS= for `systemctl status` after changes, at most once a second
        (the line counts every profile)."""
        while True:
            await self._status_dirty.wait()
            self._status_dirty = trio.Event()
            self.notifier.status(self.status_line())
            await trio.sleep(STATUS_EVERY)

    def status_line(self) -> str:
        now = self.clock.now()
        states = [self.engine.state_of(p.id, now) for p in self.engine.profiles()]
        return (
            f"{states.count('ready')} ready, {states.count('cooldown')} cooling, "
            f"{len(self.engine.leases())} leases"
        )

    async def reload(self, reason: str) -> P.ReloadResult:
        """Reload both files; a bad file keeps the last good profiles. Never raises but
        Cancelled (then the load thread is abandoned: a loader stuck on a FIFO or a slow
        `cmd:` must not hold up a stop).

        `RELOADING=1` is always followed by `READY=1`, and every reload ends in a
        `reload` or a `reload_error` event.
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                result = await self._reload(reason)
            except Exception as exc:  # a bug: the daemon carries on with what it had
                log.exception("reload (%s) failed", reason)
                message = f"reload failed: {type(exc).__name__}"
                self.engine.emit("reload_error", self.clock.now(), message=message)
                self.server.after_change()
                result = P.ReloadResult(len(self.engine.profiles()), message)
            # Not after a cancel: the daemon is stopping (STOPPING=1 was sent).
            self.notifier.ready()
            self.notifier.status(self.status_line())
            return result

    async def _reload(self, reason: str) -> P.ReloadResult:
        last = self.loaded
        loaded = await trio.to_thread.run_sync(load_all, self.opts, last,
                                               abandon_on_cancel=True)
        self.loaded = loaded
        self._log_load(loaded)
        now = self.clock.now()
        self.engine.load(self.oauth.overlay(loaded.profiles), loaded.config, now=now)
        if self.cluster is not None:
            self.cluster.changed()
        n = len(loaded.profiles.profiles)
        if loaded.error:
            self.engine.emit("reload_error", now, message=loaded.error)
        else:
            self.loaded_at = now
            self.engine.emit("reload", now, profiles=n)
        self.server.after_change()
        if loaded.kept_profiles:
            log.warning("not reloaded (%s): kept the %d previous %s", reason, n,
                        "profile" if n == 1 else "profiles")
        else:
            kept = "; kept the previous config" if loaded.kept_config else ""
            log.info("reloaded (%s): %d profile(s)%s", reason, n, kept)
        return P.ReloadResult(len(self.engine.profiles()), loaded.error)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock_path = socket_path(self.opts, self.loaded.config)
        raise_fd_limit()  # one descriptor per agent: don't stop at the default 1024
        adopted = adopt_systemd_socket()
        bound = None
        lock = None
        if adopted is not None:
            listener = adopted
            name = adopted.getsockname()
            if isinstance(name, str) and name.startswith("/"):
                # A daemon started by hand on this path must see it taken.
                lock = lock_socket(Path(name))
            log.info("serving on a socket passed by systemd (%s)", name or "unnamed")
        else:
            bound = bind_unix_socket(sock_path)
            listener = bound.sock
            log.info("serving on %s", sock_path)
        stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.server.serve, listener)
                if self.gateway is not None:
                    await nursery.start(self.gateway.run)
                await nursery.start(self.saver.run)
                await nursery.start(self.oauth.run)
                if self.cluster is not None:
                    await nursery.start(self.cluster.run)
                nursery.start_soon(self._save_usage_now_and_then)
                if self.notifier.enabled:
                    nursery.start_soon(self._keep_status_current)
                watched = [
                    profiles_path(self.opts, self.loaded.config),
                    self.opts.config or default_config_path(),
                ]
                await nursery.start(
                    functools.partial(watch_files, watched, self._file_changed, stop_event=stop)
                )
                if self.notifier.watchdog_interval() is not None:
                    nursery.start_soon(self.notifier.run_watchdog)
                await nursery.start(self._signals, nursery.cancel_scope, stop)
                self.notifier.ready()
                self.notifier.status(self.status_line())
                task_status.started()
        finally:
            stop.set()
            with trio.CancelScope(shield=True):
                saved = await self.saver.save_now()
            if not saved:
                log.warning("stopping without saving the state: changes since the last "
                            "successful write (cooldowns, counts, flags) are lost; make %s "
                            "writable", self.store.path.parent)
            if bound is None:
                listener.close()
            else:
                bound.close()
            if lock is not None:
                lock.close()
            log.info("stopped")

    async def _save_usage_now_and_then(self) -> None:
        """Leases only move usage counters, which do not trigger a save: write them
        once a minute while leases happen (cooldowns and failures are saved at once)."""
        seen = dict(self.engine.counters)
        while True:
            await trio.sleep(USAGE_SAVE_EVERY)
            if self.engine.counters != seen:
                seen = dict(self.engine.counters)
                self.saver.mark_dirty()

    async def _file_changed(self) -> None:
        await self.reload("file changed")

    async def _signals(
        self,
        scope: trio.CancelScope,
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """SIGHUP reloads (in a task of its own: a slow load must not keep this loop
        from hearing SIGTERM); SIGTERM/SIGINT stop the daemon.

        A SIGHUP or SIGTERM the receiver has not handed out when it closes (one
        behind the SIGTERM that stops the daemon) is raised again by trio with the
        handlers from before the receiver: those are "ignore" here, so it cannot
        end a stopping daemon before its state is saved."""
        before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGHUP,
                                                                      signal.SIGTERM)}
        try:
            await self._signal_loop(scope, stop, task_status)
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    async def _signal_loop(self, scope: trio.CancelScope, stop: trio.Event,
                           task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            async with trio.open_nursery() as reloads:
                task_status.started()
                async for signum in sigs:
                    if signum == signal.SIGHUP:
                        reloads.start_soon(self.reload, "SIGHUP")
                        continue
                    log.info("stopping on %s", signal.Signals(signum).name)
                    self.notifier.stopping()
                    stop.set()
                    scope.cancel()
                    return
