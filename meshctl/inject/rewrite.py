"""compose → meshed compose: every service becomes a pod of two containers.

The sidecar owns the network namespace: it takes the app's ports, networks (with the `app` name and
the service name as aliases), hostname, dns and extra_hosts. The app joins it with
`network_mode: service:<sidecar>` and starts only when the sidecar is healthy. Everything else about
the app (environment, volumes, healthcheck, deploy, profiles, x- fields) stays as it was.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from meshctl import __version__, const
from meshctl.config.schema import is_port
from meshctl.inject.load import ComposeFile, depends_on_names, labels_of, replicas_of

# Istio's label and annotation habits, shortened for compose labels.
LABEL_APP, LABEL_VERSION = "app", "version"
LABEL_INJECT = "mesh.inject"
LABEL_MTLS = "mesh.mtls-mode"
LABEL_EXCLUDE_INBOUND = "mesh.exclude-inbound-ports"
LABEL_EXCLUDE_OUTBOUND = "mesh.exclude-outbound-ports"
MODES = ("STRICT", "PERMISSIVE", "DISABLE")
MARKER = "x-meshctl"
SIDECAR_SUFFIX = "-proxy"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

# Keys that belong to whoever owns the network namespace.
NAMESPACE_KEYS = ("ports", "expose", "hostname", "domainname", "dns", "dns_search", "dns_opt", "extra_hosts",
                  "links", "external_links", "mac_address")


@dataclass(frozen=True)
class Pod:
    """One meshed compose service: what the snapshot compiler and the proxy files need to know."""
    service: str
    sidecar: str
    app: str
    version: str
    mode: str
    exclude_inbound: tuple[int, ...]
    exclude_outbound: tuple[int, ...]
    published: tuple[int, ...]
    workload: str = ""  # the compose service it is an instance of (its DNS name); "" means `service` itself
    instance: int = 1

    @property
    def host(self) -> str:
        return self.workload or self.service




def is_meshed(data: dict[str, Any]) -> bool:
    return MARKER in data


def wants_injection(svc: dict[str, Any]) -> bool:
    return labels_of(svc).get(LABEL_INJECT, "true").lower() not in ("false", "no", "0", "disabled")


def _ports(value: str, where: str, problems: list[str]) -> tuple[int, ...]:
    out = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if not is_port(part) or 15000 <= int(part) <= 15099:
            problems.append(f"{where}: {part!r} is not a port (1-65535, outside the proxy's 15000-15099)")
        else:
            out.append(int(part))
    return tuple(out)


def published_ports(svc: dict[str, Any]) -> tuple[int, ...]:
    """Container ports published to the host: the mesh's edge, reachable in plaintext even when STRICT."""
    out: set[int] = set()
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            if is_port(entry.get("target")):
                out.add(int(entry["target"]))
            continue
        spec = str(entry).split("/")[0]
        target = spec.rsplit(":", 1)[-1]
        if "-" in target:
            lo, hi = target.split("-", 1)
            if is_port(lo) and is_port(hi):
                out.update(range(int(lo), int(hi) + 1))
        elif is_port(target):
            out.add(int(target))
    return tuple(sorted(out))


def instance_names(name: str, replicas: int) -> list[str]:
    """Compose joins every replica to the *first* container of `network_mode: service:X`, so a sidecar per
    replica needs a service per replica: the first keeps the name others depend on."""
    return [name] + [f"{name}-{i}" for i in range(2, replicas + 1)]


def plan_pods(compose: ComposeFile, default_mode: str) -> tuple[list[Pod], list[str], list[str]]:
    services: dict[str, Any] = compose.data["services"]
    pods, skipped, problems = [], [], []
    for name, svc in services.items():
        if not wants_injection(svc):
            skipped.append(name)
            continue
        where = f"service {name!r}"
        mode = svc.get("network_mode")
        if mode is not None:
            if mode == "host":
                problems.append(f"{where}: `network_mode: host` cannot be meshed: the sidecar needs the service's "
                                f"own network namespace; remove it or label the service {LABEL_INJECT}: \"false\"")
            elif str(mode).startswith(("service:", "container:")):
                problems.append(f"{where}: `network_mode: {mode}` shares another namespace and cannot get its own "
                                f"sidecar; label it {LABEL_INJECT}: \"false\"")
            elif mode not in ("bridge", "default"):
                problems.append(f"{where}: `network_mode: {mode}` cannot be meshed; label it {LABEL_INJECT}: \"false\"")
        labels = labels_of(svc)
        app, version = labels.get(LABEL_APP) or name, labels.get(LABEL_VERSION) or "v1"
        for label, value in ((LABEL_APP, app), (LABEL_VERSION, version)):
            if not NAME_RE.fullmatch(value):
                problems.append(f"{where}: label `{label}: {value}` must be lower-case letters, digits and dashes")
        pod_mode = labels.get(LABEL_MTLS, default_mode).upper()
        if pod_mode not in MODES:
            problems.append(f"{where}: label `{LABEL_MTLS}: {labels[LABEL_MTLS]}` must be one of {', '.join(MODES)}")
        replicas = replicas_of(svc)
        if replicas > 1 and svc.get("container_name"):
            problems.append(f"{where}: `container_name` cannot be combined with {replicas} replicas")
        if replicas > 1 and any(":" in str(p) or (isinstance(p, dict) and p.get("published")) for p in
                                svc.get("ports") or []):
            problems.append(f"{where}: publishes a host port with {replicas} replicas; only one instance can bind "
                            "it: publish from a single-replica service, or drop the host port")
        exclude_in = _ports(labels.get(LABEL_EXCLUDE_INBOUND, ""), f"{where}: label `{LABEL_EXCLUDE_INBOUND}`",
                            problems)
        exclude_out = _ports(labels.get(LABEL_EXCLUDE_OUTBOUND, ""), f"{where}: label `{LABEL_EXCLUDE_OUTBOUND}`",
                             problems)
        for i, instance in enumerate(instance_names(name, replicas), start=1):
            sidecar = f"{instance}{SIDECAR_SUFFIX}"
            if sidecar in services or (i > 1 and instance in services):
                taken = sidecar if sidecar in services else instance
                problems.append(f"{where}: meshctl would name a container service {taken!r}, which is already a "
                                "service; rename one")
            pods.append(Pod(service=instance, sidecar=sidecar, app=app, version=version, mode=pod_mode,
                            exclude_inbound=exclude_in, exclude_outbound=exclude_out,
                            published=published_ports(svc), workload=name if replicas > 1 else "", instance=i))
    return pods, skipped, problems


