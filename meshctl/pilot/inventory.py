"""The live mesh as `analyze` needs it: meshed pods from the home, running proxies and outsiders from Docker."""

from __future__ import annotations

from cryptography import x509

from meshctl import const
from meshctl.config.analyze import Inventory
from meshctl.context import Context
from meshctl.pilot.push import proxy_dirs, proxy_info
from meshctl.runtime.engine import engine_errors
from meshctl.runtime.proxies import list_proxies


def build(ctx: Context, project: str | None = None) -> Inventory:
    inv = Inventory()
    projects: set[str] = set()
    for directory in proxy_dirs(ctx.home):
        info = proxy_info(directory)
        pod = info["pod"]
        # Every project's services exist for the resources that route to them; -p only narrows the findings.
        inv.versions.setdefault(pod["app"], set()).add(pod["version"])
        if project and info["project"] != project:
            continue
        projects.add(info["project"])
        if pod["mode"] == "STRICT":
            inv.strict.setdefault(info["project"], []).append(pod["service"])
        try:
            cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
        except (OSError, ValueError):
            continue
        name = f"{info['project']}.{pod['service']}"
        inv.certs[name] = cert.not_valid_after_utc.timestamp()
        inv.cert_lifetimes[name] = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    for proxy in list_proxies(ctx.docker()):
        if proxy.state == "running":
            inv.running.setdefault(proxy.app, set()).add(proxy.version)
    client = ctx.docker()
    for name in sorted(projects):
        with engine_errors(f"list the containers of project {name}"):
            containers = client.containers.list(filters={"label": f"com.docker.compose.project={name}"})
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
    return inv
