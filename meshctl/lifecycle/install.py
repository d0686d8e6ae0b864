"""`meshctl install`: a plan of idempotent steps. Each step says what it would change, then changes it.

A step whose `pending()` is None is already in place, so a second install touches nothing and says so.
Order matters: home, CA and store first (cheap, local), then the engine-side network and images.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from meshctl import const
from meshctl.config.schema import parse_duration
from meshctl.config.store import Store
from meshctl.context import Context
from meshctl.errors import Conflict, MeshError, PermissionProblem, UsageError
from meshctl.extras import prometheus
from meshctl.extras.prometheus import container as prom_container
from meshctl.extras.prometheus import image as prom_image
from meshctl.fsutil import ensure_dir
from meshctl.home import MeshSettings
from meshctl.pilot.push import push
from meshctl.pki import ca as pki
from meshctl.resources import SIDECAR, shipped
from meshctl.runtime import images, network, shipping
from sidecar.egress import OUTBOUND_POLICIES
from sidecar.snapshot import PATH_MODES

Progress = Callable[[str], None]
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def validate_trust_domain(value: str) -> str:
    if not TRUST_DOMAIN_RE.fullmatch(value) or ".." in value:
        raise UsageError(f"invalid --trust-domain {value!r}",
                         "use lower-case letters, digits, dots and dashes, e.g. cluster.local")
    return value


def validate_subnet(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise UsageError(f"invalid --network-subnet {value!r}: {exc}", "give a CIDR such as 172.30.0.0/24") from exc
    if net.version != 4 or net.prefixlen > 28:
        raise UsageError(f"invalid --network-subnet {value!r}: need an IPv4 network of /28 or larger",
                         "give a CIDR such as 172.30.0.0/24")
    return str(net)


class Step(Protocol):
    title: str

    def pending(self) -> str | None:
        """What this step would do, or None when it is already in place."""

    def apply(self, progress: Progress) -> str:
        """Do it; return a short account of what was done."""


def _require_writable(path: Path) -> None:
    """Fail before any change when the home (or the directory it would be made in) cannot be written."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise PermissionProblem(f"the mesh home {path} is not writable ({existing} is on a read-only file "
                                    "system)", "remount it read-write, or set MESHCTL_HOME to a writable directory")
        raise PermissionProblem(f"the mesh home {path} is not writable ({existing} refuses writes)",
                                "fix its owner or mode, or set MESHCTL_HOME to a writable directory")


@dataclass
class HomeStep:
    ctx: Context
    settings: MeshSettings
    title: str = "mesh home"

    def pending(self) -> str | None:
        root = self.ctx.home.root
        _require_writable(root)
        if not root.is_dir():
            return f"create {root} (mode 0700)"
        if root.stat().st_mode & 0o777 != 0o700:
            return f"set {root} to mode 0700"
        if not self.ctx.home.is_installed() or self.ctx.home.settings() != self.settings:
            return f"write {self.ctx.home.settings_file}"
        return None

    def apply(self, progress: Progress) -> str:
        ensure_dir(self.ctx.home.root, 0o700)
        ensure_dir(self.ctx.home.proxies_dir, 0o700)
        self.ctx.home.save_settings(self.settings)
        if Store(self.ctx.home.config_dir).exists():
            push(self.ctx.home)  # mesh-wide settings (path normalisation, trusted hops) reach running proxies
        return f"{self.ctx.home.root} (trust domain {self.settings.trust_domain})"


@dataclass
class CAStep:
    ctx: Context
    settings: MeshSettings
    title: str = "root CA"

    def pending(self) -> str | None:
        return None if pki.has_root(self.ctx.home.ca_dir) else "create an ECDSA P-256 root CA valid for 10 years"

    def apply(self, progress: Progress) -> str:
        now = dt.datetime.fromtimestamp(self.ctx.clock(), dt.UTC)
        root = pki.create_root(self.settings.trust_domain, now)
        pki.save_root(root, self.ctx.home.ca_dir)
        return f"serial {root.cert.serial_number:x}, expires {root.not_after:%Y-%m-%d}, key mode 0600"


@dataclass
class StoreStep:
    ctx: Context
    title: str = "config store"

    def pending(self) -> str | None:
        return None if Store(self.ctx.home.config_dir).exists() else "create an empty store at revision 0"

    def apply(self, progress: Progress) -> str:
        Store(self.ctx.home.config_dir).init(self.ctx.clock())
        return f"{self.ctx.home.config_dir} at revision 0"


