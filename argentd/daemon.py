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
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from argent_client import protocol as P
from argent_client.paths import (
    default_config_path,
    home_profiles_path,
    runtime_socket_path,
    state_dir,
)

from . import log as logmod
from .clock import Clock
from .config import DEFAULT_CONFIG, Config, ConfigError, load_config
from .engine import Engine
from .model import ProfileSet
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
from .snapshot import decode_snapshot
from .state import Saver, StateStore

if TYPE_CHECKING:
    from .cluster import Cluster

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


def load_all(opts: Options, last: Loaded | None) -> Loaded:
    """Read argentd.toml and the profiles file (blocking; run in a thread).

    A file-level fault keeps `last` (or, with none, the defaults and the
    environment fallback) and returns the fault as `error`.
    """
    config_path = opts.config or default_config_path()
    errors: list[str] = []
    try:
        config = load_config(config_path, required=opts.config is not None)
    except ConfigError as exc:
        errors.append(str(exc))
        config = last.config if last else DEFAULT_CONFIG
    path = profiles_path(opts, config)
    try:
        profiles = load_profiles(path, os.environ)
    except ProfilesError as exc:
        errors.append(str(exc))
        profiles = last.profiles if last else ProfileSet(env_profiles(os.environ))
    else:
        errors.extend(profiles.errors)
    # One line per problem: argentctl status and doctor print each on its own.
    return Loaded(config, profiles, "\n".join(errors) or None)


def _first_path(flag: Path | None, env: str, configured: str | None, default: Path) -> Path:
    """The one precedence: the flag, else the environment, else argentd.toml, else default."""
    if flag is not None:
        return flag
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    if configured:
        return Path(configured).expanduser()
    return default


def profiles_path(opts: Options, config: Config) -> Path:
    """--profiles, else $ARGENT_PROFILES, else `profiles` in the config, else the default."""
    return _first_path(opts.profiles, "ARGENT_PROFILES", config.profiles, home_profiles_path())


def socket_path(opts: Options, config: Config) -> Path:
    """--socket, else $ARGENT_SOCKET, else `socket` in the config, else the default."""
    return _first_path(opts.socket, "ARGENT_SOCKET", config.socket, runtime_socket_path())


class Daemon:
    def __init__(self, opts: Options, *, clock: Clock | None = None) -> None:
        self.opts = opts
        self.clock = clock or Clock()
        self.loaded = load_all(opts, None)
        self._log_load(self.loaded)
        now = self.clock.now()
        self.loaded_at: float | None = now
        self.engine = Engine(self.loaded.profiles, self.loaded.config, now=now)
        self.store = StateStore((opts.state or state_dir()) / "state.json")
        raw = self.store.load()
        if raw is not None:
            try:
                self.engine.restore(decode_snapshot(raw), now=now)
            except Exception as exc:  # a well-formed file of the wrong shape
                log.warning("state file %s ignored: %s", self.store.path, exc)
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
        )
        self._reload_lock = trio.Lock()
        self._status_dirty = trio.Event()
        self.cluster = self._make_cluster()

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
            error=self.loaded.error,
            config_path=str(self.opts.config or default_config_path()),
        )

    def _changed(self) -> None:
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
        """Reload both files; a bad file keeps the last good profiles."""
        async with self._reload_lock:
            self.notifier.reloading()
            last = self.loaded
            loaded = await trio.to_thread.run_sync(load_all, self.opts, last)
            self.loaded = loaded
            self._log_load(loaded)
            now = self.clock.now()
            self.engine.load(loaded.profiles, loaded.config, now=now)
            if self.cluster is not None:
                self.cluster.changed()
            if loaded.error:
                self.engine.emit("reload_error", now, message=loaded.error)
            else:
                self.loaded_at = now
                self.engine.emit("reload", now, profiles=len(loaded.profiles.profiles))
            self.server.after_change()
            log.info("reloaded (%s): %d profile(s)", reason, len(loaded.profiles.profiles))
            self.notifier.ready()
            self.notifier.status(self.status_line())
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
                await nursery.start(self.saver.run)
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
                await self.saver.save_now()
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
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            task_status.started()
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    try:
                        await self.reload("SIGHUP")
                    except Exception:  # a reload bug must not stop the daemon
                        log.exception("reload on SIGHUP failed")
                    continue
                log.info("stopping on %s", signal.Signals(signum).name)
                self.notifier.stopping()
                stop.set()
                scope.cancel()
                return
