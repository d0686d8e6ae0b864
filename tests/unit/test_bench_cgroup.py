"""The bench's per-container CPU and memory from cgroup files: cgroup v1 (cgroupfs and systemd drivers) and v2
layouts as the engine writes them, read as `docker stats` reports them; anything else falls back (None)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.bench import cgroup

ID = "ab" * 32


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize("parent", [f"docker/{ID}", f"system.slice/docker-{ID}.scope"])
def test_cgroup_v1(tmp_path: Path, parent: str) -> None:
    write(tmp_path, {f"cpuacct/{parent}/cpuacct.usage": "3062943042\n",
                     f"memory/{parent}/memory.stat": "cache 4096\nrss 55123968\nrss_huge 0\ntotal_rss 99\n"})
    assert cgroup.usage(ID, tmp_path) == (3.062943042, 55123968 / 2**20)


@pytest.mark.parametrize("parent", [f"system.slice/docker-{ID}.scope", f"docker/{ID}"])
def test_cgroup_v2(tmp_path: Path, parent: str) -> None:
    write(tmp_path, {f"{parent}/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
                     f"{parent}/memory.stat": "anon 1048576\nfile 4096\nanon_thp 0\n"})
    assert cgroup.usage(ID, tmp_path) == (2.5, 1.0)


@pytest.mark.parametrize("files", [
    {},  # a remote engine: nothing here
    {f"cpuacct/docker/{ID}/cpuacct.usage": "12\n"},  # half a layout
    {f"cpuacct/docker/{ID}/cpuacct.usage": "x\n", f"memory/docker/{ID}/memory.stat": "rss 1\n"},
    {f"cpuacct/docker/{ID}/cpuacct.usage": "12\n", f"memory/docker/{ID}/memory.stat": "cache 1\n"},
    {f"docker/{ID}/cpu.stat": "user_usec 1\n", f"docker/{ID}/memory.stat": "anon 1\n"},
])
def test_anything_else_falls_back_to_the_engines_stats(tmp_path: Path, files: dict[str, str]) -> None:
    write(tmp_path, files)
    assert cgroup.usage(ID, tmp_path) is None
    assert cgroup.usage("cd" * 32, tmp_path) is None
