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
from typing import Any

from ruamel.yaml.comments import Comment, CommentedMap, Format, merge_attrib

from meshctl import __version__, const
from meshctl.config.schema import is_port
from meshctl.inject import comments, protocols, yamlrt
from meshctl.inject.load import ComposeFile, depends_on_names, labels_of, replicas_of
from meshctl.mesh import LABEL_APP, LABEL_VERSION, Pod
from sidecar.contract import MTLS_MODES

# Istio's label and annotation habits, shortened for compose labels (app and version: meshctl.mesh).
LABEL_INJECT = "mesh.inject"
LABEL_MTLS = "mesh.mtls-mode"
LABEL_ACCOUNT = "mesh.service-account"  # the identity's account (Istio's ServiceAccount); default: the app
LABEL_EXCLUDE_INBOUND = "mesh.exclude-inbound-ports"
LABEL_EXCLUDE_OUTBOUND = "mesh.exclude-outbound-ports"
MODES = MTLS_MODES
MARKER = "x-meshctl"
SIDECAR_SUFFIX = "-proxy"
LABEL_NODE = f"{const.LABEL_PREFIX}.node"  # the Docker context a pod runs on ("" = the CLI's engine)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

# Keys that belong to whoever owns the network namespace.
NAMESPACE_KEYS = ("ports", "expose", "hostname", "domainname", "dns", "dns_search", "dns_opt", "extra_hosts",
                  "links", "external_links", "mac_address")


def is_meshed(data: dict[str, Any]) -> bool:
    return MARKER in data


def wants_injection(svc: dict[str, Any]) -> bool:
    return labels_of(svc).get(LABEL_INJECT, "true").lower() not in ("false", "no", "0", "disabled")


def _ports(value: str, where: str, problems: list[str]) -> tuple[int, ...]:
    out = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if not is_port(part) or int(part) in const.PROXY_PORTS:
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
        account = labels.get(LABEL_ACCOUNT, "")
        for label, value in ((LABEL_APP, app), (LABEL_VERSION, version), (LABEL_ACCOUNT, account or app)):
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
        declared = protocols.declared(svc, labels, where, problems)
        for i, instance in enumerate(instance_names(name, replicas), start=1):
            sidecar = f"{instance}{SIDECAR_SUFFIX}"
            if sidecar in services or (i > 1 and instance in services):
                taken = sidecar if sidecar in services else instance
                problems.append(f"{where}: meshctl would name a container service {taken!r}, which is already a "
                                "service; rename one")
            pods.append(Pod(service=instance, sidecar=sidecar, app=app, version=version, mode=pod_mode,
                            exclude_inbound=exclude_in, exclude_outbound=exclude_out,
                            published=published_ports(svc), workload=name if replicas > 1 else "", instance=i,
                            port_protocols=declared, labels=tuple(sorted(labels.items())), account=account))
    problems += account_problems(pods)
    return pods, skipped, problems


def account_problems(pods: list[Pod]) -> list[str]:
    """Callers check one identity per app, so every version of an app must run as the same account."""
    accounts: dict[str, dict[str, str]] = {}
    for pod in pods:
        accounts.setdefault(pod.app, {})[pod.service_account] = pod.workload or pod.service
    return [f"app {app!r}: services {', '.join(sorted(names.values()))} run as different service accounts "
            f"({', '.join(sorted(names))}); give them the same `{LABEL_ACCOUNT}` label"
            for app, names in sorted(accounts.items()) if len(names) > 1]


def _networks_with_aliases(svc: dict[str, Any], aliases: list[str]) -> dict[str, Any]:
    nets = svc.get("networks")
    if nets is None:
        nets = {"default": None}
    elif isinstance(nets, list):
        nets = {n: None for n in nets}
    out: dict[str, Any] = {}
    for net_name, conf in nets.items():
        conf = _fresh(conf) if isinstance(conf, dict) else {}  # the user's own settings, comments kept
        conf["aliases"] = list(dict.fromkeys([*(conf.get("aliases") or []), *aliases]))
        out[net_name] = conf
    return out


