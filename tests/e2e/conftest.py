"""End-to-end fixtures: a real Docker engine. With CI=true a missing engine fails the test, never skips it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest
from docker import DockerClient


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Destructive tests (uninstall --purge) remove every meshctl image: run them after everything else."""
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerClient]:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        message = f"no Docker engine answers ({exc}); run ./install.sh to start one"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()
