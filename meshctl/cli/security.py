"""`meshctl mtls set` and `meshctl authz allow|check`: shortcuts that write Istio's security resources."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshctl.config.resources import Key, Resource, check_document, key, qualified_name
from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.mesh import MeshedPods, Pod, principal
from meshctl.output import OutputFormat, OutputOption, emit, simple_table, to_yaml
from meshctl.pilot import changes, security

mtls_app = typer.Typer(help="Mutual TLS mode (PeerAuthentication), mesh-wide, per service or per port.",
                       no_args_is_help=True)
authz_app = typer.Typer(help="Authorization (AuthorizationPolicy): allow callers, and see what is allowed.",
                        no_args_is_help=True)
API = "security.istio.io/v1"
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resulting YAML; change nothing.")]


def _pods(c: Context) -> list[tuple[str, Pod]]:
    return [(info.project, info.pod) for info in MeshedPods.of(c.home)]


def _store(c: Context, resource: dict[str, Any], dry_run: bool) -> None:
    checked, problems = check_document(resource, f"{resource['kind']} {resource['metadata']['name']}")
    if problems or checked is None:
        raise UsageError(problems[0], "nothing was changed", details=problems)
    if dry_run:
        c.out.print(to_yaml(checked).rstrip(), markup=False, highlight=False)
        return
    revision, _, pushed = changes.apply(c, [checked])
    c.out.print(f"{checked['kind'].lower()}.security.istio.io/{qualified_name(checked)} stored: revision "
                f"{revision.revision}", highlight=False, markup=False)
    c.err.print(f"pushed to {pushed.proxies} proxies (`meshctl proxy-status --wait` to see them apply it)",
                highlight=False)


def _known_app(meshed: list[tuple[str, Pod]], app: str, project: str | None = None) -> list[str]:
    """The projects of `meshed` (from _pods) that mesh `app` (only `project`, when given); an error when none does."""
    pods = [(p, pod) for p, pod in meshed if project is None or p == project]
    projects = sorted({p for p, pod in pods if pod.app == app})
    if not projects:
        known = ", ".join(sorted({pod.app for _, pod in pods})) or "none"
        where = f" in project {project!r}" if project else ""
        raise UsageError(f"no meshed service is called {app!r}{where} (meshed: {known})",
                         "name a service by its `app` label")
    return projects


@mtls_app.command("set")
def mtls_set(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="The service (`app` label); leave out for mesh-wide.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="STRICT, PERMISSIVE or DISABLE.", case_sensitive=False)]
    = "STRICT",
    port: Annotated[list[str] | None, typer.Option("--port", help="A port's own mode, e.g. --port 8080=disable "
                                                   "(needs SERVICE).")] = None,
    namespace: Annotated[str | None, typer.Option("--project", "-p", help="Only in this compose project.")] = None,
    dry_run: DryRun = False,
) -> None:
    """Set the mTLS mode with a PeerAuthentication: mesh-wide, for a project, a service, or its ports."""
    c: Context = ctx.obj
    c.home.settings()
    if service:
        _known_app(_pods(c), service, namespace)
    spec: dict[str, Any] = {"mtls": {"mode": mode.upper()}}
    if service:
        spec["selector"] = {"matchLabels": {"app": service}}
    for item in port or []:
        number, sep, port_mode = item.partition("=")
        if not sep or not number.isdigit():
            raise UsageError(f"--port {item!r} is not PORT=MODE", "e.g. --port 8080=disable")
        spec.setdefault("portLevelMtls", {})[number] = {"mode": port_mode.upper()}
    name = service or "default"
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    _store(c, {"apiVersion": API, "kind": "PeerAuthentication", "metadata": metadata, "spec": spec}, dry_run)


@authz_app.command("allow")
def authz_allow(
    ctx: typer.Context,
    from_: Annotated[list[str], typer.Option("--from", help="Calling service (`app` label); repeatable.")],
    to: Annotated[str, typer.Option("--to", help="The service called.")],
    method: Annotated[list[str] | None, typer.Option(help="Allowed HTTP method; repeatable (default: any).")] = None,
    path: Annotated[list[str] | None, typer.Option(help="Allowed path: exact, /prefix*, *suffix; repeatable.")]
    = None,
    port: Annotated[list[int] | None, typer.Option(help="Allowed port; repeatable.")] = None,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only in this compose project (a policy "
                                                "in its namespace, allowing its callers); default: every project "
                                                "that has the service.")] = None,
    dry_run: DryRun = False,
) -> None:
    """Allow callers to a service (an ALLOW AuthorizationPolicy): everything else to it is then denied."""
    c: Context = ctx.obj
    settings = c.home.settings()
    pods = _pods(c)
    projects = _known_app(pods, to, project)
    for caller in from_:
        _known_app(pods, caller, project)
    # a caller's principal names its service account (the `mesh.service-account` label, else its app)
    principals = [principal(settings.trust_domain, p, account) for caller in from_ for p in projects
                  for account in sorted({pod.service_account for pp, pod in pods if pp == p and pod.app == caller}
                                        or {caller})]
    operation: dict[str, Any] = {}
    if method:
        operation["methods"] = [m.upper() for m in method]
    if path:
        operation["paths"] = path
    if port:
        operation["ports"] = [str(p) for p in port]
    rule: dict[str, Any] = {"from": [{"source": {"principals": principals}}]}
    if operation:
        rule["to"] = [{"operation": operation}]
    name = f"allow-{'-'.join(from_)}-to-{to}"[:63].rstrip("-")
    metadata = {"name": name, **({"namespace": project} if project else {})}
    _store(c, {"apiVersion": API, "kind": "AuthorizationPolicy", "metadata": metadata,
               "spec": {"selector": {"matchLabels": {"app": to}}, "action": "ALLOW", "rules": [rule]}}, dry_run)


def describe_rule(rule: dict[str, Any]) -> str:
    parts = []
    for f in rule.get("from") or []:
        src = f.get("source") or {}
        parts += [f"{k} {','.join(v)}" for k, v in src.items()]
    for t in rule.get("to") or []:
        op = t.get("operation") or {}
        parts += [f"{k} {','.join(v)}" for k, v in op.items()]
    for w in rule.get("when") or []:
        values = ",".join(w.get("values") or w["notValues"])
        parts.append(f"{w['key']} {'in' if w.get('values') else 'not in'} {values}")
    return "; ".join(parts) or "any request"


@authz_app.command("check")
def authz_check(ctx: typer.Context, service: Annotated[str, typer.Argument(help="The service (`app` label).")],
                output: OutputOption = OutputFormat.table) -> None:
    """The policies in force for SERVICE and what they allow or deny, in the order they are evaluated."""
    c: Context = ctx.obj
    c.home.settings()
    _known_app(_pods(c), service)
    resources: list[Resource] = changes.current(c)
    seen: dict[Key, dict[str, Any]] = {}
    modes = set()
    for project, pod in _pods(c):
        if pod.app != service:
            continue
        modes.add(security.peer_modes(resources, project, pod)[0])
        for r in resources:
            if r["kind"] in ("AuthorizationPolicy", "RequestAuthentication") and security.selects(r, project, pod):
                seen.setdefault(key(r), r)
    order = {"AUDIT": 0, "DENY": 1, "ALLOW": 2}
    rows = []
    for r in sorted(seen.values(), key=lambda r: (r["kind"] != "RequestAuthentication",
                                                  order.get(r["spec"].get("action", "ALLOW"), 3))):
        if r["kind"] == "RequestAuthentication":
            issuers = ", ".join(j.get("issuer", "?") for j in r["spec"].get("jwtRules", []))
            rows.append({"policy": security.policy_name(r), "action": "JWT", "rules": f"tokens from {issuers}; "
                         "an invalid token gets 401"})
            continue
        action = r["spec"].get("action", "ALLOW")
        rules = r["spec"].get("rules") or []
        text = " | ".join(f"[{i}] {describe_rule(rule)}" for i, rule in enumerate(rules)) or \
            "no rules (matches nothing)"
        rows.append({"policy": security.policy_name(r), "action": action, "rules": text})
    allows = any(r["action"] == "ALLOW" for r in rows)
    default = "deny: only requests an ALLOW rule matches get through" if allows else "allow (no ALLOW policy)"
    data = {"service": service, "mtls": sorted(modes), "default": default, "policies": rows}
    if output is not OutputFormat.table:
        emit(c.out, output, data, lambda: simple_table([], []))
        return
    c.out.print(f"{service}: mTLS {'/'.join(sorted(modes))}; default {default}", highlight=False, markup=False)
    c.out.print(simple_table(["policy", "action", "rules"], [list(r.values()) for r in rows]) if rows
                else "no AuthorizationPolicy or RequestAuthentication selects it")


def register(root: typer.Typer) -> None:
    root.add_typer(mtls_app, name="mtls")
    root.add_typer(authz_app, name="authz")
