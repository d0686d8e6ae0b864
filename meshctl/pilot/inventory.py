"""The live mesh as `analyze` needs it: meshed pods from the home, running proxies and outsiders from Docker."""

from __future__ import annotations

from cryptography import x509
from docker.models.containers import Container

from meshctl import const
from meshctl.config.analyze import Inventory
from meshctl.context import Context
from meshctl.mesh import CERT_PEM, MeshedPods
from meshctl.pilot import dataplane
from meshctl.runtime.engine import engine_errors


def build(ctx: Context, project: str | None = None) -> Inventory:
    inv = Inventory()
    projects: set[str] = set()
    meshed = MeshedPods.of(ctx.home)
    for directory in meshed.directories():
        info = meshed.read(directory)
        pod = info.pod
        # Every project's services exist for the resources that route to them; -p only narrows the findings.
        inv.versions.setdefault(pod.app, set()).add(pod.version)
        inv.projects.setdefault(info.project, set()).add(pod.app)
        inv.accounts.setdefault(info.project, set()).add(pod.service_account)
        inv.labels.setdefault(info.project, []).append(pod.label_map)
        if project and info.project != project:
            continue
        projects.add(info.project)
        if pod.mode == "STRICT":
            inv.strict.setdefault(info.project, []).append(pod.service)
        try:
            cert = x509.load_pem_x509_certificate((directory / CERT_PEM).read_bytes())
        except (OSError, ValueError):
            continue
        name = info.name
        inv.certs[name] = cert.not_valid_after_utc.timestamp()
        inv.cert_lifetimes[name] = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    listed = dataplane.listing(ctx)
    for proxy in listed.proxies:
        if proxy.state == "running":
            inv.running.setdefault(proxy.app, set()).add(proxy.version)
    # a project's containers on every node that answered (a node's own compose runs its share of the project)
    clients = [ctx.engine(node) for node in ctx.nodes() if node not in listed.unreachable]
    for name in sorted(projects):
        found: dict[str, Container] = {}  # by id: two contexts may name one engine
        for client in clients:
            with engine_errors(f"list the containers of project {name}"):
                found |= {c.id: c for c in client.containers.list(
                    filters={"label": f"com.docker.compose.project={name}"})}
        containers = list(found.values())
        outsiders = sorted({c.labels.get("com.docker.compose.service", c.name) for c in containers
                            if c.labels.get(const.LABEL_COMPONENT) != "sidecar"
                            and c.labels.get(f"{const.LABEL_PREFIX}.injected") != "true"})
        if outsiders:
            inv.uninjected[name] = outsiders
        pods: dict[str, int] = {}
        for c in containers:
            if c.labels.get(f"{const.LABEL_PREFIX}.injected") == "true":
                service = c.labels.get("com.docker.compose.service", c.name)
                pods[service] = pods.get(service, 0) + 1
        if any(n > 1 for n in pods.values()):
            inv.scaled[name] = {s: n for s, n in pods.items() if n > 1}
        stranded = _stranded(containers)
        if stranded:
            inv.stranded[name] = stranded
    return inv


def _stranded(containers: list[Container]) -> dict[str, str]:
    """App service -> container, for apps whose sidecar container started after them. Docker restarts a killed
    sidecar in a new network namespace and leaves the app in the old one (Kubernetes would restart the pod)."""
    started = {c.id: _instant(c.attrs.get("State", {}).get("StartedAt", "")) for c in containers}
    out = {}
    for c in containers:
        mode = c.attrs.get("HostConfig", {}).get("NetworkMode", "")
        sidecar = mode.removeprefix("container:")
        if mode.startswith("container:") and sidecar in started and started[sidecar] > started[c.id]:
            out[c.labels.get("com.docker.compose.service", c.name)] = c.name
    return out


def _instant(stamp: str) -> str:
    """Docker's RFC 3339 time with its nanoseconds padded to 9 digits, so that strings compare as times
    (Docker trims trailing zeros: .5Z would sort after .51Z)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{whole}.{fraction.ljust(9, '0')}"
