"""Leaving a process without tearing the interpreter down (`argentd`, `argentctl`).

At exit Python frees every module and runs the garbage collector over
what they held; with trio, rich and msgspec loaded that costs more CPU
than many argentctl commands take in all, and it delays a stopping
daemon's exit after its state is already on disk. Both commands end
through `exit_now` once their work is done: output is flushed here, their
files are closed by `with` blocks (the state by an fsync'd rename), and
the threads left are daemon threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def exit_after(main: Callable[[], int]) -> NoReturn:
    """`exit_now(main())`; a `SystemExit` from `main` (argparse's --help, --version and
    usage errors) ends the same way, with the code and message `sys.exit` would give."""
    try:
        code = main()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """Flush logging, stdout and stderr, then `os._exit(code)` (no finalization)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A reader that left (`| head`), or a closed stream: nothing more to say.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
