"""The mesh home: every file the control plane owns (CA, config store, per-proxy files, settings).

    $MESHCTL_HOME (default ~/.meshctl, mode 0700)
      mesh.yaml             settings chosen at install (trust domain, network, images)
      ca/                   root CA (key 0600; never mounted into a container)
      config/               the config store (galley)
      proxies/<name>/       what one sidecar may read: snapshot, cert, key, trust bundle
      addons/<addon>/       files an addon's container reads (prometheus: prometheus.yml)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from meshctl import __version__, const
from meshctl.errors import InvalidInput, NotInstalled
from meshctl.fsutil import atomic_write, read_text
from sidecar.egress import OUTBOUND_POLICIES
from sidecar.snapshot import PATH_MODES, MeshConfig


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
    addons: list[str] = field(default_factory=list)  # optional components (const.ADDONS) kept running
    prometheus_port: int = const.PROMETHEUS_PORT  # the prometheus addon's web port, on 127.0.0.1
    # Istio's meshConfig.pathNormalization, with a safer default than Istio's BASE (sidecar.normalize)
    path_normalization: str = MeshConfig.path_normalization
    num_trusted_proxies: int = 0  # X-Forwarded-For hops trusted to name the original client (remoteIpBlocks)
    # Istio's meshConfig.outboundTrafficPolicy.mode: ALLOW_ANY, or REGISTRY_ONLY (only meshed services and
    # ServiceEntry hosts may be called; sidecar.egress)
    outbound_traffic_policy: str = MeshConfig.outbound_policy
    # Several hosts (`meshctl cluster init`): the mesh network is a swarm's attachable overlay, pods' files
    # travel through the engine API, and `nodes` are the Docker contexts joined besides the CLI's own engine.
    cluster: bool = False
    nodes: list[str] = field(default_factory=list)
    installed_by: str = field(default_factory=lambda: __version__)

    @classmethod
    def from_dict(cls, data: object, source: Path) -> MeshSettings:
        if not isinstance(data, dict):
            raise InvalidInput(f"{source} is not a mapping", "restore it or run `meshctl install` again")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"{source}: unknown field {unknown[0]!r}", f"known fields: {', '.join(sorted(known))}")
        settings = cls(**data)
        addons = settings.addons
        if not isinstance(addons, list) or not all(isinstance(a, str) and a in const.ADDONS for a in addons):
            raise InvalidInput(f"{source}: addons must be a list of {', '.join(const.ADDONS)}, not {addons!r}",
                               "fix it, or run `meshctl install --addons ...` again")
        if settings.path_normalization not in PATH_MODES:
            raise InvalidInput(f"{source}: path_normalization must be one of {', '.join(PATH_MODES)}, not "
                               f"{settings.path_normalization!r}", "fix it, or run `meshctl install "
                               "--path-normalization ...` again")
        if settings.outbound_traffic_policy not in OUTBOUND_POLICIES:
            raise InvalidInput(f"{source}: outbound_traffic_policy must be one of {', '.join(OUTBOUND_POLICIES)}, "
                               f"not {settings.outbound_traffic_policy!r}", "fix it, or run `meshctl install "
                               "--outbound-traffic-policy ...` again")
        hops = settings.num_trusted_proxies
        if not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= 64:
            raise InvalidInput(f"{source}: num_trusted_proxies must be a whole number from 0 to 64, not {hops!r}",
                               "fix it, or run `meshctl install --num-trusted-proxies ...` again")
        if not isinstance(settings.cluster, bool):
            raise InvalidInput(f"{source}: cluster must be true or false, not {settings.cluster!r}",
                               "fix it, or run `meshctl cluster init` again")
        nodes = settings.nodes
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
            raise InvalidInput(f"{source}: nodes must be a list of Docker context names, not {nodes!r}",
                               "fix it, or run `meshctl cluster join CONTEXT` again")
        port = settings.prometheus_port
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise InvalidInput(f"{source}: prometheus_port must be a port number, not {port!r}",
                               "fix it, or run `meshctl install --prometheus-port ...` again")
        return settings


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

    @property
    def addons_dir(self) -> Path:
        return self.root / "addons"

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
