"""Shared helpers: run the real `meshctl` entry point as a subprocess, the way users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def ctrl_c_reaches_it() -> None:
    """preexec_fn for a child a test stops with SIGINT, as Ctrl-C stops a foreground command. A shell starts its
    background jobs (a CI runner's, `cmd &`) with SIGINT ignored and children inherit that: Python then never
    raises KeyboardInterrupt, and the test would measure the shell's job control instead of meshctl."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Done:
    code: int
    out: str
    err: str


def meshctl(*args: str, home: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600,
            stdin: str | None = None) -> Done:
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    if home is not None:
        full_env["MESHCTL_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "meshctl", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=stdin, cwd=REPO)
    return Done(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "mesh-home"
