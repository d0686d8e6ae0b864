"""`meshctl analyze`: find config and mesh problems, each with a stable code and a hint (istioctl's habit).

Works on resources alone (files, no engine) or on the live mesh: the store plus what runs.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from meshctl.config.egress import protocol, tls_settings
from meshctl.config.hosts import canonical, same_service
from meshctl.config.hosts import target as app_of
from meshctl.config.kinds import find_kind
from meshctl.config.resources import ROOT_NAMESPACES, Resource, namespace_of, qualified_name, semantic_problems
from sidecar.contract import PRINCIPAL_RE
from sidecar.egress import HTTP_PROTOCOLS


@dataclass(frozen=True)
class Message:
    code: str
    level: str  # Error | Warning | Info
    resource: str
    text: str
    hint: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class Inventory:
    """What the live mesh has: meshed services by app, running subsets, modes, outsiders, certificates."""
    versions: dict[str, set[str]] = field(default_factory=dict)  # app -> subsets that exist (injected)
    projects: dict[str, set[str]] = field(default_factory=dict)  # project -> its meshed apps
    running: dict[str, set[str]] = field(default_factory=dict)  # app -> subsets with a running proxy
    strict: dict[str, list[str]] = field(default_factory=dict)  # project -> STRICT services
    uninjected: dict[str, list[str]] = field(default_factory=dict)  # project -> running non-meshed services
    scaled: dict[str, dict[str, int]] = field(default_factory=dict)  # project -> app service -> containers in pod
    stranded: dict[str, dict[str, str]] = field(default_factory=dict)  # project -> app service -> container
    certs: dict[str, float] = field(default_factory=dict)  # proxy name -> not_after (unix)
    cert_lifetimes: dict[str, float] = field(default_factory=dict)  # proxy name -> total lifetime (s)
    accounts: dict[str, set[str]] = field(default_factory=dict)  # project -> service accounts of its workloads
    labels: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # project -> each workload's labels


NAMED_RE = re.compile(r"([A-Z][A-Za-z]+ [^\s:]+): ")


def invalid_file(problem: str) -> Message:
    """MSH0100: a problem that makes `apply` refuse a file ("FILE[: KIND NAME]: what is wrong")."""
    where, _, text = problem.partition(": ")
    named = NAMED_RE.match(text)
    if named:  # as istioctl names the place: "VirtualService reviews x.yaml[0]"
        where, text = f"{named[1]} {where}", text[named.end():]
    return Message("MSH0100", "Error", where, text or where, "fix the file: `meshctl apply` refuses it as it is")


def _name(r: Resource) -> str:
    return f"{r['kind']} {qualified_name(r)}"


def _host_findings(r: Resource, hosts: list[str], inventory: Inventory) -> list[Message]:
    """MSH0104 for a host that names no meshed service; MSH0112 for a resource with no namespace whose hosts
    name services in several projects (it applies to each of them)."""
    out, ns, everywhere = [], namespace_of(r), set()
    for host in hosts:
        projects = {p for p, apps in inventory.projects.items() if app_of(host, ns, p, apps) is not None}
        everywhere |= projects
        if not projects:
            where = f" in project {ns!r}" if ns and "." not in host else ""
            out.append(Message("MSH0104", "Warning", _name(r), f"host {host!r} matches no meshed service{where}",
                               "check the `app` label of the services you meant (and the resource's namespace, "
                               "its compose project), or delete this resource"))
    if ns is None and len(everywhere) > 1:
        out.append(Message("MSH0112", "Warning", _name(r), f"has no namespace, so it applies to "
                           f"{len(everywhere)} projects: {', '.join(sorted(everywhere))}",
                           "set metadata.namespace (or apply -p PROJECT) so it applies to one project"))
    return out


POLICY_KINDS = ("PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication", "Telemetry")


def _policy_findings(r: Resource, inventory: Inventory) -> list[Message]:
    """MSH0113: a policy whose namespace, selector or sources name no meshed workload applies to nothing, or
    allows or denies nobody (Istio's docs' `namespace: default` and bookinfo-* accounts applied as they are)."""
    ns, spec, out = namespace_of(r), r["spec"], []

    def found(text: str, hint: str) -> None:
        out.append(Message("MSH0113", "Warning", _name(r), text, hint))

    if ns not in ROOT_NAMESPACES and ns not in inventory.projects:
        found(f"its namespace {ns!r} is no meshed compose project, so it applies to no workload",
              "apply it with -p PROJECT (a `namespace: default` is read as PROJECT), or set metadata.namespace")
        return out
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    pods = [labels for p, each in inventory.labels.items() if ns in ROOT_NAMESPACES or p == ns for labels in each]
    if wanted and not any(all(labels.get(k) == v for k, v in wanted.items()) for labels in pods):
        found(f"selector {wanted} matches no meshed workload", "check the compose labels of the services you meant")
    for rule in spec.get("rules") or [] if r["kind"] == "AuthorizationPolicy" else []:
        for src in (f.get("source") or {} for f in rule.get("from") or []):
            accounts = [(m.group(2), m.group(3)) for p in src.get("principals") or []
                        if "*" not in p and (m := PRINCIPAL_RE.fullmatch(str(p)))]
            accounts += [tuple(a.split("/", 1)) for a in src.get("serviceAccounts") or [] if "/" in a]
            for namespace, account in accounts:
                if account not in inventory.accounts.get(namespace, set()):
                    found(f"source {namespace}/{account} is no meshed workload's service account (project "
                          f"{namespace!r}), so the rule matches no caller in the mesh",
                          "name the caller's project and account: the `mesh.service-account` label, else its "
                          "`app`; docs' `ns/default/` principals need apply -p PROJECT")
            for namespace in src.get("namespaces") or []:
                if "*" not in namespace and namespace not in inventory.projects:
                    found(f"source namespace {namespace!r} is no meshed compose project",
                          "namespaces are compose project names; apply -p PROJECT maps `default`")
    return out


def _external_findings(r: Resource, hosts: list[str], protocols: dict[str, dict[int, str]]) -> list[Message]:
    """MSH0121: what a VirtualService or DestinationRule sets for ServiceEntry hosts and the sidecar does not apply.
    A call leaving the mesh goes to the host as the registry says (sidecar.engine.egress), never through the router:
    of all this, only a DestinationRule's tls SIMPLE on an HTTP port applies."""
    if not hosts:
        return []
    if r["kind"] == "VirtualService":
        return [Message("MSH0121", "Warning", _name(r), f"{', '.join(map(repr, hosts))}: a ServiceEntry host; calls "
                        "leaving the mesh go straight to it, so these routes, timeouts, retries, faults and header "
                        "changes have no effect", "drop the VirtualService for it (only a DestinationRule's tls "
                        "applies to hosts outside the mesh)")]
    spec, host, out = r["spec"], hosts[0], []
    unused = [k for k in ("loadBalancer", "connectionPool", "outlierDetection")
              if k in (spec.get("trafficPolicy") or {})] + (["subsets"] if spec.get("subsets") else [])
    if unused:
        out.append(Message("MSH0121", "Warning", _name(r), f"{', '.join(unused)} for {host!r}, a ServiceEntry host, "
                           "have no effect: only trafficPolicy.tls applies to hosts outside the mesh",
                           "keep only trafficPolicy.tls"))
    ports = protocols[host]
    http = [n for n, proto in ports.items() if proto in HTTP_PROTOCOLS]
    listed = ", ".join(f"{n} {proto}" for n, proto in sorted(ports.items(), key=lambda item: str(item[0])))
    out += [Message("MSH0121", "Warning", _name(r), f"{t.path}: mode SIMPLE for {host!r} has no effect: the sidecar "
                    f"originates TLS on the ServiceEntry's HTTP ports only, and its ports are {listed or 'none'}",
                    "set tls on the HTTP port the app calls with http://, or drop the tls block")
            for t in tls_settings(spec) if t.subset is None and t.tls.get("mode") == "SIMPLE"
            and not (http if t.port is None else t.port in http)]
    return out


