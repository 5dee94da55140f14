"""The steps a service plan is made of, how they are carried out and printed.

A plan (`service.plan_install`, `plan_uninstall`) is a list of `Step`s built
without touching anything; `execute` carries them out with an injectable
command runner, and `--dry-run` prints them as shell (`step_to_shell`) or
JSON (`step_to_json`) instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import msgspec

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


def describe(step: Step) -> str:
    match step:
        case MakeDir(path, _):
            return f"made   {path}"
        case WriteFile(path, _, _):
            return f"wrote  {path}"
        case RemoveFile(path) | RemoveDir(path):
            return f"removed {path}"
        case Run(argv, _, _):
            return f"ran    {shlex.join(argv)}"
