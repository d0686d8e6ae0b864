"""The unit tests' in-process CLI (tests/unit/cli.py) answers as the real process does: the same exit codes, the
same stdout and the same one-line errors on stderr, tracebacks only with --debug; and it leaves this process as
it found it (environment, cwd, argv, streams), so one call cannot leak into the next."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from meshctl.status import ExitCode
from tests import conftest
from tests.unit.cli import TimedOut, meshctl
from tests.unit.fakes import FakeEngine

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
"""


@pytest.mark.parametrize("argv, stdin, code", [
    (["instal"], None, ExitCode.USAGE),  # one line naming the command
    (["install", "-o", "xml"], None, ExitCode.USAGE),  # a bad flag value
    (["install"], None, ExitCode.ENGINE),  # no engine: one line
    (["--debug", "install"], None, ExitCode.ENGINE),  # the traceback, on stderr only
    (["get", "vs", "-o", "json"], None, ExitCode.OK),  # data on stdout
    (["apply", "-f", "-"], VS + "  bogus: 1\n", ExitCode.INVALID_INPUT),  # an invalid file read from stdin
])
def test_in_process_answers_as_the_process_does(installed_home: Path, argv: list[str], stdin: str | None,
                                                code: ExitCode) -> None:
    here = meshctl(*argv, home=installed_home, env=NO_ENGINE, stdin=stdin)
    there = conftest.meshctl(*argv, home=installed_home, env=NO_ENGINE, stdin=stdin)
    assert here.code == there.code == code, (here, there)
    if "--debug" in argv:  # the traceback's frames differ (the entry's), its last line does not
        assert "Traceback" in here.err and "Traceback" in there.err
        assert here.err.splitlines()[-1] == there.err.splitlines()[-1]
    else:
        assert (here.out, here.err) == (there.out, there.err)


def test_the_process_state_is_put_back(installed_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)
    before = (dict(os.environ), os.getcwd(), list(sys.argv), sys.stdin, sys.stdout, sys.stderr)
    assert meshctl("apply", "-f", "-", home=installed_home, stdin=VS).code == 0
    assert meshctl("nope", home=installed_home).code == ExitCode.USAGE
    assert (dict(os.environ), os.getcwd(), list(sys.argv), sys.stdin, sys.stdout, sys.stderr) == before


def test_output_width_is_the_same_on_every_call(installed_home: Path) -> None:
    """Rich consoles are made per call from COLUMNS: a narrow call does not narrow the next one."""
    assert meshctl("apply", "-f", "-", home=installed_home, stdin=VS).code == 0
    wide = meshctl("get", "vs", home=installed_home).out
    narrow = meshctl("get", "vs", home=installed_home, env={"COLUMNS": "20"}).out
    assert narrow != wide and meshctl("get", "vs", home=installed_home).out == wide


def test_an_engine_factory_reaches_the_commands(installed_home: Path) -> None:
    """`engine=` gives commands a fake engine: prune finds no project's containers and lists nothing to remove."""
    done = meshctl("prune", "--dry-run", home=installed_home, engine=lambda: FakeEngine())
    assert done.code == 0, done.err


def test_a_hang_fails_instead_of_waiting_forever(installed_home: Path) -> None:
    def hang() -> FakeEngine:
        import time

        time.sleep(5)
        return FakeEngine()

    with pytest.raises(TimedOut):
        meshctl("prune", "--dry-run", home=installed_home, engine=hang, timeout=0.2)