def _destinations(vs: Resource) -> list[dict[str, Any]]:
    return [d["destination"] for rule in vs["spec"].get("http", []) for d in rule.get("route", [])]


def analyze_resources(resources: list[Resource], inventory: Inventory | None) -> list[Message]:
    out: list[Message] = []
    rules = [(canonical(r["spec"]["host"], namespace_of(r)), r) for r in resources if r["kind"] == "DestinationRule"]
    seen_hosts: dict[tuple[str | None, str], str] = {}
    external: dict[str, dict[int, str]] = {}  # ServiceEntry host -> its ports' protocols
    for r in resources:
        for h in r["spec"].get("hosts", []) if r["kind"] == "ServiceEntry" else []:
            external.setdefault(str(h).lower().rstrip("."), {}).update(
                (p.get("number"), protocol(p)) for p in r["spec"].get("ports") or [])
    for r in resources:
        kind = find_kind(r["kind"])
        if kind is not None:
            out += [Message("MSH0103", "Error", _name(r), problem.split(": ", 2)[-1],
                            "make the weights of each rule add up to 100")
                    for problem in semantic_problems(kind, r["spec"], _name(r)) if "weights add up" in problem]
        if r["kind"] in POLICY_KINDS and inventory is not None:
            out += _policy_findings(r, inventory)
        if r["kind"] not in ("VirtualService", "DestinationRule"):  # only these name hosts (MSH0104)
            continue
        ns = namespace_of(r)
        hosts = [str(h) for h in (r["spec"].get("hosts", []) if r["kind"] == "VirtualService"
                                  else [r["spec"].get("host")])]
        if inventory is not None:  # a ServiceEntry's host is not meant to be a meshed service
            out += _host_findings(r, [h for h in hosts if h.lower().rstrip(".") not in external], inventory)
        if r["kind"] == "DestinationRule" and hosts[0].lower().rstrip(".") not in external and \
                any(t.tls.get("mode") == "SIMPLE" for t in tls_settings(r["spec"])):
            out.append(Message("MSH0120", "Warning", _name(r), f"tls mode SIMPLE for {hosts[0]!r}, which no "
                               "ServiceEntry lists: it has no effect (a meshed host gets mesh mutual TLS)",
                               f"add a ServiceEntry for {hosts[0]!r}, or drop the tls block"))
        out += _external_findings(r, [h.lower().rstrip(".") for h in hosts if h.lower().rstrip(".") in external],
                                  external)
        if r["kind"] != "VirtualService":
            continue
        for host in hosts:
            service = canonical(host, ns)  # the same service however it is written, and per project
            if service in seen_hosts:
                out.append(Message("MSH0109", "Error", _name(r), f"host {host!r} is also routed by "
                                   f"{seen_hosts[service]}; only one VirtualService per host takes effect",
                                   "merge the rules into one VirtualService"))
            seen_hosts.setdefault(service, _name(r))
        for i, rule in enumerate(r["spec"].get("http", [])):
            if not rule.get("match") and i < len(r["spec"]["http"]) - 1:
                out.append(Message("MSH0108", "Warning", _name(r), f"rule {i} matches every request, so the "
                                   f"{len(r['spec']['http']) - i - 1} rule(s) after it are never reached",
                                   "move the catch-all rule last"))
                break
        for dest in _destinations(r):
            subset = dest.get("subset")
            if not subset:
                continue
            service = canonical(dest["host"], ns)
            rule_for = next((rule for host, rule in rules if host == service), None) or \
                next((rule for host, rule in rules if same_service(host, service)), None)
            defined = {s["name"]: (s.get("labels") or {}).get("version")
                       for s in (rule_for or {}).get("spec", {}).get("subsets", [])}
            if subset not in defined:
                out.append(Message("MSH0101", "Error", _name(r), f"routes to subset {subset!r} of {dest['host']!r}, "
                                   "which no DestinationRule defines",
                                   f"add subset {subset!r} to the DestinationRule for {dest['host']!r}"))
            elif inventory is not None and defined[subset] is not None and \
                    defined[subset] not in inventory.running.get(service[1], set()):
                out.append(Message("MSH0102", "Warning", _name(r), f"subset {subset!r} of {dest['host']!r} "
                                   f"(version {defined[subset]}) has no running instance",
                                   "start a service with that `version` label, or route elsewhere"))
    return out


