"""The mesh home: every file the control plane owns (CA, config store, per-proxy files, settings).

    $MESHCTL_HOME (default ~/.meshctl, mode 0700)
      mesh.yaml             settings chosen at install (trust domain, network, images)
      ca/                   root CA (key 0600; never mounted into a container)
      config/               the config store (galley)
      proxies/<name>/       what one sidecar may read: snapshot, cert, key, trust bundle
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from meshctl import __version__, const
from meshctl.errors import InvalidInput, NotInstalled
from meshctl.fsutil import atomic_write, read_text


def default_home() -> Path:
    return Path(os.environ.get("MESHCTL_HOME") or Path.home() / ".meshctl")


def default_cache() -> Path:
    """Downloads meshctl can rebuild (base rootfs, wheelhouse); kept apart from the home like pip's cache."""
    if os.environ.get("MESHCTL_CACHE"):
        return Path(os.environ["MESHCTL_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "meshctl"


@dataclass
class MeshSettings:
    trust_domain: str = const.DEFAULT_TRUST_DOMAIN
    network: str = const.NETWORK_NAME
    network_subnet: str | None = None
    base_image: str = const.BASE_IMAGE
    proxy_image: str = const.PROXY_IMAGE
    cert_ttl: str = "24h"  # workload certificates' lifetime; renewed at half of it
    installed_by: str = field(default_factory=lambda: __version__)

    @classmethod
    def from_dict(cls, data: object, source: Path) -> MeshSettings:
        if not isinstance(data, dict):
            raise InvalidInput(f"{source} is not a mapping", "restore it or run `meshctl install` again")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"{source}: unknown field {unknown[0]!r}", f"known fields: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass(frozen=True)
class MeshHome:
    root: Path

    @property
    def settings_file(self) -> Path:
        return self.root / "mesh.yaml"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def proxies_dir(self) -> Path:
        return self.root / "proxies"

    def is_installed(self) -> bool:
        return self.settings_file.is_file()

    def settings(self) -> MeshSettings:
        if not self.is_installed():
            raise NotInstalled(f"no mesh is installed in {self.root}")
        try:
            data = yaml.safe_load(read_text(self.settings_file))
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{self.settings_file} is not valid YAML: {exc}",
                               "restore it or run `meshctl uninstall --purge` and install again") from exc
        return MeshSettings.from_dict(data, self.settings_file)

    def save_settings(self, settings: MeshSettings) -> None:
        atomic_write(self.settings_file, yaml.safe_dump(asdict(settings), sort_keys=False), mode=0o600)
