"""The import contracts in pyproject.toml ([tool.importlinter]): layers import one way, the sidecar never
imports meshctl, sibling packages have no cycles. CI runs `lint-imports` too; this makes a local pytest
catch an upward arrow as well."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]
RUN = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def test_the_tree_keeps_its_import_contracts() -> None:
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The dashboard once imported the SLO command's module: that arrow, planted again in a copy, fails."""
    for package in ("meshctl", "sidecar"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "meshctl" / "telemetry" / "planted.py").write_text("from meshctl.cli import slo\n")
    # a process of its own: this one has already imported the real tree, which the graph would be built from
    ran = subprocess.run([sys.executable, "-c", RUN], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "meshctl.telemetry is not allowed to import meshctl.cli" in ran.stdout
    assert "meshctl.telemetry.planted -> meshctl.cli.slo" in ran.stdout
