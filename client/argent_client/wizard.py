"""The setup wizard behind `argentctl setup` / `argentctl profiles add`.

It asks for (or takes from flags) a provider, type, name, label and the
secret, checks the secret against the provider's token shape, and merges
the profile into the file with `profiles_file.add_profile`. The secret is
read with hidden input or from stdin and never echoed or put in a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .profiles_file import (
    ProfileExists,
    add_profile,
    name_problem,
    read_profiles,
    real_path,
)
from .protocol import ProfileType
from .providers import (
    PROVIDERS,
    TOKEN_SHAPES,
    TYPE_ALIASES,
    fingerprint,
    normalise_provider,
    shape_problem,
    valid_provider,
)


class WizardAborted(Exception):
    """The user declined, or a needed answer is missing."""

# ------------------------------------------------------------ the wizard


@dataclass(slots=True)
class SetupOptions:
    """What `profiles add` / `setup` was given on the command line."""

    path: Path
    provider: str | None = None
    type: str | None = None
    name: str | None = None
    label: str | None = None
    priority: int | None = None
    secret_stdin: bool = False
    force: bool = False
    replace: bool = False


@dataclass(frozen=True, slots=True)
class SetupResult:
    id: str
    path: str
    fingerprint: str
    replaced: bool


@dataclass(slots=True)
class WizardIO:
    """The wizard's terminal: injectable so tests can drive it."""

    interactive: bool
    ask: Callable[[str], str]
    ask_secret: Callable[[str], str]
    read_stdin: Callable[[], str]
    err: TextIO


def guess_type(provider: str, secret: str) -> ProfileType:
    """The profile type a secret's prefix implies, else `api-key`."""
    for (p, t), prefixes in TOKEN_SHAPES.items():
        if p == provider and secret.startswith(prefixes):
            return t
    return "api-key"


def parse_type(raw: str) -> ProfileType:
    """Normalise a type name (`setup-token`, `api-key`, aliases); raises ValueError."""
    t = TYPE_ALIASES.get(raw.strip().lower())
    if t is None or t == "oauth":
        raise ValueError(f"unknown type {raw!r}: use setup-token or api-key")
    return t


def _missing(flag: str) -> WizardAborted:
    return WizardAborted(f"{flag} is required when the secret comes from stdin")


def _choose_provider(io: WizardIO) -> str:
    names = [*PROVIDERS, "other"]
    menu = "  ".join(f"{i}) {n}" for i, n in enumerate(names, 1))
    while True:
        raw = io.ask(f"Provider [{menu}]: ").strip()
        if raw.isdigit() and 1 <= int(raw) <= len(names):
            raw = names[int(raw) - 1]
            if raw == "other":
                raw = io.ask("Provider name (lower-case): ").strip()
        name = normalise_provider(raw)
        if name and valid_provider(name):
            return name
        print(f"  not a provider name: {raw!r}", file=io.err)


def _choose_type(io: WizardIO, provider: str) -> ProfileType:
    default: ProfileType = "setup-token" if provider == "anthropic" else "api-key"
    while True:
        raw = io.ask(f"Type [setup-token/api-key] ({default}): ").strip() or default
        try:
            return parse_type(raw)
        except ValueError as exc:
            print(f"  {exc}", file=io.err)


def _choose_name(io: WizardIO, provider: str) -> str:
    while True:
        raw = io.ask(f"Name (the id becomes {provider}:NAME): ").strip()
        problem = name_problem(raw)
        if problem is None:
            return raw
        print(f"  {problem}", file=io.err)


def run_setup(opts: SetupOptions, io: WizardIO) -> SetupResult:
    """Ask for (or take from `opts`) one profile and merge it into the file.

    Interactive (`io.interactive`, which the caller sets only when stdin is
    a terminal and `--secret-stdin` was not given): asks for what the flags
    did not give; the secret is read with hidden input. Otherwise every
    answer comes from flags and the secret from stdin. The secret is never
    echoed or put into a message.
    Raises `WizardAborted`, `ProfilesFileError`, `ProfileExists`, ValueError.
    """
    ask = io.interactive
    if ask:
        print(
            f"Adding a profile to {opts.path}.\n"
            "The secret is read with hidden input and never shown again.",
            file=io.err,
        )
    if opts.provider:
        provider = normalise_provider(opts.provider)
        if not valid_provider(provider):
            raise ValueError(f"not a provider name: {opts.provider!r}")
    else:
        if not ask:
            raise _missing("--provider")
        provider = _choose_provider(io)
    if opts.name:
        problem = name_problem(opts.name)
        if problem:
            raise ValueError(problem)
        name = opts.name
    else:
        if not ask:
            raise _missing("--name")
        name = _choose_name(io, provider)
    profile_id = f"{provider}:{name}"

    # Refuse early, before the secret is typed: a broken file or a taken id.
    doc = read_profiles(real_path(opts.path))
    if profile_id in doc.profiles and not opts.replace:
        raise ProfileExists(f"{profile_id} is already in {opts.path} (use --replace)")

    ptype: ProfileType | None = parse_type(opts.type) if opts.type else None
    if ptype is None and ask:
        ptype = _choose_type(io, provider)
    label = opts.label
    if label is None and ask:
        label = io.ask(f"Label ({name}): ").strip() or name

    if not ask:
        secret = io.read_stdin().strip()
    else:
        secret = io.ask_secret("Secret (input hidden): ").strip()
    if not secret:
        raise WizardAborted("no secret given")
    if ptype is None:
        ptype = guess_type(provider, secret)

    problem = shape_problem(provider, ptype, secret)
    if problem and not opts.force:
        if not ask:
            raise WizardAborted(f"{problem}; check it, or pass --force to save it anyway")
        print(f"warning: {problem}", file=io.err)
        if io.ask("Save it anyway? [y/N]: ").strip().lower() not in ("y", "yes"):
            raise WizardAborted("not saved")
    elif problem:
        print(f"warning: {problem} (saved anyway: --force)", file=io.err)

    replaced = add_profile(
        opts.path,
        profile_id,
        provider=provider,
        type=ptype,
        secret=secret,
        label=label,
        priority=opts.priority,
        replace=opts.replace,
    )
    return SetupResult(
        id=profile_id,
        path=str(real_path(opts.path)),
        fingerprint=fingerprint(secret),
        replaced=replaced,
    )