def _sidecar(svc: dict[str, Any], pod: Pod, project: str, proxy_dir: str, image: str,
             mesh_network: str, cluster: bool = False) -> dict[str, Any]:
    sidecar: dict[str, Any] = {
        "image": image,
        "cap_add": ["NET_ADMIN"],
        "labels": {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "sidecar",
                   f"{const.LABEL_PREFIX}.project": project, f"{const.LABEL_PREFIX}.service": pod.service,
                   f"{const.LABEL_PREFIX}.app": pod.app, f"{const.LABEL_PREFIX}.subset": pod.version,
                   f"{const.LABEL_PREFIX}.service-account": pod.service_account},
        "environment": {"MESHCTL_PROXY_VERSION": __version__},
        "volumes": [f"{proxy_dir}:/etc/meshctl:ro"],
        "restart": "unless-stopped",
        "stop_grace_period": "15s",
        # The service-level key: compose v1 (1.27+) and v2 both apply it; deploy.resources needs swarm or v2.
        "mem_limit": const.PROXY_MEM_LIMIT,
        "healthcheck": {"test": ["CMD", "curl", "-fsS", "-o", "/dev/null",
                                 f"http://127.0.0.1:{const.PORT_HEALTH}/healthz/ready"],
                        "interval": "1s", "timeout": "2s", "retries": 60, "start_period": "60s"},
    }
    if cluster:  # where it runs; `meshctl up` starts it there, and every view shows it
        sidecar["labels"][LABEL_NODE] = pod.node
    for key in NAMESPACE_KEYS:  # copies: a node the file shares through an alias must not be written twice
        if key in svc:
            sidecar[key] = _fresh(svc[key])
    networks = _networks_with_aliases(svc, list(dict.fromkeys([pod.app, pod.host])))
    # the mesh's own network: observability and bench tools reach proxies here; across hosts, Prometheus
    # finds every sidecar by one name on it
    networks[mesh_network] = {"aliases": [const.SIDECARS_ALIAS]} if cluster else None
    sidecar["networks"] = networks
    if "profiles" in svc:
        sidecar["profiles"] = _fresh(svc["profiles"])
    return sidecar


def _canonical(value: Any) -> Any:
    """`value` with string keys only, so it sorts for hashing (YAML keys may be numbers, dates, null)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return [_canonical(v) for v in value] if isinstance(value, list) else value


def _with_labels(labels: Any, ours: dict[str, str]) -> Any:
    """The app's labels exactly as written (values keep their YAML text), plus meshctl's."""
    if isinstance(labels, list):
        out = _fresh(labels)  # a copy: the list may be shared with another service through an alias
        for i in reversed(range(len(out))):
            if str(out[i]).split("=", 1)[0] in ours:
                del out[i]
        out += [f"{k}={v}" for k, v in ours.items()]
        return out
    if isinstance(labels, dict):
        mapping = _fresh(labels)
        mapping.update(ours)
        return mapping
    return dict(ours)


def _app(svc: dict[str, Any], pod: Pod, sidecar: dict[str, Any], image_id: str = "") -> dict[str, Any]:
    """The app's own service, edited in place: only the keys the pod owns change."""
    for key in MOVED_KEYS:
        svc.pop(key, None)
    if pod.workload and isinstance(svc.get("deploy"), dict):  # one pod per replica: each a single container
        deploy = _fresh(svc["deploy"])
        deploy.pop("replicas", None)
        svc["deploy"] = deploy
    svc["network_mode"] = f"service:{pod.sidecar}"
    deps = svc.get("depends_on")
    depends: dict[str, Any] = _fresh(deps) if isinstance(deps, dict) else \
        {d: {"condition": "service_started"} for d in depends_on_names(svc)}
    depends[pod.sidecar] = {"condition": "service_healthy"}
    svc["depends_on"] = depends
    # An app joined to a recreated sidecar would keep the old, dead namespace. Compose recreates a
    # container when its config or its image changes (a rebuilt proxy image keeps its tag), so the app
    # carries a hash of both.
    sidecar_hash = hashlib.sha256(
        json.dumps(_canonical([sidecar, image_id]), sort_keys=True, default=str).encode()).hexdigest()[:16]
    svc["labels"] = _with_labels(svc.get("labels"), {f"{const.LABEL_PREFIX}.injected": "true",
                                                     f"{const.LABEL_PREFIX}.sidecar-hash": sidecar_hash})
    return svc


# What the app's service loses to the sidecar: it cannot keep a key a `<<:` merge would bring back.
MOVED_KEYS = (*NAMESPACE_KEYS, "networks", "network_mode", "scale")


def _own(node: dict[Any, Any], flatten: bool = False) -> CommentedMap:
    """A new round-trip mapping with `node`'s entries, comments and style, so editing it edits nothing the
    file shares through an alias. A `<<:` merge stays, unless it brings a key inject must remove (or
    `flatten`): then the merged keys are written out as the mapping's own."""
    merges = list(getattr(node, merge_attrib, None) or [])
    if flatten or any(key in source for _, source in merges for key in MOVED_KEYS):
        merges = []
    out = CommentedMap()
    for key, value in (node.non_merged_items() if merges and isinstance(node, CommentedMap) else node.items()):
        out[key] = value
    if merges:
        out.add_yaml_merge(merges)
    if isinstance(node, CommentedMap):
        setattr(out, Comment.attrib, node.ca)  # ruamel keeps comments by key: they still fit
        setattr(out, Format.attrib, node.fa)  # block or flow, as written
    return out