@dataclass
class NetworkStep:
    """The mesh network: a bridge, or in a cluster (`meshctl cluster init`) an attachable swarm overlay."""
    ctx: Context
    settings: MeshSettings
    title: str = "network"

    def pending(self) -> str | None:
        overlay = self.settings.cluster
        net = network.find_network(self.ctx.docker(), self.settings.network)
        if net is not None:
            network.check_network(net, self.settings.network_subnet, overlay=overlay)
            return None
        subnet = self.settings.network_subnet or "a subnet Docker picks"
        kind = "attachable overlay" if overlay else "bridge"
        return f"create {kind} network {self.settings.network!r} on {subnet}"

    def apply(self, progress: Progress) -> str:
        net = network.create_network(self.ctx.docker(), self.settings.network, self.settings.network_subnet,
                                     overlay=self.settings.cluster)
        net.reload()
        kind = "attachable overlay" if self.settings.cluster else "bridge"
        return f"{kind} {net.name!r} on {', '.join(network.network_subnets(net))}"


@dataclass
class BaseImageStep:
    ctx: Context
    settings: MeshSettings
    title: str = "base image"

    def pending(self) -> str | None:
        current = images.find_image(self.ctx.docker(), self.settings.base_image)
        # our own base image is rebuilt when its package list (the build hash) changed
        if current and (self.settings.base_image != const.BASE_IMAGE
                        or images.image_label(current, const.LABEL_BUILD_HASH) == images.base_build_hash()):
            return None
        if self.settings.base_image != const.BASE_IMAGE:
            return f"pull {self.settings.base_image}, or build {const.BASE_IMAGE} from Debian packages if it cannot"
        if images.rootfs_cache(self.ctx.cache_dir).is_file():
            return f"import {const.BASE_IMAGE} from the cached Debian rootfs"
        return f"build {const.BASE_IMAGE} from Debian packages (debootstrap, about a minute)"

    def apply(self, progress: Progress) -> str:
        client = self.ctx.docker()
        wanted = self.settings.base_image
        if wanted != const.BASE_IMAGE:
            progress(f"pulling {wanted}")
            if images.pull_image(client, wanted):
                return f"pulled {wanted}"
            self.settings.base_image = const.BASE_IMAGE
            self.ctx.home.save_settings(self.settings)
            if images.find_image(client, const.BASE_IMAGE):
                return f"{wanted} could not be pulled (no registry); using {const.BASE_IMAGE} instead"
            how = images.build_base_image(client, const.BASE_IMAGE, self.ctx.cache_dir, progress)
            return f"{wanted} could not be pulled (no registry); {const.BASE_IMAGE} {how}"
        return f"{wanted}: " + images.build_base_image(client, wanted, self.ctx.cache_dir, progress)


