"""`meshctl ARGS` in this process: the unit tests' CLI, without ~0.4 s of interpreter start-up per call.

It runs the console script's own entry (`meshctl.cli.main`, whose handler turns errors into exit codes and one
line on stderr) under typer's CliRunner isolation, with the environment tests/conftest.py's subprocess helper
gives (NO_COLOR, COLUMNS=200, MESHCTL_HOME), and returns the same `Done`. It runs in the test's current
directory, as a command typed in a shell would (a test's monkeypatch.chdir counts). Tests about the
process itself (concurrent processes racing on the store, signals, start-up, `python -m meshctl`) and the e2e
tests keep the subprocess helper, `tests.conftest.meshctl`.

One call at a time: CliRunner swaps sys.stdin/stdout/stderr and os.environ for the whole interpreter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from typer.testing import CliRunner

from meshctl import cli
from meshctl.context import Context
from meshctl.errors import EngineError
from meshctl.home import MeshHome, default_home
from tests.conftest import Done

__all__ = ["Done", "meshctl", "no_engine"]


def no_engine() -> Any:
    """An engine factory for commands that must never reach Docker (another process may be using it)."""
    raise EngineError("no engine in unit tests")


class TimedOut(BaseException):
    """Raised in the command when `timeout` passes: a BaseException, so the CLI's handler does not swallow it."""


@contextlib.contextmanager
def _bounded(timeout: float | None) -> Iterator[None]:
    """A hang fails the test, as the subprocess helper's timeout does (SIGALRM: main thread only)."""
    if not timeout or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimedOut(f"meshctl did not finish within {timeout} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """What a new process would have as sys.argv; put back after."""
    old_argv = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = old_argv


def _exit_code(exc: SystemExit) -> int:
    """The status a process ending with `exc` would have (sys.exit(None) is 0, sys.exit("text") prints it: 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def meshctl(*args: str, home: os.PathLike[str] | str | None = None, env: dict[str, str] | None = None,
            timeout: float | None = 600, stdin: str | None = None,
            engine: Callable[[], Any] | None = None, nodes: Callable[[str], Any] | None = None) -> Done:
    """Run `meshctl ARGS` in process; `engine` (a docker client factory, e.g. `no_engine` or a fake's) replaces
    the real engine connection, through the Context the commands get, as tests/unit/fakes.py's engines do;
    `nodes` (e.g. fakes.node_engines) the other nodes' engines of a cluster."""
    full_env = {"NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    if home is not None:
        full_env["MESHCTL_HOME"] = str(home)
    with CliRunner().isolation(input=stdin, env=full_env) as (out, err, _), _argv(["meshctl", *args]):
        try:
            with _bounded(timeout):
                if engine is None:
                    cli.main()  # the console script's entry: always ends in SystemExit
                    code = 0
                else:  # main() with a Context of our own (made here: its consoles write to the captured streams)
                    obj = Context(home=MeshHome(default_home()), docker_factory=engine)
                    if nodes is not None:
                        obj.node_factory = nodes
                    code = cli.run(list(args), obj=obj)
        except SystemExit as exc:
            code = _exit_code(exc)
        sys.stdout.flush()
        sys.stderr.flush()
        return Done(code, out.getvalue().decode(), err.getvalue().decode())
