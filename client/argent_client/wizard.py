"""The setup wizard behind `argentctl setup` / `argentctl profiles add`.

It asks for (or takes from flags) a provider, type, name, label and the
secret, checks the secret against the provider's token shape, and merges
the profile into the file with `profiles_file.add_profile`. The secret is
read with hidden input or from stdin and never echoed or put in a message.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .facts import did_you_mean, suggest_provider, token_problem
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
    a_or_an,
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


def _missing(flag: str) -> ValueError:
    # A usage error (exit 2): the command line lacks what stdin input needs.
    return ValueError(f"{flag} is required when the secret comes from stdin")


def _yes(io: WizardIO, prompt: str, default: bool) -> bool:
    raw = io.ask(prompt).strip().lower()
    if not raw:
        return default
    return raw in ("y", "yes")


def _checked_provider(io: WizardIO, raw: str, ask: bool, force: bool) -> str:
    """`raw` normalised; a likely typo of a known provider is offered (or refused)."""
    name = normalise_provider(raw)
    if not valid_provider(name):
        raise ValueError(f"not a provider name: {raw!r}{did_you_mean(name)}")
    known = suggest_provider(name)
    if known is None or force:
        return name
    if not ask:
        raise WizardAborted(
            f"unknown provider {name!r} (did you mean {known}?); pass --force to add it anyway"
        )
    if _yes(io, f"{name} is not a known provider. Did you mean {known}? [Y/n]: ", True):
        return known
    return name


def _choose_provider(io: WizardIO, force: bool) -> str:
    names = [*PROVIDERS, "other"]
    menu = "  ".join(f"{i}) {n}" for i, n in enumerate(names, 1))
    while True:
        raw = io.ask(f"Provider [{menu}]: ").strip()
        if raw.isdigit() and 1 <= int(raw) <= len(names):
            raw = names[int(raw) - 1]
            if raw == "other":
                raw = io.ask("Provider name (lower-case): ").strip()
        try:
            return _checked_provider(io, raw, True, force)
        except ValueError as exc:
            print(f"  {exc}", file=io.err)


def _choose_type(io: WizardIO, provider: str) -> ProfileType:
    default: ProfileType = "setup-token" if provider == "anthropic" else "api-key"
    while True:
        raw = io.ask(f"Type [setup-token/api-key] ({default}): ").strip() or default
        try:
            return parse_type(raw)
        except ValueError as exc:
            print(f"  {exc}", file=io.err)


def _choose_name(io: WizardIO, provider: str, taken: Container[str], path: Path) -> str:
    while True:
        raw = io.ask(f"Name (the id becomes {provider}:NAME): ").strip()
        problem = name_problem(raw)
        if problem is None and f"{provider}:{raw}" in taken:
            problem = f"{provider}:{raw} is already in {path}: choose another name"
        if problem is None:
            return raw
        print(f"  {problem}", file=io.err)


def _choose_secret(
    io: WizardIO, provider: str, ptype: ProfileType | None, force: bool
) -> tuple[str, ProfileType]:
    """Ask for the secret until it is one the daemon accepts and the user keeps.

    A secret that looks like the provider's other type is offered as that
    type; a declined shape warning asks for the secret again.
    """
    while True:
        secret = io.ask_secret("Secret (input hidden): ").strip()
        if not secret:
            raise WizardAborted("no secret given")
        refused = token_problem(secret)
        if refused:
            print(f"  {refused}; the daemon would refuse it. Paste it again.", file=io.err)
            continue
        guessed = guess_type(provider, secret)
        kind = ptype or guessed
        problem = shape_problem(provider, kind, secret)
        if problem is None or force:
            if problem:
                print(f"warning: {problem} (saved anyway: --force)", file=io.err)
            return secret, kind
        print(f"warning: {problem}", file=io.err)
        if guessed != kind and shape_problem(provider, guessed, secret) is None:
            if _yes(io, f"Save it as {a_or_an(guessed)} {guessed}? [Y/n]: ", True):
                return secret, guessed
        elif _yes(io, "Save it anyway? [y/N]: ", False):
            return secret, kind
        print("  Not saved. Paste the secret again (Ctrl-C to stop).", file=io.err)


def run_setup(opts: SetupOptions, io: WizardIO) -> SetupResult:
    """Ask for (or take from `opts`) one profile and merge it into the file.

    Interactive (`io.interactive`, which the caller sets only when stdin is
    a terminal and `--secret-stdin` was not given): asks for what the flags
    did not give, and asks again after a wrong answer (a taken name, a
    refused or mistyped secret); the secret is read with hidden input.
    Otherwise every answer comes from flags and the secret from stdin. The
    secret is never echoed or put into a message.
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
        provider = _checked_provider(io, opts.provider, ask, opts.force)
    else:
        if not ask:
            raise _missing("--provider")
        provider = _choose_provider(io, opts.force)
    # Refuse early, before the secret is typed: a broken file or a taken id.
    doc = read_profiles(real_path(opts.path))
    taken: Container[str] = () if opts.replace else doc.profiles
    if opts.name:
        problem = name_problem(opts.name)
        if problem:
            raise ValueError(problem)
        name = opts.name
        if f"{provider}:{name}" in taken:
            raise ProfileExists(f"{provider}:{name} is already in {opts.path} (use --replace)")
    else:
        if not ask:
            raise _missing("--name")
        name = _choose_name(io, provider, taken, opts.path)
    profile_id = f"{provider}:{name}"

    ptype: ProfileType | None = parse_type(opts.type) if opts.type else None
    if ptype is None and ask:
        ptype = _choose_type(io, provider)
    label = opts.label
    if label is None and ask:
        label = io.ask(f"Label ({name}): ").strip() or name

    if ask:
        secret, ptype = _choose_secret(io, provider, ptype, opts.force)
    else:
        secret = io.read_stdin().strip()
        if not secret:
            raise WizardAborted("no secret given")
        refused = token_problem(secret)
        if refused:
            # --force cannot help: the daemon would refuse it on every load.
            raise WizardAborted(f"{refused}; the daemon would refuse it, so it was not saved")
        ptype = ptype or guess_type(provider, secret)
        problem = shape_problem(provider, ptype, secret)
        if problem and not opts.force:
            raise WizardAborted(f"{problem}; check it, or pass --force to save it anyway")
        if problem:
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
