"""Where the tests find Claude Code (`.ci/run` installs it with npm into .venv/claude-code)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

_LOCAL = Path(__file__).resolve().parent.parent / ".venv" / "claude-code" / "node_modules"


def claude_code() -> str | None:
    """The `claude` executable to test with: $ARGENT_TEST_CLAUDE, .venv's, or PATH's."""
    for candidate in (os.environ.get("ARGENT_TEST_CLAUDE"), str(_LOCAL / ".bin" / "claude"),
                      shutil.which("claude")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


needs_claude_code = pytest.mark.skipif(
    claude_code() is None,
    reason="Claude Code is not installed (.ci/run installs it with npm into .venv/claude-code; "
           "or set ARGENT_TEST_CLAUDE)")
