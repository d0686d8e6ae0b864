from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from meshctl.errors import PermissionProblem
from meshctl.fsutil import atomic_write, ensure_dir, locked


def test_atomic_write_sets_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    atomic_write(target, b"secret", mode=0o600)
    atomic_write(target, "secret2", mode=0o600)
    assert target.read_text() == "secret2"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_ensure_dir_fixes_mode(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    assert ensure_dir(d, 0o700)
    d.chmod(0o755)
    assert ensure_dir(d, 0o700)
    assert d.stat().st_mode & 0o777 == 0o700
    assert not ensure_dir(d, 0o700)


def _bump(path_str: str, n: int) -> None:
    path = Path(path_str)
    for _ in range(n):
        with locked(path.with_suffix(".lock")):
            value = int(path.read_text())
            atomic_write(path, str(value + 1))


def test_lock_serialises_writers_across_processes(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [multiprocessing.Process(target=_bump, args=(str(counter), 25)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert int(counter.read_text()) == 200


def test_write_to_read_only_directory_is_a_clear_permission_error(unwritable_dir: Path) -> None:
    with pytest.raises(PermissionProblem) as info:
        atomic_write(unwritable_dir / "x", "data")
    assert str(unwritable_dir) in info.value.one_line()
    assert os.listdir(unwritable_dir) == []