def _fresh(node: Any) -> Any:
    """A deep copy without the user's anchor names (a second `&name` would change what a later alias means)
    and with any `<<:` merge written out."""
    out = copy.deepcopy(node)
    comments.pop_tail(out)  # comment lines after the original belong to what followed it, not to the copy
    stack, seen = [out], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if getattr(item, "anchor", None) is not None and getattr(item.anchor, "value", None):
            item.yaml_set_anchor(None)
        if getattr(item, merge_attrib, None):  # deepcopy already made the merged keys the copy's own
            setattr(item, merge_attrib, [])
        if isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return out


def _after(mapping: dict[Any, Any], key: str) -> Any:
    keys = list(mapping)
    return keys[keys.index(key) + 1] if keys.index(key) + 1 < len(keys) else None


def spread(data: dict[str, Any], project: str, volumes: list[str]) -> list[str]:
    """Across hosts: each pod's files come in a volume the CLI fills (external), and the project's own
    networks become swarm overlays meshctl creates on the manager (external here: compose on a worker cannot
    create one). Returns the overlays' names, for `meshctl up`."""
    services = data["services"]
    used: set[str] = set()
    for svc in services.values():
        nets = svc.get("networks")
        if nets is None and svc.get("network_mode") is None:
            used.add("default")
        elif isinstance(nets, dict | list):
            used.update(str(n) for n in nets)
    declared = data.get("networks")
    networks = _own(declared) if isinstance(declared, dict) else CommentedMap()
    overlays = []
    for key in sorted(used):
        conf = networks.get(key) if isinstance(networks.get(key), dict) else {}
        if conf.get("external"):
            continue
        name = str(conf.get("name") or f"{project}_{key}")
        networks[key] = {"external": True, "name": name}
        overlays.append(name)
    data["networks"] = networks
    declared_volumes = data.get("volumes")
    top = _own(declared_volumes) if isinstance(declared_volumes, dict) else CommentedMap()
    for volume in volumes:
        top[volume] = {"external": True, "name": volume}
    data["volumes"] = top
    return overlays


def rewrite(compose: ComposeFile, pods: list[Pod], project: str, proxy_dirs: dict[str, str], image: str,
            trust_domain: str, mesh_network: str, image_id: str = "", cluster: bool = False) -> dict[str, Any]:
    """The meshed document: the user's tree (ruamel round trip) with each meshed service turned into a pod.
    In a `cluster`, `proxy_dirs` are the pods' volume names (runtime.delivery) and the networks span hosts."""
    # A fresh parse, not a deep copy: ruamel's deepcopy turns keys a `<<:` merge brings into the mapping's own.
    data = _own(yamlrt.load(compose.text)) if compose.text else _own(copy.deepcopy(compose.data))
    services = data["services"] = _own(data["services"])
    by_workload: dict[str, list[Pod]] = {}
    for pod in pods:
        by_workload.setdefault(pod.host, []).append(pod)
    tail: list[Any] = []  # the comment lines that followed the last meshed service, for whatever follows it
    for name in [n for n in services if n in by_workload]:
        group = by_workload[name]
        ending = comments.pop_tail(services[name])
        svc = _own(services[name], flatten=len(group) > 1)
        instances = [svc] + [_fresh(svc) for _ in group[1:]]  # copied before any edit
        at = list(services).index(name)
        for i, (pod, instance) in enumerate(zip(group, instances, strict=True)):
            sidecar = _sidecar(instance, pod, project, proxy_dirs[pod.service], image, mesh_network, cluster)
            app = _app(instance, pod, sidecar, image_id)
            if i == 0:  # the app keeps its place; its sidecar goes in front of it
                services[name] = app
                services.insert(at, pod.sidecar, sidecar)
            else:
                services.insert(at + 2 * i, pod.sidecar, sidecar)
                services.insert(at + 2 * i + 1, pod.service, app)
        comments.put_before(services, group[0].sidecar, comments.take_before(services, name))
        following = _after(services, group[-1].service)
        if following is not None:
            comments.put_before(services, following, ending)
        else:
            tail = ending
    networks = data.get("networks")
    networks = _own(networks) if isinstance(networks, dict) else CommentedMap()
    networks[mesh_network] = {"external": True, "name": mesh_network}
    data["networks"] = networks
    data[MARKER] = {"version": __version__, "project": project, "trust_domain": trust_domain, "network": mesh_network}
    if cluster:
        data[MARKER]["overlays"] = spread(data, project, [proxy_dirs[p.service] for p in pods])
    following = _after(data, "services")
    if following is not None:
        comments.put_before(data, following, tail)
    return data
