"""Bad input gets one clear line on stderr, a non-zero exit, and changes nothing. No engine is needed."""

from __future__ import annotations

from pathlib import Path

from meshctl.status import ExitCode
from tests.unit.cli import meshctl

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


def test_unknown_output_format(home: Path) -> None:
    done = meshctl("install", "-o", "xml", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.USAGE
    line = one_error_line(done.err)
    assert "xml" in line and "table" in line and "meshctl install -h" in line
    assert not home.exists()


def test_invalid_trust_domain(home: Path) -> None:
    done = meshctl("install", "--trust-domain", "Not A Domain", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.USAGE
    assert "--trust-domain" in one_error_line(done.err)
    assert not home.exists()


def test_invalid_subnet(home: Path) -> None:
    done = meshctl("install", "--network-subnet", "10.0.0.0/33", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.USAGE
    assert "--network-subnet" in one_error_line(done.err)


def test_unknown_command_is_one_line() -> None:
    done = meshctl("instal")
    assert done.code == ExitCode.USAGE
    assert "instal" in one_error_line(done.err)


def test_unreachable_engine_changes_nothing(home: Path) -> None:
    done = meshctl("install", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.ENGINE
    line = one_error_line(done.err)
    assert "/nonexistent/docker.sock" in line and "dockerd" in line
    assert not home.exists()


def test_debug_shows_the_traceback(home: Path) -> None:
    done = meshctl("--debug", "install", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.ENGINE
    assert "Traceback" in done.err


def test_unwritable_home(unwritable_dir: Path) -> None:
    home = unwritable_dir / "mesh"
    done = meshctl("install", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.PERMISSION
    line = one_error_line(done.err)
    assert str(home) in line and "MESHCTL_HOME" in line
    assert not home.exists()


def test_check_without_engine_fails_with_hints(home: Path) -> None:
    done = meshctl("check", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.FAILED
    assert "× engine: cannot reach the Docker engine" in done.out
    assert "hint:" in done.out


def test_version_without_engine_still_prints_the_client(home: Path) -> None:
    done = meshctl("version", "-o", "json", home=home, env=NO_ENGINE)
    assert done.code == 0
    assert '"client": "0.1.0"' in done.out and "unknown" in done.out
