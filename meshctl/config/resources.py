"""Galley: read Istio-shaped YAML from files, directories or stdin, and validate every document.

Every problem in every document is collected before anything is stored; the error names the file,
the document's kind/name and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from meshctl.config import egress, safeyaml
from meshctl.config.default_ns import DEFAULT, map_default
from meshctl.config.kinds import KINDS, Kind, find_kind, refused_kind
from meshctl.config.schema import NAME_RE, is_port, parse_duration, validate
from meshctl.errors import InvalidInput, UsageError
from meshctl.fsutil import read_stdin, read_text
from sidecar.jwt import jwks_problems, jwks_uri_problem, rule_output_problems

Resource = dict[str, Any]
SUFFIXES = (".yaml", ".yml", ".json")
WHEN_KEY = re.compile(r"^(request\.headers\[[^\]]+\]|source\.principal|source\.namespace|request\.auth\.principal|"
                      r"request\.auth\.audiences|request\.auth\.claims\[[^\]]+\]|destination\.port)$")
METADATA: dict[str, Any] = {"namespace": "string", "labels": {"*": "string"}, "annotations": {"*": "string"}}


NAMESPACE_RE = re.compile(r"^[a-z0-9_-]+$")  # a compose project name, as inject derives it
Key = tuple[str, str | None, str]


# Where a resource applies mesh-wide: no namespace, or Istio's root namespace (as istioctl writes them).
ROOT_NAMESPACES = (None, "istio-system")


def namespace_of(resource: Resource) -> str | None:
    """The resource's namespace (compose project); None: none (an empty one, stored by older versions, too)."""
    return resource["metadata"].get("namespace") or None


def key(resource: Resource) -> Key:
    """What identifies a stored resource: kind, namespace (None: none) and name, as in Kubernetes."""
    return resource["kind"], namespace_of(resource), resource["metadata"]["name"]


def qualified_name(resource: Resource) -> str:
    """NAMESPACE/NAME, or NAME for a resource with no namespace."""
    ns = namespace_of(resource)
    return f"{ns}/{resource['metadata']['name']}" if ns else str(resource["metadata"]["name"])


def with_namespace(resource: Resource, namespace: str, where: str) -> Resource:
    """`kubectl -n`: set the namespace of a resource that has none; one that has another is an error, except
    Kubernetes' `default` (Istio's docs), read as the project (config.default_ns)."""
    own = namespace_of(resource)
    if own == DEFAULT and namespace != DEFAULT:
        return map_default(resource, namespace)
    if own is not None and own != namespace:
        raise InvalidInput(f"{where}: {resource['kind']} {resource['metadata']['name']}: the namespace from the "
                           f"provided object ({own!r}) does not match the namespace sent on the request "
                           f"({namespace!r})", f"drop -p, or pass -p {own}")
    return {**resource, "metadata": {**resource["metadata"], "namespace": namespace}}


def _sources(target: str) -> list[tuple[str, str]]:
    if target == "-":
        return [("<stdin>", read_stdin())]
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"{target}: no .yaml, .yml or .json files in this directory")
        return [(str(f), read_text(f)) for f in files]
    if not path.is_file():
        raise UsageError(f"{target}: no such file or directory", "give a file, a directory, or - for stdin")
    return [(target, read_text(path))]