@dataclass
class ProxyImageStep:
    ctx: Context
    settings: MeshSettings
    title: str = "sidecar image"

    def _wanted_hash(self, wheelhouse: Path | None) -> str | None:
        base = images.find_image(self.ctx.docker(), self.settings.base_image)
        if base is None:
            return None
        wheels = sorted(p.name for p in wheelhouse.glob("*.whl")) if wheelhouse else list(const.PROXY_PYTHON_PACKAGES)
        return images.tree_hash([shipped(SIDECAR), images.DOCKERFILES / "proxy.Dockerfile"],
                                extra=[base.id, *wheels])

    def pending(self) -> str | None:
        wheelhouse = images.wheelhouse_dir(self.ctx.cache_dir)
        wanted = self._wanted_hash(wheelhouse if wheelhouse.is_dir() else None)
        current = images.find_image(self.ctx.docker(), self.settings.proxy_image)
        if wanted and current and images.image_label(current, const.LABEL_BUILD_HASH) == wanted:
            return None
        what = "rebuild" if current else "build"
        return f"{what} {self.settings.proxy_image} (the engine, from a host-built wheelhouse)"

    def apply(self, progress: Progress) -> str:
        wheelhouse = images.ensure_wheelhouse(self.ctx.cache_dir, progress)
        build_hash = self._wanted_hash(wheelhouse)
        assert build_hash is not None, "the base image step runs first"
        current = images.find_image(self.ctx.docker(), self.settings.proxy_image)
        if current and images.image_label(current, const.LABEL_BUILD_HASH) == build_hash:
            return f"{self.settings.proxy_image} is up to date"
        with tempfile.TemporaryDirectory(prefix="meshctl-build-") as tmp:
            build_ctx = Path(tmp)
            shutil.copy(images.DOCKERFILES / "proxy.Dockerfile", build_ctx / "Dockerfile")
            shutil.copytree(wheelhouse, build_ctx / "wheelhouse")
            shutil.copytree(shipped(SIDECAR), build_ctx / "sidecar",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            images.build_image(self.ctx.docker(), self.settings.proxy_image, build_ctx, "proxy-image", build_hash,
                               {"BASE": self.settings.base_image}, progress)
        return f"{self.settings.proxy_image} built on {self.settings.base_image}"


@dataclass
class NodeImagesStep:
    """In a cluster, the base and sidecar images on every joined node, shipped from the manager through the
    engine API. A node that does not answer is skipped and named; the next install ships to it."""
    ctx: Context
    settings: MeshSettings
    builds: list[Step]  # the steps that make the images on the manager: when one has work, so does this
    title: str = "images on nodes"

    def _refs(self) -> list[str]:
        return shipping.wanted(self.settings.base_image, self.settings.proxy_image)

    def pending(self) -> str | None:
        if not (self.settings.cluster and self.settings.nodes):
            return None
        refs = self._refs()
        if any(step.pending() is not None for step in self.builds):
            return f"ship {', '.join(refs)} to {', '.join(self.settings.nodes)}"
        todo = []
        for name in self.settings.nodes:
            try:
                client = self.ctx.engine(name)
            except MeshError:  # not answering, or its context is gone: named, not fatal
                todo.append(f"{name} (not answering now)")
                continue
            if shipping.missing(self.ctx.docker(), client, refs):
                todo.append(name)
        return f"ship {', '.join(refs)} to {', '.join(todo)}" if todo else None

    def apply(self, progress: Progress) -> str:
        done, skipped = [], []
        for name in self.settings.nodes:
            try:
                client = self.ctx.engine(name)
            except MeshError:  # not answering, or its context is gone: named, not fatal
                skipped.append(name)
                continue
            sent = shipping.ship(self.ctx.docker(), client, name, self._refs(), progress)
            done.append(f"{name}: {', '.join(sent) if sent else 'up to date'}")
        if skipped:
            done.append(f"not answering, not shipped: {', '.join(skipped)} (run `meshctl install` again when "
                        "they are back)")
        return "; ".join(done)


@dataclass
class PrometheusImageStep:
    """The prometheus addon's image: Debian's prometheus package (downloaded by the host's apt) on the base image."""
    ctx: Context
    settings: MeshSettings
    title: str = "prometheus image"

    def pending(self) -> str | None:
        if prometheus.NAME not in self.settings.addons:
            return None
        return prom_image.image_pending(self.ctx.docker(), self.settings, self.ctx.cache_dir)

    def apply(self, progress: Progress) -> str:
        return prom_image.build_image(self.ctx.docker(), self.settings, self.ctx.cache_dir, progress)


@dataclass
class PrometheusStep:
    """The prometheus addon's container: started when selected, removed when no longer selected."""
    ctx: Context
    settings: MeshSettings
    image_step: PrometheusImageStep
    title: str = "prometheus"

    def pending(self) -> str | None:
        new_image = prometheus.NAME in self.settings.addons and self.image_step.pending() is not None
        return prom_container.container_pending(self.ctx.docker(), self.ctx.home, self.settings, new_image)

    def apply(self, progress: Progress) -> str:
        if prometheus.NAME not in self.settings.addons:
            prom_container.remove(self.ctx.docker())
            return f"removed {prometheus.CONTAINER}"
        return prom_container.ensure_running(self.ctx.docker(), self.ctx.home, self.settings, progress)


def validate_prometheus_port(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 65535:
        raise UsageError(f"invalid --prometheus-port {value}: give a TCP port (1-65535)", "e.g. 9090")
    return value


def validate_cert_ttl(value: str) -> str:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"invalid --cert-ttl: {exc}") from None
    if not 10 <= seconds <= 90 * 86400:
        raise UsageError(f"invalid --cert-ttl {value!r}: give 10s to 90 days", "short-lived is the point: e.g. 24h")
    return value


def resolve_settings(ctx: Context, trust_domain: str | None, subnet: str | None,
                     base_image: str | None, cert_ttl: str | None = None, addons: list[str] | None = None,
                     prometheus_port: int | None = None, path_normalization: str | None = None,
                     num_trusted_proxies: int | None = None, outbound_traffic_policy: str | None = None
                     ) -> MeshSettings:
    """Settings for this install: the flags over what an earlier install chose; a change that would
    orphan existing state (a new trust domain under an existing CA) is refused before anything is touched.
    `addons` None keeps the earlier choice; [] selects none."""
    if ctx.home.is_installed():
        settings = ctx.home.settings()
        if trust_domain and trust_domain != settings.trust_domain:
            raise Conflict(f"this mesh home uses trust domain {settings.trust_domain!r}, not {trust_domain!r}",
                           "run `meshctl uninstall --purge` first to start over with a new trust domain")
        if subnet and settings.network_subnet and subnet != settings.network_subnet:
            raise Conflict(f"this mesh uses subnet {settings.network_subnet}, not {subnet}",
                           "run `meshctl uninstall` first to change the subnet")
        if subnet:
            settings.network_subnet = subnet
        if base_image:
            settings.base_image = base_image
        if cert_ttl:
            settings.cert_ttl = cert_ttl  # new certificates get it; the agent renews the others as they are
        if addons is not None:
            settings.addons = list(addons)
        if prometheus_port is not None:
            settings.prometheus_port = prometheus_port
    else:
        settings = MeshSettings(trust_domain=trust_domain or const.DEFAULT_TRUST_DOMAIN, network_subnet=subnet,
                                base_image=base_image or const.BASE_IMAGE, cert_ttl=cert_ttl or "24h",
                                addons=list(addons or []), prometheus_port=prometheus_port or const.PROMETHEUS_PORT)
    if path_normalization is not None:  # proxies get it with their next snapshot (install pushes)
        settings.path_normalization = path_normalization
    if num_trusted_proxies is not None:
        settings.num_trusted_proxies = num_trusted_proxies
    if outbound_traffic_policy is not None:
        settings.outbound_traffic_policy = outbound_traffic_policy
    return settings


def _mode(value: str | None, flag: str, modes: tuple[str, ...], what: str) -> str | None:
    """A mesh-wide mode given on the command line, in Istio's spelling (any case, - for _); None: not given."""
    if value is None:
        return None
    mode = value.strip().upper().replace("-", "_")
    if mode not in modes:
        raise UsageError(f"invalid --{flag} {value!r}", f"use one of {', '.join(modes)} ({what})")
    return mode


def validate_path_normalization(value: str | None) -> str | None:
    return _mode(value, "path-normalization", PATH_MODES,
                 "Istio's meshConfig.pathNormalization; meshctl's default is MERGE_SLASHES")


def validate_outbound_policy(value: str | None) -> str | None:
    return _mode(value, "outbound-traffic-policy", OUTBOUND_POLICIES, "Istio's meshConfig.outboundTrafficPolicy.mode")


def validate_trusted_proxies(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 64:
        raise UsageError(f"invalid --num-trusted-proxies {value}", "give 0 to 64 (0: the peer is the client)")
    return value


def plan(ctx: Context, settings: MeshSettings) -> list[Step]:
    base, proxy = BaseImageStep(ctx, settings), ProxyImageStep(ctx, settings)
    steps: list[Step] = [HomeStep(ctx, settings), CAStep(ctx, settings), StoreStep(ctx), NetworkStep(ctx, settings),
                         base, proxy]
    if settings.cluster:  # on one host there are no other nodes: no step to show
        steps.append(NodeImagesStep(ctx, settings, [base, proxy]))
    image = PrometheusImageStep(ctx, settings)
    addon = PrometheusStep(ctx, settings, image)
    if prometheus.NAME in settings.addons:
        steps += [image, addon]
    elif ctx.home.is_installed() and (found := prom_container.find_container(ctx.docker())) is not None \
            and prom_container.owned_by(found, ctx.home):
        steps.append(addon)  # removes the container of an addon this home no longer selects
    return steps
