"""`meshctl completion bash|zsh|fish` and `meshctl --version` (issue 18, CLI habits): kubectl's completion
command, and the version flag every CLI has."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import meshctl
from meshctl import __version__
from tests.unit.fuzzing import one_line, run_cli

ROOT = Path(meshctl.__file__).resolve().parent.parent  # the tree under test, put first on the shell's meshctl path


def test_version_flag_prints_the_short_version_and_exits_0(tmp_path: Path) -> None:
    flag = run_cli(tmp_path, "--version")
    assert (flag.code, flag.out, flag.err) == (0, f"meshctl {__version__}\n", "")
    short = run_cli(tmp_path, "version", "--short")  # no engine: the unit tests' context has none
    assert (short.code, short.out) == (0, flag.out)
    assert json.loads(run_cli(tmp_path, "version", "--short", "-o", "json").out) == {"client": __version__}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_a_script_that_calls_meshctl_back(tmp_path: Path, shell: str) -> None:
    ran = run_cli(tmp_path, "completion", shell)
    assert ran.code == 0, ran.err
    assert ran.out.strip() and "meshctl" in ran.out
    assert "_MESHCTL_COMPLETE" in ran.out  # the variable meshctl's entry point answers completion requests on


def test_an_unknown_shell_is_a_usage_error_naming_the_shells(tmp_path: Path) -> None:
    ran = run_cli(tmp_path, "completion", "pwsh")
    assert ran.code == 2
    line = one_line(ran.err)
    assert "pwsh" in line and all(shell in line for shell in ("bash", "zsh", "fish")), line


def complete_in_bash(tmp_path: Path, *words: str) -> list[str]:
    """Source `meshctl completion bash` in a real bash and run its completion function on WORDS, as bash does
    on <Tab>: the function calls `meshctl` (this tree's, put on PATH) with the completion protocol's env."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "meshctl"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m meshctl "$@"\n')
    shim.chmod(0o755)
    script = run_cli(tmp_path, "completion", "bash").out
    quoted = " ".join(f"'{w}'" for w in words)
    program = f"""
source /dev/stdin <<'MESHCTL_COMPLETION'
{script}
MESHCTL_COMPLETION
function=$(complete -p meshctl | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')
[ -n "$function" ] || {{ echo "the script registered no completion function for meshctl" >&2; exit 9; }}
COMP_WORDS=({quoted}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
"$function" meshctl
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "MESHCTL_HOME": str(tmp_path / "home")}
    done = subprocess.run([shutil.which("bash") or "bash", "--norc", "--noprofile", "-c", program], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_commands_and_the_shell_argument(tmp_path: Path) -> None:
    offered = complete_in_bash(tmp_path, "meshctl", "pro")
    assert {"proxy-status", "proxy-config"} <= set(offered), offered
    assert all(word.startswith("pro") for word in offered), offered
    assert complete_in_bash(tmp_path, "meshctl", "completion", "") == ["bash", "zsh", "fish"]