def required_problems(kind: Kind, spec: dict[str, Any], where: str) -> list[str]:
    """Fields Istio requires, which everything downstream (analyze too) reads without looking first."""
    problems = []
    if kind.name == "VirtualService":
        for i, rule in enumerate(spec.get("http") or []):
            problems += [f"{where}.spec.http[{i}].route[{j}].destination.host: required"
                         for j, r in enumerate(rule.get("route") or []) if not (r.get("destination") or {}).get("host")]
            if "mirror" in rule and not rule["mirror"].get("host"):
                problems.append(f"{where}.spec.http[{i}].mirror.host: required")
            abort = (rule.get("fault") or {}).get("abort")
            if isinstance(abort, dict) and ("httpStatus" in abort) == ("grpcStatus" in abort):
                problems.append(f"{where}.spec.http[{i}].fault.abort: give one of httpStatus or grpcStatus")
    if kind.name == "DestinationRule":
        if not spec.get("host"):
            problems.append(f"{where}.spec.host: required (the service these policies are for)")
        problems += [f"{where}.spec.subsets[{i}].name: required" for i, s in enumerate(spec.get("subsets") or [])
                     if not s.get("name")]
    if kind.name == "RequestAuthentication":
        problems += [f"{where}.spec.jwtRules[{i}].fromHeaders[{j}].name: required"
                     for i, rule in enumerate(spec.get("jwtRules") or [])
                     for j, h in enumerate(rule.get("fromHeaders") or []) if not h.get("name")]
    if kind.name == "Telemetry":
        problems += [f"{where}.spec.tracing[{i}].providers[{j}].name: required (zipkin or opentelemetry)"
                     for i, entry in enumerate(spec.get("tracing") or [])
                     for j, p in enumerate(entry.get("providers") or []) if "name" not in p]
    if kind.name == "ServiceEntry":
        problems += egress.service_entry_problems(spec, where)
    if kind.name == "ServiceLevelObjective":
        problems += [f"{where}.spec.{k}: required" for k in ("service", "window") if k not in spec]
        if "availability" not in spec and "latency" not in spec:
            problems.append(f"{where}.spec: give availability, latency or both")
        if not 0 < spec.get("availability", 50) < 100:
            problems.append(f"{where}.spec.availability: must be above 0 and below 100")
        latency = spec.get("latency")
        if latency is not None:
            problems += [f"{where}.spec.latency.{k}: required" for k in ("percentile", "threshold") if k not in latency]
            if not 0 < latency.get("percentile", 50) < 100:
                problems.append(f"{where}.spec.latency.percentile: must be above 0 and below 100")
        if "window" in spec and parse_duration(spec["window"]) < 60:
            problems.append(f"{where}.spec.window: use at least 1m")
    return problems


