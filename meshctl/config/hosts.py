"""Service host names in VirtualServices and DestinationRules, with compose projects for namespaces.

As in Istio, a short name (`reviews`) means the service in the resource's own namespace; a resource with
no namespace keeps meshctl's older meaning: the service of that name in every project. `reviews.bookinfo`
and `reviews.bookinfo.svc.cluster.local` name the service in project bookinfo, from a resource anywhere.
DNS names are case-insensitive and may end in a dot.
"""

from __future__ import annotations

from collections.abc import Collection

CLUSTER_SUFFIX = ".svc.cluster.local"


def canonical(host: str, namespace: str | None) -> tuple[str | None, str]:
    """(project, app) that `host`, written in a resource of `namespace`, names; project None: every project."""
    name = host.lower().rstrip(".")
    base = name.removesuffix(CLUSTER_SUFFIX)
    if base == name and "." not in name:
        return namespace, name
    app, _, project = base.rpartition(".")
    if not app or not project:  # e.g. reviews.svc.cluster.local: no namespace in it; matches no service
        return "", name
    return project, app


def target(host: str, namespace: str | None, project: str, apps: Collection[str]) -> str | None:
    """The app of `project` (one of `apps`) that `host` in a resource of `namespace` names, or None."""
    by_name = {a.lower(): a for a in apps}
    name = host.lower().rstrip(".")
    if namespace in (None, project) and name in by_name:  # first, so an app named with a dot still matches
        return by_name[name]
    where, app = canonical(host, namespace)
    return by_name.get(app) if where == project else None


def qualified(host: str, namespace: str | None) -> str:
    """`host` as a proxy of another project must read it: `app.project` (a short name there means its own)."""
    where, app = canonical(host, namespace)
    return host if where is None else f"{app}.{where}" if where else host


def same_service(a: tuple[str | None, str], b: tuple[str | None, str]) -> bool:
    """Whether two canonical hosts can name the same service: one with no project names it in every project."""
    return a[1] == b[1] and (a[0] is None or b[0] is None or a[0] == b[0])
