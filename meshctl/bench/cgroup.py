"""A container's CPU time and resident memory from the host's cgroup files, when the engine runs on this host.

The engine's own stats (`docker stats`) are collected once a second: each read waits up to a second for the next
collection, and its CPU figure is up to a second old. The bench reads every proxy before, during and after each
load, so that cost the quick bench two minutes in sampling alone, and made the cores per request rough. The cgroup
files are what the engine reads itself; they answer at once and to the nanosecond. A remote engine (DOCKER_HOST)
has none of them here: the bench then falls back to the engine's stats.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _v1(container_id: str, root: Path) -> tuple[Path, Path] | None:
    """cgroup v1: cpuacct and memory hierarchies, under the cgroupfs driver's `docker/` or systemd's scope."""
    for parent in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        cpu, mem = root / "cpuacct" / parent / "cpuacct.usage", root / "memory" / parent / "memory.stat"
        if cpu.is_file() and mem.is_file():
            return cpu, mem
    return None


def _v2(container_id: str, root: Path) -> Path | None:
    for parent in (f"system.slice/docker-{container_id}.scope", f"docker/{container_id}"):
        directory = root / parent
        if (directory / "cpu.stat").is_file() and (directory / "memory.stat").is_file():
            return directory
    return None


def _field(text: str, name: str) -> int | None:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return None


def usage(container_id: str, root: Path = ROOT) -> tuple[float, float] | None:
    """(CPU seconds used so far, resident memory in MB), as `docker stats` reports them; None when this host has
    no cgroup files for the container (a remote engine, an unknown layout)."""
    try:
        if (v1 := _v1(container_id, root)) is not None:
            cpu_ns = int(v1[0].read_text().strip())
            rss = _field(v1[1].read_text(), "rss")  # the engine's figure on cgroup v1
            return (cpu_ns / 1e9, rss / 2**20) if rss is not None else None
        if (v2 := _v2(container_id, root)) is not None:
            cpu_us = _field((v2 / "cpu.stat").read_text(), "usage_usec")
            anon = _field((v2 / "memory.stat").read_text(), "anon")  # the engine's figure on cgroup v2
            return (cpu_us / 1e6, anon / 2**20) if cpu_us is not None and anon is not None else None
    except (OSError, ValueError):  # the container just went: the engine's stats say so in their own words
        return None
    return None
