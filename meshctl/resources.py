"""Files meshctl ships beside its package in the source checkout: the addons and the samples."""

from __future__ import annotations

from pathlib import Path

from meshctl.errors import MeshError

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def source_dir(name: str) -> Path:
    path = SOURCE_ROOT / name
    if not path.is_dir():
        raise MeshError(f"meshctl's {name}/ directory is missing (looked in {SOURCE_ROOT})",
                        "install meshctl from its source checkout with ./install.sh (pip install -e .)")
    return path
