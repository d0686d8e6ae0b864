"""Changes to the store (apply, delete, rollback), each one revision.

Galley only stores: pushing the new revision to the proxies is Pilot's (`meshctl.pilot.changes` commits
through these, then pushes), so the config layer never reaches up into the one that compiles it.
"""

from __future__ import annotations

from collections.abc import Callable

from meshctl.config.hosts import canonical, same_service
from meshctl.config.kinds import Kind
from meshctl.config.resources import Key, Resource, key, namespace_of, qualified_name
from meshctl.config.store import Revision, Store
from meshctl.context import Context
from meshctl.errors import InvalidInput, UsageError

ANY_NAMESPACE = "*"  # get/delete without -n: whichever namespace holds the name, if only one does


def _store(ctx: Context) -> Store:
    ctx.home.settings()  # raises NotInstalled with the fix when there is no mesh here
    return Store(ctx.home.config_dir)


def apply(ctx: Context, resources: list[Resource]) -> tuple[Revision, list[tuple[Resource, str]]]:
    outcome: list[tuple[Resource, str]] = []

    def change(current: list[Resource]) -> list[Resource]:
        outcome.clear()
        by_key = {key(r): i for i, r in enumerate(current)}
        for r in resources:
            i = by_key.get(key(r))
            if i is None:
                current.append(r)
                outcome.append((r, "created"))
            elif current[i] == r:
                outcome.append((r, "unchanged"))
            else:
                current[i] = r
                outcome.append((r, "configured"))
        problems = undefined_subsets(current, {key(r) for r in resources})
        if problems:
            raise InvalidInput(problems[0], "define the subset in the service's DestinationRule (apply both "
                               "together); nothing was applied", details=problems)
        return current

    names = ", ".join(f"{r['kind']}/{qualified_name(r)}" for r in resources)
    revision = _store(ctx).commit(change, f"apply {names}", ctx.clock())
    return revision, outcome


def undefined_subsets(resources: list[Resource], changed: set[Key]) -> list[str]:
    """Subsets that the changed VirtualServices route or mirror to but no DestinationRule of that service
    defines (hosts compared as the services they name: `reviews` in namespace alpha is `reviews.alpha`)."""
    defined = [(canonical(r["spec"]["host"], namespace_of(r)), s["name"]) for r in resources
               if r["kind"] == "DestinationRule" for s in r["spec"].get("subsets", [])]
    problems = []
    for r in resources:
        if r["kind"] != "VirtualService" or key(r) not in changed:
            continue
        for i, rule in enumerate(r["spec"].get("http", [])):
            refs = [(f"route[{j}].destination", d["destination"]) for j, d in enumerate(rule.get("route", []))]
            refs += [("mirror", rule["mirror"])] if rule.get("mirror") else []
            for where, dest in refs:
                service = canonical(dest["host"], namespace_of(r))
                if dest.get("subset") and not any(same_service(service, host) and subset == dest["subset"]
                                                  for host, subset in defined):
                    problems.append(f"VirtualService {qualified_name(r)}: spec.http[{i}].{where}.subset: "
                                    f"{dest['subset']!r} is not a subset of {dest['host']!r} in any DestinationRule")
    return problems


def edit(ctx: Context, change: Callable[[list[Resource]], list[Resource]], message: str) -> Revision:
    """Any other change (route set, rollout steps): `change` validates and raises, or returns the new list."""
    return _store(ctx).commit(change, message, ctx.clock())


def current(ctx: Context) -> list[Resource]:
    return _store(ctx).read().resources


def delete(ctx: Context, kind: Kind, name: str,
           namespace: str | None = ANY_NAMESPACE) -> tuple[Revision, Resource]:
    """Delete one resource (returned too); without a namespace, the one of that name if only one namespace
    has one."""
    gone: list[Resource] = []

    def change(current: list[Resource]) -> list[Resource]:
        gone[:] = _named(current, kind, name, namespace)
        return [r for r in current if key(r) != key(gone[0])]

    store = _store(ctx)
    seen = [r for r in store.read().resources if r["kind"] == kind.name and r["metadata"]["name"] == name
            and _in(r, namespace)]  # for the message only: the change decides, under the lock
    label = qualified_name(seen[0]) if len(seen) == 1 else name if namespace in (None, ANY_NAMESPACE) else \
        f"{namespace}/{name}"
    revision = store.commit(change, f"delete {kind.name}/{label}", ctx.clock())
    return revision, gone[0]


def rollback(ctx: Context, to: int) -> Revision:
    store = _store(ctx)
    target = store.read(to)
    return store.commit(lambda _: target.resources, f"rollback to revision {to}", ctx.clock())


def _in(r: Resource, namespace: str | None) -> bool:
    return namespace == ANY_NAMESPACE or namespace_of(r) == namespace


def _named(resources: list[Resource], kind: Kind, name: str, namespace: str | None) -> list[Resource]:
    """The one resource KIND NAME (in `namespace`); an error naming the namespaces when there are several."""
    found = [r for r in resources if r["kind"] == kind.name and r["metadata"]["name"] == name and _in(r, namespace)]
    where = "" if namespace == ANY_NAMESPACE else f" in namespace {namespace!r}" if namespace else \
        " without a namespace"
    if not found:
        raise UsageError(f"{kind.name.lower()} {name!r} not found{where}", f"see `meshctl get {kind.name.lower()}`")
    if len(found) > 1:
        spaces = ", ".join(namespace_of(r) or "(none)" for r in found)
        raise UsageError(f"{kind.name.lower()} {name!r} exists in several namespaces: {spaces}",
                         "pick one with -p PROJECT (-p '' for the one without a namespace)")
    return found


def listing(ctx: Context, kind: Kind, name: str | None, namespace: str | None = ANY_NAMESPACE) -> list[Resource]:
    """Resources of a kind (in `namespace`), or the one called `name`."""
    resources = _store(ctx).read().resources
    if name is not None:
        return _named(resources, kind, name, namespace)
    return [r for r in resources if r["kind"] == kind.name and _in(r, namespace)]