def analyze_mesh(inventory: Inventory, now: dt.datetime) -> list[Message]:
    out: list[Message] = []
    for project, services in sorted(inventory.uninjected.items()):
        for service in services:
            out.append(Message("MSH0105", "Warning", f"service {project}/{service}", "runs without a sidecar",
                               "mesh it with `meshctl inject`, or label it mesh.inject: \"false\" on purpose"))
        for target in inventory.strict.get(project, []):
            out.append(Message("MSH0106", "Error", f"service {project}/{target}", f"is STRICT but "
                               f"{', '.join(services)} in the same project run(s) without a sidecar and cannot "
                               "call it", "inject the callers, or set the target's mesh.mtls-mode to PERMISSIVE"))
    for project, counts in sorted(inventory.scaled.items()):
        for service, count in sorted(counts.items()):
            text = (f"runs {count} containers in one pod (scaled with --scale?): they share one sidecar and one "
                    "network namespace, so only one can listen")
            hint = f"set deploy.replicas: {count} on {service!r} and run `meshctl inject` again: one pod per replica"
            out.append(Message("MSH0110", "Error", f"service {project}/{service}", text, hint))
    for project, apps in sorted(inventory.stranded.items()):
        for service, container in sorted(apps.items()):
            out.append(Message("MSH0111", "Error", f"service {project}/{service}", "its sidecar container restarted "
                               "after it did, in a new network namespace the app is not in: this pod gets no "
                               "traffic", f"restart the app: `docker restart {container}`"))
    for proxy, not_after in sorted(inventory.certs.items()):
        left = not_after - now.timestamp()
        if left <= 0:
            out.append(Message("MSH0107", "Error", f"proxy {proxy}", "its workload certificate has expired",
                               "re-issue it: `meshctl certs rotate --all`; is the renewal agent running "
                               "(`meshctl check`)?"))
        elif left < 0.25 * inventory.cert_lifetimes.get(proxy, 86400):
            out.append(Message("MSH0107", "Warning", f"proxy {proxy}", f"its workload certificate expires in "
                               f"{left / 3600:.1f} h", "the agent renews at half life: is it running "
                               "(`meshctl check`)? `meshctl certs rotate` re-issues it now"))
    return out
