from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from meshctl.config.store import Resource, Store
from meshctl.errors import InvalidInput


def _add(name: str) -> object:
    def change(resources: list[Resource]) -> list[Resource]:
        return [*resources, {"kind": "VirtualService", "metadata": {"name": name}}]
    return change


def test_init_is_idempotent_and_starts_at_zero(tmp_path: Path) -> None:
    store = Store(tmp_path / "config")
    assert store.init(1.0)
    assert not store.init(2.0)
    assert store.current_number() == 0
    assert store.read().resources == []


def test_commit_bumps_revision_and_keeps_history(tmp_path: Path) -> None:
    store = Store(tmp_path / "config")
    store.init(0)
    store.commit(_add("a"), "add a", 1)  # type: ignore[arg-type]
    rev = store.commit(_add("b"), "add b", 2)  # type: ignore[arg-type]
    assert rev.revision == 2
    assert [r["metadata"]["name"] for r in store.read().resources] == ["a", "b"]
    assert [r.revision for r in store.history()] == [0, 1, 2]
    assert store.read(1).resources == [{"kind": "VirtualService", "metadata": {"name": "a"}}]


def test_failed_change_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "config")
    store.init(0)

    def bad(resources: list[Resource]) -> list[Resource]:
        raise InvalidInput("nope")

    with pytest.raises(InvalidInput):
        store.commit(bad, "bad", 1)
    assert store.current_number() == 0
    assert len(store.history()) == 1


def _writer(root: str, name: str) -> None:
    Store(Path(root)).commit(_add(name), f"add {name}", 0)  # type: ignore[arg-type]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "config")
    store.init(0)
    procs = [multiprocessing.Process(target=_writer, args=(str(store.root), f"r{i}")) for i in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert store.current_number() == 20
    names = sorted(r["metadata"]["name"] for r in store.read().resources)
    assert names == sorted(f"r{i}" for i in range(20))
    for rev in range(21):
        json.loads((store.root / "revisions" / f"{rev:06d}.json").read_text())
