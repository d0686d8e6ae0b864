"""`meshctl install`'s base-image step: our own base image is rebuilt when its Debian package list changes
(nftables was added for the capture self-check); an image the user named is never rebuilt."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshctl import const
from meshctl.home import MeshSettings
from meshctl.lifecycle import install
from meshctl.runtime import images


def step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_image: str, label: str | None) -> install.BaseImageStep:
    image = None if label is None else SimpleNamespace(attrs={"Config": {"Labels": {const.LABEL_BUILD_HASH: label}}})
    monkeypatch.setattr(images, "find_image", lambda client, ref: image)
    ctx: Any = SimpleNamespace(docker=lambda: object(), cache_dir=tmp_path)
    return install.BaseImageStep(ctx, MeshSettings(base_image=base_image))


def test_the_package_list_feeds_the_build_hash() -> None:
    assert "nftables" in const.BASE_PACKAGES
    assert images.base_build_hash() != images.base_build_hash([p for p in const.BASE_PACKAGES if p != "nftables"])


def test_our_base_image_is_rebuilt_when_its_packages_changed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert step(monkeypatch, tmp_path, const.BASE_IMAGE, images.base_build_hash()).pending() is None
    stale = images.base_build_hash([p for p in const.BASE_PACKAGES if p != "nftables"])
    assert "build meshctl/base" in (step(monkeypatch, tmp_path, const.BASE_IMAGE, stale).pending() or "")
    assert step(monkeypatch, tmp_path, const.BASE_IMAGE, None).pending()  # no image yet


def test_an_image_the_user_named_is_left_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert step(monkeypatch, tmp_path, "registry.example/base:1", "whatever").pending() is None
