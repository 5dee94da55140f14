"""`argentctl gateway token|rotate|status` and `argentctl exec … --gateway`.

The gateway lives in the daemon; these commands read its local token from
the token file (`gateway.token_path()`), ask the daemon where it listens
(`status.gateway`), and point a child at it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from .gateway import (
    BASE_URL_VARS,
    TokenFileError,
    gateway_env,
    read_token,
    rotate_token,
    token_path,
)
from .protocol import GatewayStatus, StatusResult

EPILOG = """\
The gateway is a local HTTP server inside argentd that speaks each provider's
own API: point a tool's base URL at it, give it the local token as its API key,
and argentd leases a profile per request, swaps in the real credential and
rotates on 429/quota/auth faults (docs/gateway.md).

examples:
  argentctl gateway status
  export ANTHROPIC_BASE_URL=http://127.0.0.1:8411/anthropic
  export ANTHROPIC_API_KEY="$(argentctl gateway token)"
  argentctl gateway rotate          # a new local token (tools must pick it up)
  argentctl exec --route code --gateway -- claude"""


def add_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `gateway` with argentctl's `add` helper (see cli.build_parser)."""
    p = add("gateway", "the local HTTP gateway: its token, its address", EPILOG)
    p.add_argument("action", choices=("token", "rotate", "status"),
                   help="token: print the local token; rotate: replace it; "
                        "status: where the gateway listens")
    p.set_defaults(func=cmd_gateway)


def _status(args: argparse.Namespace) -> StatusResult:
    from .commands import _call

    result: StatusResult = _call(args, lambda c: c.status(), name="argentctl gateway")
    return result


def cmd_gateway(args: argparse.Namespace, out: Any) -> int:
    from .commands import CliError, ExitCode

    path = token_path()
    if args.action in ("token", "rotate"):
        try:
            token = rotate_token(path) if args.action == "rotate" else read_token(path)
        except FileNotFoundError:
            raise CliError(f"no gateway token at {path} yet",
                           ExitCode.NOT_FOUND,
                           fix="start argentd (it makes the token at its first start), "
                               "or run `argentctl gateway rotate`") from None
        except TokenFileError as exc:
            raise CliError(str(exc), ExitCode.REFUSED) from None
        if out.json:
            out.print_json({"token": token, "path": str(path)})
        else:
            out.line(token)
            if args.action == "rotate":
                out.note("argentctl: new local token written; tools holding the old one get "
                         "401 from the next request: give them this one")
        return int(ExitCode.OK)
    status = _status(args)
    gw = status.gateway or GatewayStatus(error="this daemon has no gateway (an older argentd)")
    if out.json:
        out.print_json({"url": gw.url, "error": gw.error, "token_path": str(path)})
    elif gw.url:
        out.line(f"gateway: {gw.url}")
        out.line(f"token:   {path} (`argentctl gateway token` prints it)")
        for provider, (var, suffix) in BASE_URL_VARS.items():
            out.line(f"  {provider:<11} {var}={gw.url}{suffix}")
        for route in status.routes:
            out.line(f"  route {route:<5} ANTHROPIC_BASE_URL={gw.url}/route/{route}  "
                     f"OPENAI_BASE_URL={gw.url}/route/{route}/v1")
    else:
        out.line(f"gateway: off ({gw.error or 'listen is empty in argentd.toml'})")
    return int(ExitCode.OK if gw.url else ExitCode.FAILURE)


def exec_gateway(args: argparse.Namespace, out: Any) -> int:
    """`argentctl exec PROVIDER|--route R --gateway -- CMD…`: CMD talks to the gateway."""
    from .commands import CliError, ExitCode
    from .execute import run_child
    from .facts import normalise_provider

    command: list[str] = args.cmd
    status = _status(args)
    gw = status.gateway
    if gw is None or gw.url is None:
        why = gw.error if gw is not None and gw.error else "listen is empty in argentd.toml"
        raise CliError(f"the gateway is off: {why}", ExitCode.UNAVAILABLE,
                       fix="set [gateway] listen in argentd.toml (default 127.0.0.1:8411)")
    try:
        token = read_token(token_path())
    except (FileNotFoundError, TokenFileError) as exc:
        raise CliError(f"cannot read the gateway token: {exc}", ExitCode.FAILURE) from None
    if args.route:
        if args.route not in status.routes:
            raise CliError(f"unknown route {args.route!r}", ExitCode.NOT_FOUND,
                           fix="add it under [routes] in argentd.toml")
        providers = {normalise_provider(t.partition("/")[0]) for t in status.routes[args.route]}
        env = gateway_env(os.environ, gw.url, token, route=args.route, drop_providers=providers)
    else:
        try:
            env = gateway_env(os.environ, gw.url, token,
                              provider=normalise_provider(args.provider))
        except ValueError as exc:
            raise CliError(str(exc), ExitCode.USAGE) from None
    if args.verbose:
        via = f"route {args.route}" if args.route else args.provider
        out.note(f"argentctl: {command[0]} talks to {gw.url} ({via}); argentd rotates "
                 "on every request")
    rc = run_child(command, env)
    if out.json:
        sys.stderr.write(msgspec.json.encode({"gateway": gw.url, "exit_code": rc}).decode()
                         + "\n")
    return rc


def doctor_check(status: StatusResult) -> Any:
    """doctor's verdict on the gateway the daemon reports (a `doctor.Check`)."""
    from .doctor import Check

    gw = status.gateway
    if gw is None:
        return Check("gateway", "warn", "this daemon reports no gateway",
                     "install the same argentd version for the daemon and argentctl")
    if gw.url:
        return Check("gateway", "ok", f"listening on {gw.url}")
    if gw.error:
        return Check("gateway", "fail", gw.error,
                     "free the port, or set [gateway] listen in argentd.toml to a free "
                     "HOST:PORT (\"127.0.0.1:0\" takes any) or \"\" to turn it off; "
                     "then restart argentd")
    return Check("gateway", "ok", "off ([gateway] listen is empty)")


def status_line(status: StatusResult) -> str | None:
    """The `argentctl status` line about the gateway."""
    gw = status.gateway
    if gw is None:
        return None
    if gw.url:
        return f"Gateway: {gw.url} (token: `argentctl gateway token`)"
    return f"Gateway: off{f' ({gw.error})' if gw.error else ''}"
