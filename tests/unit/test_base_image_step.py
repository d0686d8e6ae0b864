"""`meshctl install`'s base-image step: our own base image is rebuilt when its Debian package list changes
(nftables was added for the capture self-check); an image the user named is never rebuilt."""

from __future__ import annotations

from pathlib import Path

from meshctl import const
from meshctl.context import Context
from meshctl.home import MeshHome, MeshSettings
from meshctl.lifecycle import install
from meshctl.runtime import images
from tests.unit.fakes import FakeEngine, FakeImage


def step(tmp_path: Path, base_image: str, label: str | None) -> install.BaseImageStep:
    found = {} if label is None else {base_image: FakeImage("base", {const.LABEL_BUILD_HASH: label})}
    ctx = Context(home=MeshHome(tmp_path / "home"), cache_dir=tmp_path, docker_factory=lambda: FakeEngine(found))
    return install.BaseImageStep(ctx, MeshSettings(base_image=base_image))


def test_the_package_list_feeds_the_build_hash() -> None:
    assert "nftables" in const.BASE_PACKAGES
    assert images.base_build_hash() != images.base_build_hash([p for p in const.BASE_PACKAGES if p != "nftables"])


def test_our_base_image_is_rebuilt_when_its_packages_changed(tmp_path: Path) -> None:
    assert step(tmp_path, const.BASE_IMAGE, images.base_build_hash()).pending() is None
    stale = images.base_build_hash([p for p in const.BASE_PACKAGES if p != "nftables"])
    assert "build meshctl/base" in (step(tmp_path, const.BASE_IMAGE, stale).pending() or "")
    assert step(tmp_path, const.BASE_IMAGE, None).pending()  # no image yet


def test_an_image_the_user_named_is_left_alone(tmp_path: Path) -> None:
    assert step(tmp_path, "registry.example/base:1", "whatever").pending() is None