def _networks_with_aliases(svc: dict[str, Any], aliases: list[str]) -> dict[str, Any]:
    nets = svc.get("networks")
    if nets is None:
        nets = {"default": None}
    elif isinstance(nets, list):
        nets = {n: None for n in nets}
    out: dict[str, Any] = {}
    for net_name, conf in nets.items():
        conf = dict(conf or {})
        conf["aliases"] = list(dict.fromkeys([*(conf.get("aliases") or []), *aliases]))
        out[net_name] = conf
    return out


def _sidecar(svc: dict[str, Any], pod: Pod, project: str, proxy_dir: str, image: str,
             mesh_network: str) -> dict[str, Any]:
    sidecar: dict[str, Any] = {
        "image": image,
        "cap_add": ["NET_ADMIN"],
        "labels": {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "sidecar",
                   f"{const.LABEL_PREFIX}.project": project, f"{const.LABEL_PREFIX}.service": pod.service,
                   f"{const.LABEL_PREFIX}.app": pod.app, f"{const.LABEL_PREFIX}.subset": pod.version},
        "environment": {"MESHCTL_PROXY_VERSION": __version__},
        "volumes": [f"{proxy_dir}:/etc/meshctl:ro"],
        "restart": "unless-stopped",
        "stop_grace_period": "15s",
        "healthcheck": {"test": ["CMD", "curl", "-fsS", "-o", "/dev/null",
                                 f"http://127.0.0.1:{const.PORT_HEALTH}/healthz/ready"],
                        "interval": "1s", "timeout": "2s", "retries": 60, "start_period": "60s"},
    }
    for key in NAMESPACE_KEYS:
        if key in svc:
            sidecar[key] = svc[key]
    networks = _networks_with_aliases(svc, list(dict.fromkeys([pod.app, pod.host])))
    networks[mesh_network] = None  # the mesh's own network: observability and bench tools reach proxies here
    sidecar["networks"] = networks
    if "profiles" in svc:
        sidecar["profiles"] = svc["profiles"]
    return sidecar


def _canonical(value: Any) -> Any:
    """`value` with string keys only, so it sorts for hashing (YAML keys may be numbers, dates, null)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return [_canonical(v) for v in value] if isinstance(value, list) else value


def _app(svc: dict[str, Any], pod: Pod, sidecar: dict[str, Any], image_id: str = "") -> dict[str, Any]:
    app = {k: v for k, v in svc.items() if k not in (*NAMESPACE_KEYS, "networks", "network_mode", "scale")}
    if pod.workload and isinstance(app.get("deploy"), dict):  # one pod per replica: each a single container
        app["deploy"] = {k: v for k, v in app["deploy"].items() if k != "replicas"}
    app["network_mode"] = f"service:{pod.sidecar}"
    deps = svc.get("depends_on")
    depends: dict[str, Any] = dict(deps) if isinstance(deps, dict) else \
        {d: {"condition": "service_started"} for d in depends_on_names(svc)}
    depends[pod.sidecar] = {"condition": "service_healthy"}
    app["depends_on"] = depends
    labels = labels_of(svc)
    labels[f"{const.LABEL_PREFIX}.injected"] = "true"
    # An app joined to a recreated sidecar would keep the old, dead namespace. Compose recreates a
    # container when its config or its image changes (a rebuilt proxy image keeps its tag), so the app
    # carries a hash of both.
    labels[f"{const.LABEL_PREFIX}.sidecar-hash"] = hashlib.sha256(
        json.dumps(_canonical([sidecar, image_id]), sort_keys=True, default=str).encode()).hexdigest()[:16]
    app["labels"] = labels
    return app


def rewrite(compose: ComposeFile, pods: list[Pod], project: str, proxy_dirs: dict[str, str], image: str,
            trust_domain: str, mesh_network: str, image_id: str = "") -> dict[str, Any]:
    data = copy.deepcopy(compose.data)
    services: dict[str, Any] = {}
    by_workload: dict[str, list[Pod]] = {}
    for pod in pods:
        by_workload.setdefault(pod.host, []).append(pod)
    for name, svc in data["services"].items():
        if name not in by_workload:
            services[name] = svc
            continue
        for pod in by_workload[name]:
            sidecar = _sidecar(svc, pod, project, proxy_dirs[pod.service], image, mesh_network)
            services[pod.sidecar] = sidecar
            services[pod.service] = _app(svc, pod, sidecar, image_id)
    data["services"] = services
    networks = dict(data.get("networks") or {})
    networks[mesh_network] = {"external": True, "name": mesh_network}
    data["networks"] = networks
    data[MARKER] = {"version": __version__, "project": project, "trust_domain": trust_domain}
    return data