def semantic_problems(kind: Kind, spec: dict[str, Any], where: str) -> list[str]:
    problems = []
    if kind.name == "VirtualService":
        if not spec.get("hosts"):
            problems.append(f"{where}.spec.hosts: name at least one service")
        for i, rule in enumerate(spec.get("http") or []):
            routes = rule.get("route") or []
            if not routes and not (rule.get("fault") or {}).get("abort"):
                problems.append(f"{where}.spec.http[{i}].route: give at least one destination")
            weights = [r.get("weight") for r in routes]
            if len(routes) > 1 or any(w is not None for w in weights):
                total = sum(w or 0 for w in weights)
                if abs(total - 100) > 1e-9:
                    problems.append(f"{where}.spec.http[{i}].route: weights add up to {total:g}, not 100")
    if kind.name == "PeerAuthentication":
        problems += [f"{where}.spec.portLevelMtls.{port}: must be a port number" for port in
                     spec.get("portLevelMtls") or {} if not is_port(port)]
        if spec.get("portLevelMtls") and not spec.get("selector"):
            problems.append(f"{where}.spec.portLevelMtls: needs a selector (port-level modes are per workload)")
    if kind.name == "AuthorizationPolicy":
        for i, rule in enumerate(spec.get("rules") or []):
            for j, to in enumerate(rule.get("to") or []):
                op = to.get("operation") or {}
                problems += [f"{where}.spec.rules[{i}].to[{j}].operation.{k}: {p!r} is not a port number"
                             for k in ("ports", "notPorts") for p in op.get(k) or [] if not is_port(p)]
            for j, src in enumerate(f.get("source") or {} for f in rule.get("from") or []):
                problems += service_account_problems(src, f"{where}.spec.rules[{i}].from[{j}].source")
            for j, cond in enumerate(rule.get("when") or []):
                if not WHEN_KEY.fullmatch(cond.get("key", "")):
                    problems.append(f"{where}.spec.rules[{i}].when[{j}].key: {cond.get('key')!r} is not supported "
                                    "(request.headers[NAME], source.principal, source.namespace, "
                                    "request.auth.principal, request.auth.audiences, request.auth.claims[NAME], "
                                    "destination.port)")
                if not cond.get("values") and not cond.get("notValues"):
                    problems.append(f"{where}.spec.rules[{i}].when[{j}]: give values or notValues")
    if kind.name == "RequestAuthentication":
        for i, rule in enumerate(spec.get("jwtRules") or []):
            if not rule.get("issuer"):
                problems.append(f"{where}.spec.jwtRules[{i}].issuer: required")
            if bool(rule.get("jwks")) == bool(rule.get("jwksUri")):
                problems.append(f"{where}.spec.jwtRules[{i}]: give exactly one of jwks and jwksUri")
            if rule.get("jwksUri") and (problem := jwks_uri_problem(rule["jwksUri"])):
                problems.append(f"{where}.spec.jwtRules[{i}].jwksUri: {problem}")
            if rule.get("jwks"):
                problems += [f"{where}.spec.jwtRules[{i}].jwks: {p}" for p in jwks_problems(rule["jwks"])]
            problems += [f"{where}.spec.jwtRules[{i}].{p}" for p in rule_output_problems(rule)]
    if kind.name == "Telemetry":
        for i, entry in enumerate(spec.get("tracing") or []):
            problems += [f"{where}.spec.tracing[{i}].providers[{j}].endpoint: required (meshctl has no MeshConfig "
                         "extensionProviders; e.g. http://zipkin:9411/api/v2/spans)"
                         for j, p in enumerate(entry.get("providers") or []) if not p.get("endpoint")]
    if kind.name == "DestinationRule":
        names = [s.get("name") for s in spec.get("subsets") or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        problems += [f"{where}.spec.subsets: subset {n!r} is defined twice" for n in dupes]
        problems += tls_problems(spec, where)
    return problems


SERVICE_ACCOUNT_RE = re.compile(r"^[a-z0-9_-]+/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def service_account_problems(src: dict[str, Any], where: str) -> list[str]:
    """Istio's rules for serviceAccounts: NAMESPACE/ACCOUNT, no wildcards, not mixed with principals or namespaces."""
    problems = [f"{where}.{k}: {v!r} must be NAMESPACE/ACCOUNT (the compose project and the service's account, "
                "e.g. bookinfo/bookinfo-productpage; no wildcards)"
                for k in ("serviceAccounts", "notServiceAccounts") for v in src.get(k) or []
                if not SERVICE_ACCOUNT_RE.fullmatch(str(v))]
    mixed = [k for k in ("principals", "notPrincipals", "namespaces", "notNamespaces") if k in src]
    if mixed and ("serviceAccounts" in src or "notServiceAccounts" in src):
        problems.append(f"{where}: serviceAccounts cannot be combined with {', '.join(mixed)} (as in Istio)")
    return problems


def tls_problems(spec: dict[str, Any], where: str) -> list[str]:
    """Inside the mesh a client sidecar speaks ISTIO_MUTUAL (mesh mTLS) or, with DISABLE, plain text.

    SIMPLE and MUTUAL (TLS the sidecar originates with the app's own certificates) are for hosts outside the mesh.
    """
    problems = [f"{where}.{path}.portLevelSettings[{j}].port.number: required"
                for path, _, policy in egress.traffic_policies(spec)
                for j, p in enumerate(policy.get("portLevelSettings") or []) if not (p.get("port") or {}).get("number")]
    for at in egress.tls_settings(spec):
        mode = at.tls.get("mode", "DISABLE")
        if mode == "MUTUAL":  # SIMPLE: TLS origination to a ServiceEntry host (sidecar.engine.egress)
            problems.append(f"{where}.{at.path}.mode: MUTUAL (TLS origination with client certificates) is not "
                            "supported; SIMPLE originates TLS to a ServiceEntry host, checking its certificate")
        problems += [f"{where}.{at.path}.{k}: applies only with mode SIMPLE (TLS origination)"
                     for k in ("sni", "caCertificates", "insecureSkipVerify") if k in at.tls and mode != "SIMPLE"]
    return problems


def check_document(doc: Any, where: str, semantic: bool = True) -> tuple[Resource | None, list[str]]:
    if not isinstance(doc, dict):
        return None, [f"{where}: a resource must be a mapping with apiVersion, kind, metadata and spec"]
    kind_name = doc.get("kind")
    kind = find_kind(str(kind_name)) if isinstance(kind_name, str) else None
    if kind is None and isinstance(kind_name, str) and (why := refused_kind(kind_name)):
        return None, [f"{where}: kind {kind_name} is not supported by meshctl: {why}"]
    if kind is None:
        known = ", ".join(k.name for k in KINDS)
        return None, [f"{where}: unknown kind {kind_name!r} (meshctl knows {known})"]
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    label = f"{where}: {kind.name} {name or '<no name>'}"
    problems = []
    if doc.get("apiVersion") not in kind.api_versions:
        wanted = ", ".join(kind.api_versions)
        problems.append(f"{label}: apiVersion {doc.get('apiVersion')!r} should be one of {wanted}")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problems.append(f"{label}: metadata.name must be lower-case letters, digits, '-' and '.'")
    extra = sorted(set(doc) - {"apiVersion", "kind", "metadata", "spec"}, key=str)
    problems += [f"{label}: top-level field {k!r} is not part of a resource" for k in extra]
    if isinstance(metadata, dict):
        problems += [f"{label}: metadata.{k} is not supported (only name, namespace, labels, annotations)"
                     for k in sorted(set(metadata) - {"name", "namespace", "labels", "annotations"}, key=str)]
        problems += validate({k: v for k, v in metadata.items() if k in METADATA}, METADATA, f"{label}: metadata")
        ns = metadata.get("namespace")
        if isinstance(ns, str) and ns and not NAMESPACE_RE.fullmatch(ns):
            problems.append(f"{label}: metadata.namespace {ns!r} is not a compose project name (lower-case "
                            "letters, digits, '-' and '_')")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        problems.append(f"{label}: spec must be a mapping")
    else:
        problems += validate(spec, kind.spec, f"{label}: spec", kind.unsupported)
        problems += required_problems(kind, spec, label) if not problems else []
        problems += semantic_problems(kind, spec, label) if semantic and not problems else []
    if problems:
        return None, problems
    meta = {k: v for k, v in (metadata or {}).items() if k in ("name", "namespace", "labels", "annotations")}
    if not meta.get("namespace"):  # an empty namespace is no namespace, so both have one key in the store
        meta.pop("namespace", None)
    resource = {"apiVersion": doc["apiVersion"], "kind": kind.name, "metadata": meta, "spec": spec}
    try:  # the store and the snapshots are JSON: map keys become strings there, so they do here
        return json.loads(json.dumps(resource, allow_nan=False)), []
    except (TypeError, ValueError) as exc:
        return None, [f"{label}: holds a value JSON cannot carry ({exc}); quote it"]


def load(targets: list[str], semantic: bool = True, namespace: str | None = None) -> list[Resource]:
    """All resources in `targets`, validated; raises InvalidInput naming every problem's place.

    `semantic=False` lets through what parses but does not make sense (weights not adding up), for
    `analyze` to report rather than refuse. `namespace` is `apply -p` (kubectl's -n): the namespace of those
    without one.
    """
    if namespace is not None and not NAMESPACE_RE.fullmatch(namespace):
        raise UsageError(f"--project {namespace!r} is not a compose project name",
                         "use lower-case letters, digits, '-' and '_'")
    resources: list[Resource] = []
    problems: list[str] = []
    for source, text in (s for t in targets for s in _sources(t)):
        try:
            docs = [d for d in safeyaml.load_all(text) if d is not None]
        except safeyaml.YAMLProblem as exc:
            at = f" at line {exc.line}" if exc.line else ""
            problems.append(f"{source}: invalid YAML{at}: {exc.problem}")
            continue
        for i, doc in enumerate(docs):
            where = source if len(docs) == 1 else f"{source}[{i}]"
            resource, found = check_document(doc, where, semantic)
            problems += found
            if resource:  # a caCertificates path is read now, relative to its YAML file
                base = None if source == "<stdin>" else Path(source).parent
                problems += egress.inline_ca(resource, base, f"{where}: {resource['kind']} "
                                             f"{resource['metadata']['name']}")
            if resource and namespace is not None:
                try:
                    resource = with_namespace(resource, namespace, where)
                except InvalidInput as exc:
                    problems.append(exc.one_line())
                    continue
            if resource:
                resources.append(resource)
    seen: set[Key] = set()
    for r in resources:
        if key(r) in seen:
            problems.append(f"{r['kind']} {qualified_name(r)} is given twice")
        seen.add(key(r))
    if problems:
        more = f" (and {len(problems) - 1} more: `meshctl analyze --files-only -f FILE` lists them all)" \
            if len(problems) > 1 else ""
        raise InvalidInput(problems[0] + more, "nothing was applied", details=problems)
    if not resources:
        raise InvalidInput(f"{', '.join(targets)}: no resources found")
    return resources
