"""The import contracts in pyproject.toml ([tool.importlinter]): layers import one way, the sidecar never
imports meshctl, sibling packages have no cycles. CI runs `lint-imports` too; this makes a local pytest
catch an upward arrow as well."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]
RUN = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def test_the_tree_keeps_its_import_contracts() -> None:
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


@pytest.mark.parametrize(("plant", "text", "reported"), [
    # the dashboard once imported the SLO command's module
    ("meshctl/telemetry/planted.py", "from meshctl.cli import slo\n",
     ["meshctl.telemetry is not allowed to import meshctl.cli", "meshctl.telemetry.planted -> meshctl.cli.slo"]),
    ("sidecar/planted.py", "import meshctl.const\n", ["sidecar.planted -> meshctl.const"]),
    # a new module has no layer, so nothing would be checked for it
    ("meshctl/planted.py", "", ["not listed as layers", "meshctl.planted"]),
])
def test_a_planted_breach_fails(tmp_path: Path, plant: str, text: str, reported: list[str]) -> None:
    for package in ("meshctl", "sidecar"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / plant).write_text(text)
    # a process of its own: this one has already imported the real tree, which the graph would be built from
    ran = subprocess.run([sys.executable, "-c", RUN], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert ran.returncode == 1, ran.stdout + ran.stderr
    for line in reported:
        assert line in ran.stdout, ran.stdout
