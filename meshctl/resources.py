"""Directories meshctl ships inside its packages, found the same way in a source checkout and in an installed
wheel: the sidecar's sources (the image is built from them) and the samples (`meshctl demo` meshes bookinfo)."""

from __future__ import annotations

from pathlib import Path

import sidecar
from meshctl.errors import MeshError

SIDECAR = Path(sidecar.__file__).resolve().parent
SAMPLES = Path(__file__).resolve().parent / "samples"


def shipped(path: Path) -> Path:
    if not path.is_dir():
        raise MeshError(f"meshctl's {path.name}/ directory is missing (looked for {path})",
                        "reinstall meshctl: `pip install meshctl-*.whl`, or ./install.sh in a source checkout")
    return path
